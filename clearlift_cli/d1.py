"""A small client for Cloudflare D1's REST API, the way clearlift reaches the live database.

One endpoint: ``POST {CLEARLIFT_D1_URL}/accounts/{account}/d1/database/{database}/query``
with ``{"sql", "params"}`` or ``{"batch": [{"sql", "params"}, …]}``, answered with
``{"result": [{"results", "meta", "success"}, …], "success", "errors", "messages"}``.

What it is built to (looked up, not guessed; see the report of issue 15 part 3):

- Limits (developers.cloudflare.com/d1/platform/limits): at most 100 bound parameters per
  statement, 100,000 bytes per SQL statement, 2 MB per string/BLOB/row, 30 s per request
  (for a batch: the whole batch); the per-statement limits apply to each statement of a
  batch. Broken limits come back as ``too many SQL variables at offset N: SQLITE_ERROR``.
  We check the first two before sending, and cap a request body at ``MAX_REQUEST_BYTES``
  (our own bound: Cloudflare documents none for this endpoint).
- A batch is one SQL transaction: D1 documents ``batch()`` as "SQL transactions. If a
  statement in the sequence fails, … it aborts or rolls back the entire sequence"
  (d1/worker-api/d1-database). The REST body's ``batch`` is described only as "executed as
  a batch"; we rely on it being the same mechanism (a doubt, written in the report).
- Errors: invalid SQL is HTTP 400 with ``errors: [{"code": 7500, "message": "…: SQLITE_…"}]``
  (D1 changelog 2024-04-15: it used to be 500); D1's own failures are HTTP 500, code 7500,
  ``internal error; reference = …``. The transient ones D1 names (d1/observability/debug-d1)
  are retried; the two "overloaded" ones and "cannot resolve" mean the query never ran.
- Cloudflare's API allows 1200 requests per 5 minutes per token; beyond that every call is
  answered 429 (code 971) with ``Retry-After`` in seconds (fundamentals/api/reference/limits).
  Short waits are slept here; longer ones raise ``D1RateLimited`` so a job can be deferred.
- A refused token is 401/403 (codes 10000 "Authentication error", 10001, 9109, 7403 "account
  not valid or not authorized"), a missing or malformed header 400 (9106, 6003/6111).
- No limit on rows per result is documented; an answer is one JSON body within the 30 s,
  so big tables are read in keyset pages (``WHERE id > ? ORDER BY id LIMIT n``).
- Numbers cross as JavaScript doubles: integers beyond 2**53 would silently change, so
  such parameters are refused.

Retries go through clearlift's clock (tests freeze it). A request whose answer was lost may
have run: such failures are retried only for ``idempotent=True`` calls (the default: reads,
and writes guarded so that running twice changes nothing). ``stats`` counts requests, rows
read and rows written, for benchmarks and per-job reporting. The token is registered with
``clearlift_cli.redact`` and never appears in a log line, an error or ``repr``.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from clearlift_cli import redact as _redact
from clearlift_cli.errors import (
    ConfigError,
    D1AuthFailed,
    D1LimitExceeded,
    D1QueryError,
    D1RateLimited,
    D1Unavailable,
)
from clearlift_cli.platforms import transport
from clearlift_cli.redact import redact
from clearlift_cli.timeutil import SYSTEM_CLOCK, Clock

log = logging.getLogger("clearlift.d1")

DEFAULT_URL = "https://api.cloudflare.com/client/v4"
MAX_PARAMS = 100  # bound parameters per statement
MAX_SQL_BYTES = 100_000  # UTF-8 bytes per statement
MAX_REQUEST_BYTES = 1_000_000  # our cap on one request body (statements + params, as JSON)
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # as for the platforms (platforms/http.py)
MAX_SAFE_INTEGER = 2**53 - 1  # beyond this a JavaScript number is not exact

# Codes Cloudflare answers when the token cannot be used for this database.
AUTH_CODES = frozenset({6003, 6111, 7403, 9106, 9109, 10000, 10001})
# D1's words for transient failures (d1/observability/debug-d1), split by whether the
# query may have run before the failure.
_NOT_RUN = ("D1 DB is overloaded", "Cannot resolve D1 DB due to transient issue")
_MAYBE_RUN = (
    "Network connection lost",
    "D1 DB reset because its code was updated",
    "Internal error while starting up D1 DB storage",
    "Internal error in D1 DB storage caused object to be reset",
    "Can't read from request stream because client disconnected",
)
_SQLITE_CODE = re.compile(r"\b(SQLITE_[A-Z]+)(?:_[A-Z]+)?\s*$")
_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")

Param = None | bool | int | float | str


@dataclass(frozen=True)
class Statement:
    """One SQL statement and its bound parameters (``?`` placeholders)."""

    sql: str
    params: tuple[Param, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.params, tuple):
            object.__setattr__(self, "params", tuple(self.params))


@dataclass(frozen=True)
class Meta:
    """What D1 reports about one statement (``rows_read`` counts rows scanned, indexes
    included, not rows returned)."""

    rows_read: int = 0
    rows_written: int = 0
    changes: int = 0
    last_row_id: int = 0
    duration_ms: float = 0.0
    changed_db: bool = False
    size_after: int | None = None

    @classmethod
    def from_wire(cls, meta: Any) -> Meta:
        m = meta if isinstance(meta, dict) else {}

        def num(key: str) -> int:
            value = m.get(key)
            return int(value) if isinstance(value, (int, float)) else 0

        size = m.get("size_after")
        duration = m.get("duration")
        return cls(
            rows_read=num("rows_read"),
            rows_written=num("rows_written"),
            changes=num("changes"),
            last_row_id=num("last_row_id"),
            duration_ms=float(duration) if isinstance(duration, (int, float)) else 0.0,
            changed_db=bool(m.get("changed_db")),
            size_after=int(size) if isinstance(size, (int, float)) else None,
        )


class Rows(list):
    """The rows of one statement (dicts: column name -> value), with D1's ``meta``."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), meta: Meta | None = None):
        super().__init__(rows)
        self.meta = meta or Meta()


