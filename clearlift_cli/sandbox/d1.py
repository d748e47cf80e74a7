"""D1 sandbox: Cloudflare's D1 REST API over a local SQLite file.

``POST /client/v4/accounts/{account}/d1/database/{database}/query`` with ``{"sql",
"params"}`` or ``{"batch": [...]}`` runs the statements with the real ``sqlite3`` (so SQL
means what it means on D1, which is SQLite), one request at a time per database as D1 does,
and answers in Cloudflare's envelope. Like D1 it:

- checks ``Authorization: Bearer <token>`` (``self.token``, or any token of ``self.tokens``):
  a missing header is 400/9106, a malformed one 400/6003, an unknown token 403/10000, another
  account 403/7403;
- enforces D1's limits with SQLite's own limits (100 bound parameters, 100 columns, 32
  function arguments, 50-byte LIKE patterns, 2 MB values) plus 100,000 bytes per
  statement, and answers a broken one, or bad SQL, with HTTP 400, code 7500 and
  ``<SQLite's message>: SQLITE_<CODE>``;
- runs a ``batch`` (and a multi-statement ``sql``) as one transaction, refuses
  ``BEGIN``/``COMMIT``/``SAVEPOINT`` (``not authorized: SQLITE_AUTH``), enforces foreign keys;
- reports ``meta``: ``changes``, ``last_row_id``, ``changed_db``, ``size_after``,
  ``duration`` and ``rows_read``/``rows_written``. SQLite does not count rows scanned, so
  ``rows_read`` here is the rows returned or changed, and ``rows_written`` the rows changed:
  the real D1 counts scans and index writes too, so real figures are higher.

Faults (``rate_limit_next``, ``overload_next``, ``internal_error_next``, ``drop_next`` and
the generic ``faults`` plan with latency) answer in Cloudflare's shapes. ``requests`` logs
every request; ``statements_run`` counts statements that ran, ``rows_read`` and
``rows_written`` add up their ``meta`` (of committed requests).
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from clearlift_cli.sandbox.server import PlatformApp, Reply, Request, SandboxServer

API_PREFIX = "/client/v4"
DEFAULT_ACCOUNT = "c1ea11f7000000000000000000000000"
DEFAULT_DATABASE = "d1d1d1d1-0000-4000-8000-00000000c1ea"
MAX_SQL_BYTES = 100_000
MAX_BODY_BYTES = 100 * 1024 * 1024  # Cloudflare's request body limit on Free and Pro plans
QUERY = r"/d1/database/[^/]+/query$"

_ROUTE = re.compile(rf"^{API_PREFIX}/accounts/([^/]+)/d1/database/([^/]+)/query$")
# SQLite's run-time limits set to D1's documented ones (d1/platform/limits)
_LIMITS = (
    (sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100),
    (sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES),
    (sqlite3.SQLITE_LIMIT_COLUMN, 100),
    (sqlite3.SQLITE_LIMIT_FUNCTION_ARG, 32),
    (sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 50),
    (sqlite3.SQLITE_LIMIT_LENGTH, 2_000_000),
)
_DENIED = (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT)


def _deny_transactions(action: int, *_: Any) -> int:
    # D1 runs every request in its own transaction and refuses the SQL ones
    return sqlite3.SQLITE_DENY if action in _DENIED else sqlite3.SQLITE_OK


def envelope(result: Any = None, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Cloudflare's answer envelope."""
    return {
        "result": [] if result is None else result,
        "success": not errors,
        "errors": errors or [],
        "messages": [],
    }


def _error(status: int, code: int, message: str, **extra: Any) -> Reply:
    headers = {"cf-d1": f"err={code}"} if code == 7500 else {}
    return Reply(status, envelope(errors=[{"code": code, "message": message, **extra}]), headers)


class _StatementFailed(Exception):
    pass


def split_statements(sql: str) -> list[str]:
    """The statements of ``sql`` (``;``-separated; a trigger body stays whole)."""
    out: list[str] = []
    buf = ""
    for part in sql.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                out.append(buf)
            buf = ""
    if buf.strip(" \t\r\n;"):
        out.append(buf)
    return out


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, bytes) else value  # a BLOB travels as bytes


