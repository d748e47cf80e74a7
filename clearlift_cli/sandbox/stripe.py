"""Stripe sandbox: ``/v1/account``, ``/v1/charges`` and ``/v1/refunds`` in Stripe's shapes.

A secret key (``Authorization: Bearer sk_...``) is checked with ``self.tokens`` and names
an account: keys made with ``issue_key(account_id)`` or linked with ``link_key``; any other
valid key (``tokens.issue(ttl=None)``, ``tokens.add_access("sk_test_...")``) reads
``DEFAULT_ACCOUNT``. ``issue_key(..., restricted=True)`` makes a restricted key (``rk_…``,
Charges and Refunds: Read by default): like Stripe, ``/v1/account`` answers it 403 (that
needs ``rak_accounts_kyc_id_numbers_read``), and any endpoint it lacks the permission for too.

Charges are generated deterministically per account and UTC day (several a day; some
refunded in part or in full, some failed, some authorised and never captured, some
captured in part), listed newest first with ``starting_after`` cursors like Stripe, and
never dated after the sandbox clock's now. Each refund is also a refund object on
``/v1/refunds`` (created a little after its charge; ``refund()`` adds one at any later
time), listed by its own ``created``, with ``expand[]=data.charge``.

The ``Stripe-Version`` header matters as it does on Stripe: before 2025-03-31.basil (and
without the header: the account's default, older here) the uncaptured rest of a partial
capture, and a whole authorisation that expired uncaptured after 7 days, show as refunded
(``amount_refunded``). ``pagination = "repeat" | "endless"`` makes list pages loop.
"""

from __future__ import annotations

import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, overload

from clearlift_cli.money import minor_units_per_unit
from clearlift_cli.sandbox.data import rng
from clearlift_cli.sandbox.server import PlatformApp, Reply, Request

