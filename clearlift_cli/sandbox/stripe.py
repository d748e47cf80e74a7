"""Stripe sandbox: ``/v1/account`` and ``/v1/charges`` in Stripe's shapes.

A secret key (``Authorization: Bearer sk_...``) is checked with ``self.tokens`` and names
an account: keys made with ``issue_key(account_id)`` or linked with ``link_key``; any other
valid key (``tokens.issue(ttl=None)``, ``tokens.add_access("sk_test_...")``) reads
``DEFAULT_ACCOUNT``. Charges are generated deterministically per account and UTC day
(several a day, some refunded in part or in full, some failed), listed newest first with
``starting_after`` cursors like Stripe, and never dated after the sandbox clock's now.
"""

from __future__ import annotations

import re
import secrets
import threading
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from clearlift_cli.money import minor_units_per_unit
from clearlift_cli.sandbox.data import rng
from clearlift_cli.sandbox.server import PlatformApp, Reply, Request

DEFAULT_ACCOUNT = "acct_1SandboxDefault"
MAX_LIMIT = 100
DEFAULT_LIMIT = 10
UTC = timezone.utc
_DAY = 86400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CREATED = re.compile(r"^created(?:\[(gte|gt|lte|lt)\])?$")

# charge sort key: (created, position within its day); unique per account
_Key = tuple[int, int]


@dataclass
class StripeAccountConfig:
    currency: str
    time_zone: str
    name: str
    charges_per_day: int | None  # None: 3 to 8, drawn per day
    history_start: date