class D1Stats:
    """Counters a benchmark or a job can read (``snapshot()``) and subtract."""

    FIELDS = ("requests", "retries", "rate_limited", "statements", "rows_read", "rows_written")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._counts[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __getattr__(self, name: str) -> int:
        if name in D1Stats.FIELDS:
            return self.snapshot()[name]
        raise AttributeError(name)


def parse_d1_url(url: str) -> tuple[str, str]:
    """``d1://ACCOUNT_ID/DATABASE_ID`` -> (account id, database id), or a ConfigError."""
    rest = url[len("d1://") :] if url.startswith("d1://") else None
    parts = rest.strip("/").split("/") if rest else []
    if len(parts) != 2 or not all(_ID.match(p) for p in parts):
        raise ConfigError(
            f"{redact(url)} is not a D1 database: write d1://ACCOUNT_ID/DATABASE_ID "
            "(the account id and the database's UUID, as `wrangler d1 info` shows them)"
        )
    return parts[0], parts[1]


# --- splitting statements at D1's bound-parameter limit ----------------------------------


def _chunks(values: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def in_list(
    sql: str,
    values: Sequence[Param],
    *,
    before: Sequence[Param] = (),
    after: Sequence[Param] = (),
    max_params: int = MAX_PARAMS,
) -> list[Statement]:
    """Statements for ``sql`` whose ``{in}`` becomes ``?, ?, …`` over ``values``, each with
    at most ``max_params`` bound values; ``before``/``after`` are the statement's other
    parameters (placeholders before / after ``{in}``), repeated in each. No values, no
    statements (``IN ()`` is not SQL)."""
    if "{in}" not in sql:
        raise ValueError("in_list needs {in} where the placeholders go")
    room = max_params - len(before) - len(after)
    if room < 1:
        raise ValueError(f"{len(before) + len(after)} other parameters leave no room under {max_params}")
    return [
        Statement(sql.replace("{in}", ", ".join("?" * len(chunk))), (*before, *chunk, *after))
        for chunk in _chunks(list(values), room)
    ]


def multi_row_insert(
    head: str,
    rows: Sequence[Sequence[Param]],
    *,
    tail: str = "",
    row: str | None = None,
    max_params: int = MAX_PARAMS,
    max_sql_bytes: int = MAX_SQL_BYTES,
) -> list[Statement]:
    """A many-row ``INSERT … VALUES`` as statements within D1's limits: ``head`` is e.g.
    ``INSERT INTO t (a, b) VALUES``, ``tail`` e.g. ``ON CONFLICT (a) DO NOTHING``, ``row``
    one row's placeholders (default ``(?, ?, …)`` as wide as the rows). Put the statements
    in one ``batch`` to keep them one transaction."""
    if not rows:
        return []
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise ValueError("every row must have the same number of values")
    row = row or "(" + ", ".join("?" * width) + ")"
    if row.count("?") != width:
        raise ValueError(f"row {row!r} has {row.count('?')} placeholders for {width} values")
    per_params = max_params // width
    per_bytes = (max_sql_bytes - len(head.encode()) - len(tail.encode()) - 2) // (len(row.encode()) + 2)
    per = min(per_params, per_bytes)
    if per < 1:
        raise D1LimitExceeded(f"one row of {width} values cannot fit D1's {max_params} bound parameters")
    out = []
    for chunk in _chunks(list(rows), per):
        sql = f"{head} {', '.join([row] * len(chunk))}{' ' + tail if tail else ''}"
        out.append(Statement(sql, tuple(v for r in chunk for v in r)))
    return out


# --- the client --------------------------------------------------------------------------


def _wire_param(value: Any) -> Param:
    if value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, bool):
        return int(value)  # D1 stores booleans as 0/1; send what it will store
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise D1LimitExceeded(
                f"the integer parameter {value} is beyond 2**53 and would not survive D1's "
                "JavaScript numbers: store it as text"
            )
        return value
    raise TypeError(f"D1 parameters are None, bool, int, float or str, not {type(value).__name__}")


def _check(statement: Statement) -> dict[str, Any]:
    if len(statement.params) > MAX_PARAMS:
        raise D1LimitExceeded(
            f"a statement binds {len(statement.params)} parameters; D1 allows at most "
            f"{MAX_PARAMS} (split it with clearlift_cli.d1.in_list or multi_row_insert)"
        )
    size = len(statement.sql.encode())
    if size > MAX_SQL_BYTES:
        raise D1LimitExceeded(f"a statement is {size} bytes long; D1 allows at most {MAX_SQL_BYTES}")
    wire: dict[str, Any] = {"sql": statement.sql}
    if statement.params:
        wire["params"] = [_wire_param(p) for p in statement.params]
    return wire


class D1Client:
    """Runs statements against one D1 database. ``query`` returns the rows of one statement
    (``Rows``, with ``.meta``); ``batch`` runs several in one request and one transaction."""

    def __init__(
        self,
        *,
        account_id: str,
        database_id: str,
        token: str,
        base_url: str = DEFAULT_URL,
        clock: Clock = SYSTEM_CLOCK,
        timeout: float = 60.0,
        attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_wait: float = 60.0,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        if not token:
            raise D1AuthFailed("CLOUDFLARE_API_TOKEN is not set")
        _redact.register(token)
        self._token = token
        self.account_id = account_id
        self.database_id = database_id
        self.name = f"d1://{account_id}/{database_id}"
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/accounts/{account_id}/d1/database/{database_id}/query"
        self.clock = clock
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_wait = max_wait  # longest Retry-After slept here; longer ones raise
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.stats = D1Stats()

    @classmethod
    def from_settings(cls, settings: Any, url: str, *, clock: Clock = SYSTEM_CLOCK) -> D1Client:
        account_id, database_id = parse_d1_url(url)
        return cls(
            account_id=account_id,
            database_id=database_id,
            token=settings.cloudflare_token(),
            base_url=settings.d1_url,
            clock=clock,
            timeout=settings.http_timeout,
        )

    def __repr__(self) -> str:
        return f"D1Client({self.name} via {self.base_url})"

    # -- public operations ----------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Param] = (), *, idempotent: bool = True) -> Rows:
        """Run one statement; its rows (dicts) with ``.meta``."""
        if isinstance(params, (str, bytes)):
            raise TypeError("params is a sequence of values, not one string")
        body = _check(Statement(sql, tuple(params)))
        return self._send(body, 1, idempotent)[0]

    def batch(self, statements: Sequence[Statement], *, idempotent: bool = True) -> list[Rows]:
        """Run ``statements`` in one request, as one transaction: if one fails, none is
        applied and a ``D1QueryError`` says why. One ``Rows`` per statement, in order."""
        if not statements:
            return []
        body = {"batch": [_check(s) for s in statements]}
        return self._send(body, len(statements), idempotent)

    # -- sending, with bounded retries ----------------------------------------------------

    def _send(self, body: dict[str, Any], n: int, idempotent: bool) -> list[Rows]:
        payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        if len(payload) > self.max_request_bytes:
            raise D1LimitExceeded(
                f"a request of {n} statement(s) is {len(payload)} bytes; clearlift sends at "
                f"most {self.max_request_bytes} to D1 at once: use smaller batches"
            )
        maybe_applied = False
        for attempt in range(1, self.attempts + 1):
            try:
                return self._once(payload, n, attempt)
            except D1RateLimited as exc:
                # refused at Cloudflare's edge: the statements did not run
                self.stats.add(rate_limited=1)
                if exc.retry_after > self.max_wait or attempt == self.attempts:
                    raise
                wait, why = exc.retry_after, "rate limited"
            except D1Unavailable as exc:
                maybe_applied = maybe_applied or exc.maybe_applied
                if exc.maybe_applied and not idempotent:
                    raise
                if attempt == self.attempts:
                    raise D1Unavailable(
                        f"{exc} (gave up after {attempt} attempts)", maybe_applied=maybe_applied
                    ) from None
                wait, why = self._backoff(attempt), str(exc)
            self.stats.add(retries=1)
            log.info("%s; retrying in %.1fs (attempt %d of %d)", why, wait, attempt + 1, self.attempts)
            self.clock.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return base * random.uniform(0.8, 1.2)  # jitter: many consumers must not retry in step

    def _read_capped(self, resp: Any) -> bytes:
        body = bytearray()
        for chunk in resp.iter_content(64 * 1024):
            body += chunk
            if len(body) > self.max_response_bytes:
                raise D1LimitExceeded(
                    f"{self.name}: an answer passed {self.max_response_bytes // (1024 * 1024)} MiB; "
                    "read big tables in keyset pages, a bounded number of rows per request"
                )
        return bytes(body)

    def _once(self, payload: bytes, n: int, attempt: int) -> list[Rows]:
        """One request: sent, its answer read, refused by the first rule it breaks, or its
        ``n`` results."""
        self.stats.add(requests=1)
        resp, raw = self._post(payload)
        status = resp.status_code
        log.debug("%s: %d statement(s) -> HTTP %s", self.name, n, status)
        if 300 <= status < 400:  # the API never redirects: a wrong URL or an intercepting proxy
            raise ConfigError(
                f"{self.name}: HTTP {status} redirect refused: check CLEARLIFT_D1_URL and any proxy"
            )
        answer = _Answer.read(status, raw)
        self._refuse_failed(answer, resp, attempt)
        return self._results(answer, n)

    def _post(self, payload: bytes) -> tuple[Any, bytes]:
        """The response and its body (capped); a failure to send or to read the answer is
        ``D1Unavailable``, saying whether the statements may have run."""
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        try:
            # one pool set per thread (consumer threads may share a client), no proxy for a
            # loopback D1 (the sandbox): the platforms' transport
            resp = transport.send(
                "POST",
                self.url,
                data=payload,
                headers=headers,
                connect_timeout=min(10.0, self.timeout),
                read_timeout=self.timeout,
            )
            try:
                return resp, self._read_capped(resp)
            finally:
                resp.close()
        except transport.TransportError as exc:
            if not exc.sent:
                what = "connecting timed out" if exc.timeout else f"connection failed ({exc.kind})"
                raise D1Unavailable(f"{self.name}: {what}") from None
            if exc.timeout:
                raise D1Unavailable(
                    f"{self.name}: no answer within {self.timeout:g}s", maybe_applied=True
                ) from None
            # e.g. the connection was reset, or the answer was cut off mid-body
            raise D1Unavailable(
                f"{self.name}: the answer was lost ({exc.kind})", maybe_applied=True
            ) from None

    def _refuse_failed(self, answer: _Answer, resp: Any, attempt: int) -> None:
        """Raise the error an answer that is not a success means: rate limit, refused token,
        unknown database, transient failure (maybe run or not), or a failed query."""
        status, code, message, detail = answer.status, answer.code, answer.message, answer.detail
        if status == 429:
            from clearlift_cli.platforms.http import parse_retry_after

            wait = parse_retry_after(resp.headers.get("Retry-After"), self.clock.time())
            if wait is None:  # never retry a 429 at once
                wait = max(1.0, self._backoff(attempt))
            raise D1RateLimited(f"{self.name}: rate limited by Cloudflare's API ({detail})", retry_after=wait)
        if status in (401, 403) or code in AUTH_CODES:
            raise D1AuthFailed(
                f"Cloudflare refused CLOUDFLARE_API_TOKEN for {self.name} ({detail}): the token "
                f"needs D1 Edit permission on account {self.account_id}"
            )
        if status == 404:
            raise ConfigError(
                f"{self.name} was not found ({detail}): check the account and database ids (and CLEARLIFT_D1_URL)"
            )
        if any(m in message for m in _NOT_RUN):
            raise D1Unavailable(f"{self.name}: {detail}")
        if status >= 500 or any(m in message for m in _MAYBE_RUN):
            raise D1Unavailable(f"{self.name}: {detail}", maybe_applied=True)
        if answer.body is None:
            if status == 200:
                raise D1Unavailable(
                    f"{self.name}: HTTP 200 with malformed or truncated JSON", maybe_applied=True
                )
            if status == 413:
                raise D1LimitExceeded(f"{self.name}: the request is too large (HTTP 413)")
            raise D1QueryError(f"{self.name}: {detail}")
        if status >= 400 or answer.body.get("success") is False:
            match = _SQLITE_CODE.search(message)
            raise D1QueryError(
                f"{self.name}: {detail}",
                code=code if isinstance(code, int) else None,
                sqlite_code=match.group(1) if match else None,
            )

    def _results(self, answer: _Answer, n: int) -> list[Rows]:
        """The rows of each of the ``n`` statements of a successful answer (counted in ``stats``)."""
        results = (answer.body or {}).get("result")
        if not isinstance(results, list) or len(results) != n:
            raise D1Unavailable(
                f"{self.name}: HTTP {answer.status} answered {len(results) if isinstance(results, list) else 'no'} "
                f"result(s) for {n} statement(s)",
                maybe_applied=True,
            )
        out: list[Rows] = []
        read = written = 0
        for item in results:
            if not isinstance(item, dict) or item.get("success") is False:
                raise D1QueryError(
                    f"{self.name}: a statement failed without an error message ({answer.detail})"
                )
            meta = Meta.from_wire(item.get("meta"))
            read += meta.rows_read
            written += meta.rows_written
            out.append(Rows(item.get("results") or [], meta))
        self.stats.add(statements=n, rows_read=read, rows_written=written)
        return out


@dataclass
class _Answer:
    """An answer's HTTP status, its JSON object (None when it is not one) and its errors:
    the first one's code, their messages (redacted), and both as a ``detail`` for messages."""

    status: int
    body: dict | None
    code: Any
    message: str
    detail: str

    @classmethod
    def read(cls, status: int, raw: bytes) -> _Answer:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = None
        errors = [e for e in (body or {}).get("errors") or [] if isinstance(e, dict)]
        code = errors[0].get("code") if errors else None
        message = redact("; ".join(str(e.get("message", "")) for e in errors))
        detail = f"HTTP {status}" + (f", code {code}: {message}" if errors else "")
        return cls(status, body, code, message, detail)