DEFAULT_ACCOUNT = "acct_1SandboxDefault"
MAX_LIMIT = 100
DEFAULT_LIMIT = 10
UTC = UTC
_DAY = 86400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CREATED = re.compile(r"^created(?:\[(gte|gt|lte|lt)\])?$")
# From this API version on, a partial capture or an expired authorisation is no refund.
BASIL = "2025-03-31"
DEFAULT_API_VERSION = "2024-06-20"  # the account's default: what a request without the header gets
LATEST_API_VERSION = "2025-03-31.basil"
AUTHORISATION_DAYS = 7  # an uncaptured charge expires after this long
READ_ONLY = frozenset({"rak_charge_read", "rak_refund_read"})
REQUIRED_PERMISSION = {
    "/v1/account": "rak_accounts_kyc_id_numbers_read",
    "/v1/charges": "rak_charge_read",
    "/v1/refunds": "rak_refund_read",
}

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
        self._permissions: dict[str, frozenset[str]] = {}  # restricted keys only
        self._late: dict[str, list[dict[str, Any]]] = {}  # charge id -> refunds added later
        self.pagination: str | None = None  # "repeat" | "endless": list pages never end
        self._endless = 0

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

    def authorize(self, account_id: str, ttl: float | None = None) -> tuple[str, str | None]:
        """A secret key of ``account_id`` (keys do not expire; no refresh token)."""
        return self.issue_key(account_id), None

    def issue_key(
        self,
        account_id: str = DEFAULT_ACCOUNT,
        *,
        livemode: bool = False,
        restricted: bool = False,
        permissions: set[str] | frozenset[str] | None = None,
    ) -> str:
        """A new valid secret key for ``account_id``; ``restricted``: an ``rk_`` key holding
        only ``permissions`` (default: Charges and Refunds, Read)."""
        kind = "rk" if restricted else "sk"
        key = f"{kind}_{'live' if livemode else 'test'}_51{secrets.token_hex(16)}"
        self.tokens.add_access(key)
        self.link_key(key, account_id)
        if restricted:
            with self._lock:
                self._permissions[key] = frozenset(READ_ONLY if permissions is None else permissions)
        return key

    def refund(
        self, charge_id: str, amount: int | None = None, *, created: int | datetime | None = None
    ) -> dict[str, Any]:
        """Refund ``amount`` (default: all that is left) of a charge already served or listed
        by ``charges_between``, at ``created`` (default: the sandbox clock's now); the refund
        and the charge's new ``amount_refunded`` show from that time on. Returns the refund."""
        with self._lock:
            found = self._index.get(charge_id)
        if found is None:
            raise KeyError(f"no such charge: {charge_id}")
        account_id, (charge_created, _) = found
        wire = self._render(self._stored(charge_id), LATEST_API_VERSION, late_until=None)
        left = wire["amount_captured"] - wire["amount_refunded"]
        amount = left if amount is None else amount
        if not 0 < amount <= left:
            raise ValueError(f"cannot refund {amount} of {charge_id}: {left} left")
        at = int(self.clock()) if created is None else _epoch(created)
        refund = {
            "id": f"re_3{secrets.token_hex(12)}",
            "object": "refund",
            "amount": amount,
            "balance_transaction": f"txn_3{secrets.token_hex(12)}",
            "charge": charge_id,
            "created": max(at, charge_created),
            "currency": wire["currency"],
            "metadata": {},
            "payment_intent": None,
            "reason": "requested_by_customer",
            "status": "succeeded",
        }
        with self._lock:
            self._late.setdefault(charge_id, []).append(refund)
        return dict(refund)

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
        self.faults.add(
            "status", path=path, times=times, status=status, body={"error": error}, headers=headers
        )

    def rate_limit_next(
        self,
        *,
        times: int = 1,
        retry_after: float | None = 1,
        should_retry: bool | None = None,
        path: str = r"^/v1/",
    ) -> None:
        """Answer the next ``times`` requests with 429 ``rate_limit`` like Stripe."""
        self.fail_next(
            429,
            times=times,
            path=path,
            code="rate_limit",
            message="Request rate limit exceeded. You can learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            retry_after=retry_after,
            should_retry=should_retry,
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
        out: list[tuple[_Key, dict[str, Any]]] = []
        for position in range(count):
            created = day_start + r.randint(0, _DAY - 1)
            if zero_decimal:
                amount = r.choice((500, 800, 1200, 1980, 3000, 4800, 9800, 12000))
            else:
                amount = r.randint(500, 25000)
            roll = r.random()
            failed = roll < 0.08
            # authorised, never captured (no new draws: the data of other charges stays put)
            uncaptured = 0.08 <= roll < 0.11
            partial = 0.11 <= roll < 0.14  # captured in part
            captured_amount = 0 if failed or uncaptured else (max(1, amount * 3 // 5) if partial else amount)
            refunded = 0
            if not failed and roll > 0.9:
                refunded = amount  # full refund
            elif not failed and roll > 0.8:
                refunded = r.randint(1, amount - 1)  # partial refund
            customer = None if r.random() < 0.2 else f"cus_{_random_id(r, 14)}"
            charge_id = f"ch_3{_random_id(r, 23)}"
            txn = None if failed else f"txn_3{_random_id(r, 23)}"
            wire = {
                "id": charge_id,
                "object": "charge",
                "amount": amount,
                "amount_captured": captured_amount,
                "amount_refunded": refunded,
                "balance_transaction": txn if captured_amount else None,
                "captured": captured_amount > 0,
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
            for key, charge in out:
                self._index[charge["id"]] = (account_id, key)
        return out

    def _window(self, account_id: str, lo: int | None, hi: int | None) -> tuple[int, int]:
        """[lo, hi) clipped to the account's history and to now."""
        config = self.account_config(account_id)
        start = int(datetime.combine(config.history_start, datetime.min.time(), UTC).timestamp())
        now_exclusive = int(self.clock()) + 1
        return max(start, lo if lo is not None else start), min(
            now_exclusive, hi if hi is not None else now_exclusive
        )

    def _scan(
        self,
        account_id: str,
        lo: int,
        hi: int,
        before: _Key | None,
        limit: int | None,
        version: str = LATEST_API_VERSION,
    ):
        """Charges with lo <= created < hi and sort key < ``before``, newest first, rendered
        in API ``version``; at most ``limit`` + 1 (to tell whether more remain)."""
        out: list[dict[str, Any]] = []
        if hi <= lo:
            return out
        day = datetime.fromtimestamp(hi - 1, UTC).date()
        first = datetime.fromtimestamp(lo, UTC).date()
        while day >= first:
            for key, wire in self._day_charges(account_id, day):
                if not lo <= key[0] < hi or (before is not None and key >= before):
                    continue
                out.append(self._render(wire, version))
                if limit is not None and len(out) > limit:
                    return out
            day -= timedelta(days=1)
        return out

    def _stored(self, charge_id: str) -> dict[str, Any]:
        with self._lock:
            account_id, key = self._index[charge_id]
        day = datetime.fromtimestamp(key[0], UTC).date()
        for k, wire in self._day_charges(account_id, day):
            if k == key:
                return wire
        raise KeyError(charge_id)  # pragma: no cover - the index and the days agree

    def _render(
        self, wire: dict[str, Any], version: str, *, late_until: int | None | str = "now"
    ) -> dict[str, Any]:
        """A charge as served now in API ``version``: with the refunds added by ``refund()``
        up to ``late_until`` (default: the clock's now; None: all of them), and, before basil,
        the uncaptured rest of a partial capture or an expired authorisation as refunded."""
        out = dict(wire)
        now = int(self.clock())
        limit = now if late_until == "now" else late_until
        with self._lock:
            late = list(self._late.get(wire["id"], ()))
        out["amount_refunded"] += sum(r["amount"] for r in late if limit is None or r["created"] <= limit)
        out["refunded"] = out["amount_captured"] > 0 and out["amount_refunded"] >= out["amount_captured"]
        if version[:10] < BASIL and out["paid"]:
            expired = not out["captured"] and now - out["created"] >= AUTHORISATION_DAYS * _DAY
            if expired or (out["captured"] and out["amount_captured"] < out["amount"]):
                out["amount_refunded"] += out["amount"] - out["amount_captured"]
                out["refunded"] = expired or out["refunded"]
        return out

    def charges_between(
        self,
        account_id: str,
        since: datetime | int,
        until: datetime | int,
        *,
        api_version: str = LATEST_API_VERSION,
    ) -> list[dict[str, Any]]:
        """Every wire charge of ``account_id`` created in [since, until), newest first, as
        ``/v1/charges`` serves it now in ``api_version`` (nothing after the clock's now)."""
        lo, hi = self._window(account_id, _epoch(since), _epoch(until))
        return self._scan(account_id, lo, hi, None, None, api_version)

    def refunds_between(
        self, account_id: str, since: datetime | int, until: datetime | int
    ) -> list[dict[str, Any]]:
        """Every refund of ``account_id`` created in [since, until), newest first, as
        ``/v1/refunds`` serves it (nothing after the clock's now)."""
        lo, hi = self._window(account_id, _epoch(since), _epoch(until))
        return [refund for _, refund in self._refunds(account_id, lo, hi)]

    def _refunds(self, account_id: str, lo: int, hi: int) -> list[tuple[tuple[int, str], dict[str, Any]]]:
        """(sort key, refund) of refunds with lo <= created < hi, newest first. A generated
        refund is created 10 to 60 minutes after its charge; ``refund()`` ones when asked."""
        out: list[tuple[tuple[int, str], dict[str, Any]]] = []
        if hi <= lo:
            return out
        start, _ = self._window(account_id, None, None)
        day = datetime.fromtimestamp(hi - 1, UTC).date()
        first = datetime.fromtimestamp(max(start, lo - _MAX_REFUND_DELAY), UTC).date()
        while day >= first:
            for _, wire in self._day_charges(account_id, day):
                if wire["amount_refunded"] and wire["captured"]:
                    refund = _generated_refund(wire)
                    if lo <= refund["created"] < hi:
                        out.append(((refund["created"], refund["id"]), refund))
            day -= timedelta(days=1)
        with self._lock:
            late = [(cid, list(rs)) for cid, rs in self._late.items()]
        for charge_id, refunds in late:
            with self._lock:
                owner = self._index.get(charge_id, ("",))[0]
            if owner != account_id:
                continue
            out.extend(((r["created"], r["id"]), dict(r)) for r in refunds if lo <= r["created"] < hi)
        out.sort(key=lambda item: item[0], reverse=True)
        return out

    # --- HTTP -----------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        if request.method != "GET" or request.path not in REQUIRED_PERMISSION:
            return _error(404, f"Unrecognized request URL ({request.method}: {request.path}).")
        key, problem = self._authenticate(request)
        if problem is not None:
            return problem
        account_id = self.account_for_key(key)
        with self._lock:
            permissions = self._permissions.get(key)
        needed = REQUIRED_PERMISSION[request.path]
        if permissions is not None and needed not in permissions:
            # Stripe's answer, word for word (key masked to its last six characters).
            return _error(
                403,
                f"The provided key '{_mask(key, 6)}' does not have the required permissions "
                f"for this endpoint on account '{account_id}'. Having the '{needed}' "
                "permission would allow this request to continue.",
            )
        version = request.headers.get("stripe-version") or DEFAULT_API_VERSION
        if request.path == "/v1/account":
            return Reply(200, self._account_body(account_id))
        if request.path == "/v1/refunds":
            return self._list_refunds(account_id, request.query, version)
        return self._list_charges(account_id, request.query, version)

    def _authenticate(self, request: Request) -> tuple[str, Reply | None]:
        header = request.headers.get("authorization") or ""
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            return "", _error(
                401,
                "You did not provide an API key. You need to provide your API key "
                "in the Authorization header, using Bearer auth.",
            )
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

    def _list_query(
        self, query: dict[str, str], extra: tuple[str, ...]
    ) -> tuple[int | None, int | None, int] | Reply:
        """(lo, hi, limit) of a list request, or the 400 Stripe gives a bad one."""
        bounds: dict[str, int] = {}
        limit = DEFAULT_LIMIT
        for name, raw in query.items():
            created = _CREATED.match(name)
            if created is None and name not in ("limit", "starting_after") + extra:
                if name == "ending_before":
                    return _error(400, "ending_before is not supported by the sandbox", param=name)
                return _error(400, f"Received unknown parameter: {name}", param=name)
            if name in ("starting_after",) + extra:
                continue
            try:
                value = int(raw)
            except ValueError:
                return _error(400, f"Invalid integer: {raw}", param=name)
            if name == "limit":
                if not 1 <= value <= MAX_LIMIT:
                    return _error(400, "This value must be less than or equal to 100.", param="limit")
                limit = value
            elif created is not None:
                bounds[created.group(1) or "eq"] = value
        lows = [v + 1 if op == "gt" else v for op, v in bounds.items() if op in ("eq", "gte", "gt")]
        highs = [v + 1 if op in ("eq", "lte") else v for op, v in bounds.items() if op in ("eq", "lt", "lte")]
        return (max(lows) if lows else None), (min(highs) if highs else None), limit

    def _list_charges(self, account_id: str, query: dict[str, str], version: str) -> Reply:
        parsed = self._list_query(query, ())
        if isinstance(parsed, Reply):
            return parsed
        lo, hi, limit = parsed
        before: _Key | None = None
        cursor = query.get("starting_after")
        if self.pagination == "endless":
            return self._endless_page(account_id, hi, limit)
        if cursor and self.pagination != "repeat":
            with self._lock:
                found = self._index.get(cursor)
            if found is None or found[0] != account_id:
                return _error(
                    400, f"No such charge: '{cursor}'", param="starting_after", code="resource_missing"
                )
            before = found[1]
        lo, hi = self._window(account_id, lo, hi)
        rows = self._scan(account_id, lo, hi, before, limit, version)
        return Reply(
            200,
            {
                "object": "list",
                "url": "/v1/charges",
                "has_more": len(rows) > limit or self.pagination == "repeat",
                "data": rows[:limit],
            },
        )

    def _endless_page(self, account_id: str, hi: int | None, limit: int) -> Reply:
        """A page of fresh made-up charges, older and older, that always has more."""
        config = self.account_config(account_id)
        with self._lock:
            first = self._endless
            self._endless += limit
        top = (hi if hi is not None else int(self.clock())) - 1
        rows = [
            {
                "id": f"ch_endless{n:012d}",
                "object": "charge",
                "amount": 1000,
                "amount_captured": 1000,
                "amount_refunded": 0,
                "captured": True,
                "created": top - n,
                "currency": config.currency,
                "customer": None,
                "paid": True,
                "refunded": False,
                "status": "succeeded",
            }
            for n in range(first, first + limit)
        ]
        return Reply(200, {"object": "list", "url": "/v1/charges", "has_more": True, "data": rows})

    def _list_refunds(self, account_id: str, query: dict[str, str], version: str) -> Reply:
        parsed = self._list_query(query, ("charge", "payment_intent", "expand[]"))
        if isinstance(parsed, Reply):
            return parsed
        lo, hi, limit = parsed
        expand = query.get("expand[]")
        if expand not in (None, "data.charge"):
            return _error(400, f"This property cannot be expanded ({expand}).", param="expand")
        lo, hi = self._window(account_id, lo, hi)
        refunds = self._refunds(account_id, lo, hi)
        if query.get("charge"):
            refunds = [item for item in refunds if item[1]["charge"] == query["charge"]]
        if query.get("payment_intent"):
            refunds = []  # sandbox charges have no PaymentIntent
        cursor = query.get("starting_after")
        if cursor and self.pagination != "repeat":
            at = next((i for i, (_, r) in enumerate(refunds) if r["id"] == cursor), None)
            if at is None:
                return _error(
                    400, f"No such refund: '{cursor}'", param="starting_after", code="resource_missing"
                )
            refunds = refunds[at + 1 :]
        page = [dict(r) for _, r in refunds[:limit]]
        if expand:
            for refund in page:
                refund["charge"] = self._render(self._stored(refund["charge"]), version)
        return Reply(
            200,
            {
                "object": "list",
                "url": "/v1/refunds",
                "has_more": len(refunds) > limit or self.pagination == "repeat",
                "data": page,
            },
        )


_MAX_REFUND_DELAY = 3600  # a generated refund is created at most this long after its charge


def _generated_refund(wire: dict[str, Any]) -> dict[str, Any]:
    """The refund object behind a generated charge's ``amount_refunded`` (no new draws)."""
    created = wire["created"] + 600 + wire["created"] % (_MAX_REFUND_DELAY - 600)
    return {
        "id": "re_" + wire["id"][3:],
        "object": "refund",
        "amount": wire["amount_refunded"],
        "balance_transaction": "txn_" + wire["id"][3:],
        "charge": wire["id"],
        "created": created,
        "currency": wire["currency"],
        "metadata": {},
        "payment_intent": None,
        "reason": "requested_by_customer",
        "status": "succeeded",
    }


def _random_id(r, length: int) -> str:
    return "".join(r.choice(_ALNUM) for _ in range(length))


@overload
def _epoch(value: datetime | int) -> int: ...
@overload
def _epoch(value: None) -> None: ...
def _epoch(value: datetime | int | None) -> int | None:
    """Whole epoch seconds at or after ``value`` (``created >= ceil(since)``)."""
    if value is None or isinstance(value, int):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    whole, rest = divmod(value - _EPOCH, timedelta(seconds=1))
    return whole + (1 if rest else 0)


def _mask(key: str, tail: int = 4) -> str:
    """Stripe's way of echoing a key: its mode prefix, stars and the last ``tail`` chars."""
    match = re.match(r"^(?:sk|rk|pk)_(?:live|test)_", key)
    prefix = match.group(0) if match else ""
    return f"{prefix}{'*' * max(4, len(key) - len(prefix) - tail)}{key[-tail:]}"


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Reply:
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if param:
        error["param"] = param
    if code:
        error["code"] = code
    return Reply(status, {"error": error}, {"Request-Id": f"req_{secrets.token_hex(7)}"})