class D1App(PlatformApp):
    """One D1 database (``account_id``/``database_id``) stored in the SQLite file ``path``
    (a temporary file when None)."""

    platform = "d1"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        account_id: str = DEFAULT_ACCOUNT,
        database_id: str = DEFAULT_DATABASE,
        max_body_bytes: int = MAX_BODY_BYTES,
        **kw: Any,
    ):
        super().__init__(**kw)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="clearlift-d1-")
            path = Path(self._tmp.name) / "d1.sqlite"
        self.path = Path(path)
        self.account_id = account_id
        self.database_id = database_id
        self.max_body_bytes = max_body_bytes
        self.token = self.tokens.add_access(f"sandbox-cf-{secrets.token_urlsafe(30)}")
        self.statements_run = 0
        self.rows_read = 0  # the sum of every committed statement's meta.rows_read
        self.rows_written = 0
        self._db_lock = threading.Lock()  # D1 runs one request at a time per database
        self._conn: sqlite3.Connection | None = None

    # --- for tests and `clearlift sandbox serve` -----------------------------------------

    @property
    def store_url(self) -> str:
        return f"d1://{self.account_id}/{self.database_id}"

    def env(self, server: SandboxServer) -> dict[str, str]:
        """Settings that point clearlift at this database behind ``server``."""
        return {"CLEARLIFT_D1_URL": server.base_url + API_PREFIX, "CLOUDFLARE_API_TOKEN": self.token}

    def create_clearlift_tables(self) -> None:
        """Create ClearLift's tables as the API worker's first D1 migration does (without the
        later columns: ``clearlift init`` adds those), as a live ClearLift D1 has them."""
        from clearlift_cli.store.schema import D1_TABLES

        with self.connect() as conn:
            conn.executescript(D1_TABLES)

    def connect(self) -> sqlite3.Connection:
        """A plain connection to the database file, to seed or inspect it."""
        return sqlite3.connect(self.path, timeout=10)

    def close(self) -> None:
        with self._db_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # --- faults in Cloudflare's shapes ---------------------------------------------------

    def rate_limit_next(self, times: int = 1, *, retry_after: float | None = 1.0) -> None:
        """The next ``times`` queries get Cloudflare's 429 (code 971), with ``Retry-After``
        seconds unless None."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        body = envelope(
            errors=[{"code": 971, "message": "Please wait and consider throttling your request speed"}]
        )
        self.faults.add("status", path=QUERY, times=times, status=429, body=body, headers=headers)

    def overload_next(self, times: int = 1, *, status: int = 503) -> None:
        """The next ``times`` queries are refused as D1 refuses them under load (not run)."""
        body = envelope(errors=[{"code": 7500, "message": "D1 DB is overloaded. Too many requests queued."}])
        self.faults.add("status", path=QUERY, times=times, status=status, body=body)

    def internal_error_next(self, times: int = 1) -> None:
        """The next ``times`` queries get D1's opaque HTTP 500 (code 7500)."""
        ref = secrets.token_hex(16)
        body = envelope(errors=[{"code": 7500, "message": f"internal error; reference = e_sandbox_{ref}"}])
        self.faults.add("status", path=QUERY, times=times, status=500, body=body)

    def drop_next(self, times: int = 1) -> None:
        """The next ``times`` queries run and commit, then the connection drops mid-answer."""
        self.faults.add("drop", path=QUERY, times=times)

    # --- the endpoint --------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        route = _ROUTE.match(request.path)
        if route is None or request.method != "POST":
            return Reply(
                404,
                envelope(
                    errors=[
                        {
                            "code": 7003,
                            "message": f"Could not route to {request.path}, perhaps your object identifier is invalid?",
                        },
                        {"code": 7000, "message": "No route for that URI"},
                    ]
                ),
            )
        refused = self._authenticate(request.headers.get("authorization"))
        if refused is not None:
            return refused
        account, database = route.groups()
        if account != self.account_id:
            return _error(
                403, 7403, "The given account is not valid or is not authorized to access this service"
            )
        if database != self.database_id:
            return _error(404, 7404, f"The database {database} could not be found")
        if len(request.body) > self.max_body_bytes:
            return _error(413, 7400, "The request body is too large")
        try:
            body = request.json()
        except ValueError:
            return _error(400, 7400, "The request body is not valid JSON")
        statements = body.get("batch") if isinstance(body, dict) and "batch" in body else [body]
        if (
            not isinstance(statements, list)
            or not statements
            or not all(
                isinstance(s, dict)
                and isinstance(s.get("sql"), str)
                and isinstance(s.get("params", []), list)
                for s in statements
            )
        ):
            return _error(400, 7400, "The request is malformed: expected sql (and params) or batch")
        with self._db_lock:
            try:
                results = self._run(statements)
            except _StatementFailed as exc:
                return _error(400, 7500, str(exc))
        return Reply(200, envelope(results))

    def _authenticate(self, header: str | None) -> Reply | None:
        if not header:
            return _error(400, 9106, "Missing X-Auth-Key, X-Auth-Email or Authorization headers")
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token.strip():
            return _error(
                400,
                6003,
                "Invalid request headers",
                error_chain=[{"code": 6111, "message": "Invalid format for Authorization header"}],
            )
        if self.tokens.check(token.strip()) != "ok":
            return _error(403, 10000, "Authentication error")
        return None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            for limit, value in _LIMITS:
                conn.setlimit(limit, value)
            conn.execute("PRAGMA foreign_keys = ON")  # D1 enforces foreign keys
            self._conn = conn
        return self._conn

    def _run(self, statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every statement in one transaction: all applied, or none (the first failure)."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        conn.set_authorizer(_deny_transactions)
        results: list[dict[str, Any]] = []
        try:
            for statement in statements:
                sql, params = statement["sql"], statement.get("params") or []
                pieces = split_statements(sql) if not params else [sql]
                for piece in pieces or [sql]:
                    results.append(self._execute(conn, piece, params))
        except BaseException:
            conn.set_authorizer(None)
            conn.execute("ROLLBACK")
            raise
        conn.set_authorizer(None)
        conn.execute("COMMIT")
        size = (
            conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
        )
        for result in results:
            result["meta"]["size_after"] = size
        self.statements_run += len(results)
        self.rows_read += sum(r["meta"]["rows_read"] for r in results)
        self.rows_written += sum(r["meta"]["rows_written"] for r in results)
        return results

    def _execute(self, conn: sqlite3.Connection, sql: str, params: list[Any]) -> dict[str, Any]:
        if len(sql.encode()) > MAX_SQL_BYTES:
            raise _StatementFailed("statement too long: SQLITE_TOOBIG")
        before = conn.total_changes
        started = time.perf_counter()
        try:
            cursor = conn.execute(sql, params)
            columns = [d[0] for d in cursor.description or ()]
            rows = [
                {c: _json_value(v) for c, v in zip(columns, row, strict=True)} for row in cursor.fetchall()
            ]
        except sqlite3.ProgrammingError as exc:
            if "bindings" in str(exc):
                raise _StatementFailed("Wrong number of parameter bindings for SQL query.") from None
            raise _StatementFailed(f"{exc}: SQLITE_ERROR") from None
        except sqlite3.Error as exc:
            name = getattr(exc, "sqlite_errorname", None) or "SQLITE_ERROR"
            primary = "_".join(name.split("_")[:2])  # D1 names the primary result code
            raise _StatementFailed(f"{exc}: {primary}") from None
        duration_ms = (time.perf_counter() - started) * 1000
        changes = conn.total_changes - before
        verb = sql.split(None, 1)[0].upper() if sql.strip() else ""
        return {
            "results": rows,
            "success": True,
            "meta": {
                "served_by": "clearlift-sandbox",
                "served_by_primary": True,
                "duration": duration_ms,
                "changes": changes,
                "last_row_id": conn.execute("SELECT last_insert_rowid()").fetchone()[0],
                "changed_db": changes > 0 or verb in ("CREATE", "DROP", "ALTER"),
                "size_after": 0,
                "rows_read": max(len(rows), changes),
                "rows_written": changes,
                "timings": {"sql_duration_ms": duration_ms},
            },
        }