class StripeApp(PlatformApp):
    """Stripe sandbox. ``configure_account`` shapes an account, ``issue_key`` makes a key
    for it, ``fail_next``/``rate_limit_next`` inject Stripe-shaped errors and
    ``charges_between`` returns the raw wire charges served."""

    platform = "stripe"

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self._lock = threading.Lock()
        self._accounts: dict[str, StripeAccountConfig] = {}
        self._keys: dict[str, str] = {}
        self._days: dict[tuple[str, date], list[tuple[_Key, dict[str, Any]]]] = {}
        self._index: dict[str, tuple[str, _Key]] = {}

    # --- configuration ------------------------------------------------------------------

    def configure_account(
        self,
        account_id: str,
        *,
        currency: str | None = None,
        time_zone: str | None = None,
        name: str | None = None,
        charges_per_day: int | None = None,
        history_start: date | None = None,
    ) -> StripeAccountConfig:
        """Override the generated settings of one account (unset keeps the default).
        Changing the currency or charges per day regenerates its charges."""
        config = self.account_config(account_id)
        with self._lock:
            if currency is not None:
                config.currency = currency.lower()
            if time_zone is not None:
                config.time_zone = time_zone
            if name is not None:
                config.name = name
            if charges_per_day is not None:
                config.charges_per_day = charges_per_day
            if history_start is not None:
                config.history_start = history_start
            for key in [k for k in self._days if k[0] == account_id]:
                del self._days[key]
        return config

    def account_config(self, account_id: str) -> StripeAccountConfig:
        with self._lock:
            if account_id not in self._accounts:
                self._accounts[account_id] = StripeAccountConfig(
                    currency="usd",
                    time_zone="Etc/UTC",
                    name=f"Sandbox Shop {account_id[-6:]}",
                    charges_per_day=None,
                    history_start=date(2023, 1, 1),
                )
            return self._accounts[account_id]

    def issue_key(self, account_id: str = DEFAULT_ACCOUNT, *, livemode: bool = False) -> str:
        """A new valid secret key for ``account_id``."""
        key = f"sk_{'live' if livemode else 'test'}_51{secrets.token_hex(16)}"
        self.tokens.add_access(key)
        self.link_key(key, account_id)
        return key

    def link_key(self, key: str, account_id: str) -> None:
        """Make ``key`` (already known to ``self.tokens``) read ``account_id``."""
        with self._lock:
            self._keys[key] = account_id

    def account_for_key(self, key: str) -> str:
        with self._lock:
            return self._keys.get(key, DEFAULT_ACCOUNT)

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        path: str = r"^/v1/",
        code: str | None = None,
        message: str | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with a Stripe-shaped error, with
        ``Retry-After`` and ``Stripe-Should-Retry`` headers when given."""
        error: dict[str, Any] = {
            "type": "api_error" if status >= 500 else "invalid_request_error",
            "message": message or ("An unknown error occurred" if status >= 500 else "Request failed"),
        }
        if code:
            error["code"] = code
        headers = {"Request-Id": f"req_{secrets.token_hex(7)}"}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        if should_retry is not None:
            headers["Stripe-Should-Retry"] = "true" if should_retry else "false"
        self.faults.add("status", path=path, times=times, status=status,
                        body={"error": error}, headers=headers)

    def rate_limit_next(
        self, *, times: int = 1, retry_after: float | None = 1, should_retry: bool | None = None,
        path: str = r"^/v1/",
    ) -> None:
        """Answer the next ``times`` requests with 429 ``rate_limit`` like Stripe."""
        self.fail_next(
            429, times=times, path=path, code="rate_limit",
            message="Request rate limit exceeded. You can learn more about rate limits here "
                    "https://stripe.com/docs/rate-limits.",
            retry_after=retry_after, should_retry=should_retry,
        )

    # --- wire data ----------------------------------------------------------------------

    def _day_charges(self, account_id: str, day: date) -> list[tuple[_Key, dict[str, Any]]]:
        """The day's charges, newest first, each with its sort key."""
        with self._lock:
            cached = self._days.get((account_id, day))
        if cached is not None:
            return cached
        config = self.account_config(account_id)
        r = rng("stripe", account_id, day.isoformat(), config.currency, config.charges_per_day)
        count = config.charges_per_day if config.charges_per_day is not None else r.randint(3, 8)
        day_start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        zero_decimal = minor_units_per_unit(config.currency) == 1
        out = []
        for position in range(count):
            created = day_start + r.randint(0, _DAY - 1)
            if zero_decimal:
                amount = r.choice((500, 800, 1200, 1980, 3000, 4800, 9800, 12000))
            else:
                amount = r.randint(500, 25000)
            roll = r.random()
            failed = roll < 0.08
            refunded = 0
            if not failed and roll > 0.9:
                refunded = amount  # full refund
            elif not failed and roll > 0.8:
                refunded = r.randint(1, amount - 1)  # partial refund
            customer = None if r.random() < 0.2 else f"cus_{_random_id(r, 14)}"
            charge_id = f"ch_3{_random_id(r, 23)}"
            wire = {
                "id": charge_id,
                "object": "charge",
                "amount": amount,
                "amount_captured": 0 if failed else amount,
                "amount_refunded": refunded,
                "balance_transaction": None if failed else f"txn_3{_random_id(r, 23)}",
                "captured": not failed,
                "created": created,
                "currency": config.currency,
                "customer": customer,
                "description": f"Order {position + 1} of {day.isoformat()}",
                "failure_code": "card_declined" if failed else None,
                "failure_message": "Your card was declined." if failed else None,
                "livemode": False,
                "metadata": {},
                "paid": not failed,
                "refunded": refunded == amount,
                "status": "failed" if failed else "succeeded",
            }
            out.append(((created, position), wire))
        out.sort(key=lambda item: item[0], reverse=True)
        with self._lock:
            self._days[(account_id, day)] = out
            for key, wire in out:
                self._index[wire["id"]] = (account_id, key)
        return out

    def _window(self, account_id: str, lo: int | None, hi: int | None) -> tuple[int, int]:
        """[lo, hi) clipped to the account's history and to now."""
        config = self.account_config(account_id)
        start = int(datetime.combine(config.history_start, datetime.min.time(), UTC).timestamp())
        now_exclusive = int(self.clock()) + 1
        return max(start, lo if lo is not None else start), min(now_exclusive, hi if hi is not None else now_exclusive)

    def _scan(self, account_id: str, lo: int, hi: int, before: _Key | None, limit: int | None):
        """Charges with lo <= created < hi and sort key < ``before``, newest first; at most
        ``limit`` + 1 (to tell whether more remain)."""
        out: list[dict[str, Any]] = []
        if hi <= lo:
            return out
        day = datetime.fromtimestamp(hi - 1, UTC).date()
        first = datetime.fromtimestamp(lo, UTC).date()
        while day >= first:
            for key, wire in self._day_charges(account_id, day):
                if not lo <= key[0] < hi or (before is not None and key >= before):
                    continue
                out.append(dict(wire))
                if limit is not None and len(out) > limit:
                    return out
            day -= timedelta(days=1)
        return out

    def charges_between(self, account_id: str, since: datetime | int, until: datetime | int) -> list[dict[str, Any]]:
        """Every wire charge of ``account_id`` created in [since, until), newest first, as
        ``/v1/charges`` serves it (nothing after the sandbox clock's now)."""
        lo, hi = self._window(account_id, _epoch(since), _epoch(until))
        return self._scan(account_id, lo, hi, None, None)

    # --- HTTP -----------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        if request.method != "GET" or request.path not in ("/v1/account", "/v1/charges"):
            return _error(404, f"Unrecognized request URL ({request.method}: {request.path}).")
        key, problem = self._authenticate(request)
        if problem is not None:
            return problem
        account_id = self.account_for_key(key)
        if request.path == "/v1/account":
            return Reply(200, self._account_body(account_id))
        return self._list_charges(account_id, request.query)

    def _authenticate(self, request: Request) -> tuple[str, Reply | None]:
        header = request.headers.get("authorization") or ""
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            return "", _error(401, "You did not provide an API key. You need to provide your API key "
                                   "in the Authorization header, using Bearer auth.")
        key = header[7:].strip()
        state = self.tokens.check(key)
        if state == "ok":
            return key, None
        kind = "Expired" if state in ("expired", "revoked") else "Invalid"
        return key, _error(401, f"{kind} API Key provided: {_mask(key)}")

    def _account_body(self, account_id: str) -> dict[str, Any]:
        config = self.account_config(account_id)
        return {
            "id": account_id,
            "object": "account",
            "business_profile": {"name": config.name, "url": None},
            "charges_enabled": True,
            "country": "JP" if config.currency == "jpy" else "US",
            "default_currency": config.currency,
            "details_submitted": True,
            "email": "owner@example.com",
            "settings": {"dashboard": {"display_name": config.name, "timezone": config.time_zone}},
            "type": "standard",
        }

    def _list_charges(self, account_id: str, query: dict[str, str]) -> Reply:
        bounds: dict[str, int] = {}
        limit = DEFAULT_LIMIT
        for name, raw in query.items():
            created = _CREATED.match(name)
            if created is None and name not in ("limit", "starting_after"):
                if name == "ending_before":
                    return _error(400, "ending_before is not supported by the sandbox", param=name)
                return _error(400, f"Received unknown parameter: {name}", param=name)
            if name == "starting_after":
                continue
            try:
                value = int(raw)
            except ValueError:
                return _error(400, f"Invalid integer: {raw}", param=name)
            if name == "limit":
                if not 1 <= value <= MAX_LIMIT:
                    return _error(400, "This value must be less than or equal to 100.", param="limit")
                limit = value
            else:
                bounds[created.group(1) or "eq"] = value
        lows = [v + 1 if op == "gt" else v for op, v in bounds.items() if op in ("eq", "gte", "gt")]
        highs = [v + 1 if op in ("eq", "lte") else v for op, v in bounds.items() if op in ("eq", "lt", "lte")]
        lo = max(lows) if lows else None
        hi = min(highs) if highs else None
        before: _Key | None = None
        cursor = query.get("starting_after")
        if cursor:
            with self._lock:
                found = self._index.get(cursor)
            if found is None or found[0] != account_id:
                return _error(400, f"No such charge: '{cursor}'", param="starting_after",
                              code="resource_missing")
            before = found[1]
        lo, hi = self._window(account_id, lo, hi)
        rows = self._scan(account_id, lo, hi, before, limit)
        return Reply(200, {
            "object": "list",
            "url": "/v1/charges",
            "has_more": len(rows) > limit,
            "data": rows[:limit],
        })


def _random_id(r, length: int) -> str:
    return "".join(r.choice(_ALNUM) for _ in range(length))


def _epoch(value: datetime | int | None) -> int | None:
    """Whole epoch seconds at or after ``value`` (``created >= ceil(since)``)."""
    if value is None or isinstance(value, int):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    whole, rest = divmod(value - _EPOCH, timedelta(seconds=1))
    return whole + (1 if rest else 0)


def _mask(key: str) -> str:
    """Stripe's way of echoing a key: its mode prefix, stars and the last four chars."""
    match = re.match(r"^(?:sk|rk|pk)_(?:live|test)_", key)
    prefix = match.group(0) if match else ""
    return f"{prefix}{'*' * max(4, len(key) - len(prefix) - 4)}{key[-4:]}"


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Reply:
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if param:
        error["param"] = param
    if code:
        error["code"] = code
    return Reply(status, {"error": error}, {"Request-Id": f"req_{secrets.token_hex(7)}"})
