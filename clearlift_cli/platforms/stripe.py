"""Stripe: the account's time zone, charges created in a time range, and charges refunded
in a time range.

The connection's "access token" is the account's secret key (``sk_…``) or a restricted key
(``rk_…``), sent as a Bearer token; neither expires. Amounts stay in the currency's minor
unit exactly as Stripe gives them (zero-decimal currencies such as JPY have none: 500 JPY is
500).

- Restricted keys: a read-only key (Charges and Refunds: Read) is what careful users give.
  ``GET /v1/account`` answers such a key 403 (it needs ``rak_accounts_kyc_id_numbers_read``),
  so the account falls back to what the charges say: each charge carries its currency, and
  days are UTC days unless the connection's ``settings.time_zone`` names an IANA zone (which
  also overrides the account's own dashboard time zone when it can be read).
- Late refunds: ``refunded_charges`` lists ``/v1/refunds`` by the refund's own ``created``
  (with each refund's charge expanded), so a refund made long after its charge is seen.
  ``/v1/events`` (``charge.refunded``) was not used: Stripe keeps events for 30 days only,
  and renders them in the API version of their creation.
- Every request pins ``Stripe-Version`` (``STRIPE_VERSION``): from 2025-03-31.basil a partial
  capture or an expired authorisation no longer shows as a refund in ``amount_refunded``, so
  captured - refunded is the revenue. Without the pin the account's default version decides.
  Doubt: charges partially captured before that version may keep the older bookkeeping.
- Pages are walked with ``starting_after``; a walk that repeats itself, goes back in time
  or passes ``MAX_PAGES`` fails the job instead of looping forever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from clearlift_cli import redact as redaction
from clearlift_cli.errors import (
    AuthRevoked,
    PermanentError,
    RateLimited,
    TransientError,
)
from clearlift_cli.money import to_int
from clearlift_cli.platforms.base import (
    Account,
    Charge,
    Credentials,
    PlatformContext,
    RevenueClient,
    time_zone,
)
from clearlift_cli.platforms.http import Response, client_for, short

log = logging.getLogger("clearlift.stripe")

PLATFORM = "stripe"
PAGE_LIMIT = 100
# The API version every request is read in (see the module docstring).
STRIPE_VERSION = "2025-03-31.basil"
# Pages of one list walk (one window) before giving up: 2 million charges in one month-long
# slice. Only an endless pagination gets there.
MAX_PAGES = 20_000
# Connection setting naming the account's time zone when the key cannot read the account.
TIME_ZONE_SETTING = "time_zone"
# ISO 4217 "no currency": a restricted key cannot read the account's default currency, and
# nothing needs it (each charge carries its own).
NO_CURRENCY = "XXX"
# Stripe sends Retry-After on most 429s; without it a short pause usually suffices.
DEFAULT_RATE_LIMIT_WAIT = 2.0

UTC = UTC
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MissingPermission(PermanentError):
    """HTTP 403: the (restricted) key may not read this endpoint."""


def _message(error: dict[str, Any], status: int) -> str:
    # Stripe echoes the key it was given, masked ("sk_test_****1234"): short() masks it whole.
    return short(error.get("message") or f"HTTP {status}")


def classify(response: Response, body: Any) -> None:
    """Raise the ``clearlift_cli.errors`` exception for a Stripe error answer.

    401 is always a dead key; 403 is a permission the key lacks (``MissingPermission``);
    ``Stripe-Should-Retry: false`` is final; 429 (or code ``rate_limit``) waits
    ``Retry-After``; 409, 5xx or ``Stripe-Should-Retry: true`` retry."""
    status = response.status
    if 200 <= status < 300:
        if body is not None and not isinstance(body, dict):
            raise TransientError("stripe: answer is not a JSON object", platform=PLATFORM)
        return
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    message = f"stripe: HTTP {status}: {_message(error, status)}"
    should_retry = str(response.headers.get("Stripe-Should-Retry") or "").strip().lower()
    if status == 401:
        raise AuthRevoked(message, platform=PLATFORM, reason="Invalid API Key", definitive=True)
    if status == 403:
        # {"error": {"type": "invalid_request_error", "message": "The provided key 'rk_live_…'
        # does not have the required permissions for this endpoint on account 'acct_…'.
        # Having the 'rak_charge_read' permission would allow this request to continue."}}
        raise MissingPermission(message, platform=PLATFORM)
    if should_retry == "false":
        raise PermanentError(message, platform=PLATFORM)
    if status == 429 or error.get("code") == "rate_limit":
        raise RateLimited(
            message,
            retry_after=response.retry_after(DEFAULT_RATE_LIMIT_WAIT),
            scope="account",
            platform=PLATFORM,
        )
    if should_retry == "true" or status == 409 or status >= 500:
        raise TransientError(message, platform=PLATFORM)
    raise PermanentError(message, platform=PLATFORM)


def _ceil_epoch(dt: datetime) -> int:
    """Whole epoch seconds at or after ``dt``: ``created`` is whole seconds, so
    ``created >= ceil(dt)`` is exactly ``created >= dt``."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    whole, rest = divmod(dt - _EPOCH, timedelta(seconds=1))
    return whole + (1 if rest else 0)


def parse_charge(row: dict[str, Any]) -> Charge:
    """One wire charge as a ``Charge`` (amounts in minor units, untouched).

    ``captured`` false is an authorisation not captured (``paid`` is true for those too);
    ``amount_captured`` is less than ``amount`` after a partial capture. A charge without
    these fields (an old shape) counts as captured in full."""
    try:
        customer = row.get("customer")
        if isinstance(customer, dict):  # an expanded customer object
            customer = customer.get("id")
        captured = row.get("captured")
        captured = True if captured is None else bool(captured)
        amount_captured = row.get("amount_captured")
        return Charge(
            charge_id=str(row["id"]),
            amount_minor=to_int(row["amount"]),
            amount_refunded_minor=to_int(row.get("amount_refunded") or 0),
            currency=str(row["currency"]).upper(),
            status=str(row.get("status") or ""),
            paid=bool(row.get("paid")),
            customer_id=str(customer) if customer else None,
            created_at=datetime.fromtimestamp(to_int(row["created"]), UTC),
            amount_captured_minor=(
                to_int(amount_captured)
                if amount_captured is not None
                else (to_int(row["amount"]) if captured else 0)
            ),
            captured=captured,
        )
    except KeyError as exc:
        raise PermanentError(f"stripe: charge without {exc.args[0]!r}", platform=PLATFORM) from None
    except ValueError as exc:
        raise PermanentError(f"stripe: charge with a bad number: {exc}", platform=PLATFORM) from None


class StripeClient(RevenueClient):
    """The charges of one Stripe account, read with its secret or restricted key."""

    platform = PLATFORM
    # Backfills commit a month at a time.
    max_window_days = 31
    default_lookback_days = 3
    attribution_window_days = None
    max_pages = MAX_PAGES

    def __init__(self, ctx: PlatformContext, credentials: Credentials):
        super().__init__(ctx, credentials)
        redaction.register(credentials.access_token)
        self.base = f"{ctx.settings.stripe_url}/v1"
        self.http = client_for(ctx, PLATFORM)

    def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.http.request(
            "GET",
            f"{self.base}{path}",
            classify=classify,
            params=params,
            headers={
                "Authorization": f"Bearer {self.credentials.access_token}",
                "Stripe-Version": STRIPE_VERSION,
            },
        )
        return body if isinstance(body, dict) else {}

    def _configured_time_zone(self) -> str | None:
        value = (self.ctx.connection_settings or {}).get(TIME_ZONE_SETTING)
        if value is None or value == "":
            return None
        time_zone(
            str(value),
            platform=PLATFORM,
            connection_id=self.ctx.connection_id,
            what=f"settings.{TIME_ZONE_SETTING}",
        )
        return str(value)

    def account(self) -> Account:
        configured = self._configured_time_zone()
        try:
            body = self._get("/account")
        except MissingPermission as exc:
            # A restricted key: the charges carry their currency; days are UTC unless set.
            log.info(
                "stripe: account %s: the key cannot read /v1/account (%s); days are %s days",
                self.ctx.account_id,
                exc,
                configured or "UTC",
            )
            return Account(
                account_id=str(self.ctx.account_id),
                currency=NO_CURRENCY,
                time_zone=configured or "Etc/UTC",
                name=None,
            )
        currency = str(body.get("default_currency") or "").upper()
        if not currency:
            raise PermanentError("stripe: account has no default_currency", platform=PLATFORM)
        dashboard = (body.get("settings") or {}).get("dashboard") or {}
        profile = body.get("business_profile") or {}
        return Account(
            account_id=str(self.ctx.account_id),
            currency=currency,
            time_zone=configured or str(dashboard.get("timezone") or "Etc/UTC"),
            name=dashboard.get("display_name") or profile.get("name"),
        )

    def _pages(self, path: str, params: dict[str, Any], what: str) -> Iterator[dict[str, Any]]:
        """Every item of a list endpoint, newest first, page by page. Stops at an empty page
        whatever ``has_more`` says, and fails the job when the walk repeats itself (a cursor
        or an id seen again, an item newer than one before it) or passes ``max_pages``.
        Memory: one cursor per page, bounded by ``max_pages``."""
        params = {**params, "limit": PAGE_LIMIT}
        cursors: set[str] = set()
        previous_ids: set[str] = set()
        oldest: int | None = None
        done = 0
        for page_number in range(1, self.max_pages + 2):
            if page_number > self.max_pages:
                raise PermanentError(
                    f"stripe: {path} still had more after {self.max_pages} pages of {PAGE_LIMIT} "
                    f"{what} in one window; stopped (an endless pagination?)",
                    platform=PLATFORM,
                )
            page = self._get(path, params)
            rows = page.get("data") or []
            ids = [str(row.get("id")) for row in rows if isinstance(row, dict)]
            if len(ids) != len(rows):
                raise TransientError(
                    f"stripe: {path} answered a list item that is not an object", platform=PLATFORM
                )
            for row in rows:
                created = row.get("created")
                if isinstance(created, int) and oldest is not None and created > oldest:
                    self._loop(path, page_number, f"an item newer than one before it ({row['id']})")
                if isinstance(created, int):
                    oldest = created
            if previous_ids.intersection(ids) or len(set(ids)) != len(ids):
                self._loop(path, page_number, "items of the page before again")
            yield from rows
            done += len(rows)
            if self.ctx.progress is not None:
                self.ctx.progress(what, done, None)
            # An empty page ends the walk even if has_more says otherwise.
            if not page.get("has_more") or not rows:
                return
            cursor = ids[-1]
            if cursor in cursors:
                self._loop(path, page_number, f"starting_after={cursor} again")
            cursors.add(cursor)
            previous_ids = set(ids)
            params = {**params, "starting_after": cursor}

    @staticmethod
    def _loop(path: str, page_number: int, what: str) -> None:
        raise PermanentError(
            f"stripe: {path} pagination repeats itself (page {page_number} brought {what}); stopped",
            platform=PLATFORM,
        )

    def charges(self, since: datetime, until: datetime) -> Iterator[Charge]:
        params: dict[str, Any] = {
            "created[gte]": _ceil_epoch(since),
            "created[lt]": _ceil_epoch(until),
        }
        for row in self._pages("/charges", params, "charges"):
            yield parse_charge(row)

    def refunded_charges(self, since: datetime, until: datetime) -> Iterator[Charge]:
        """Charges with a refund created in [since, until), read from ``/v1/refunds`` with
        each refund's charge expanded (its ``amount_refunded`` sums all its refunds so far).
        Refunds without a charge (e.g. of a customer balance) are skipped. A key that may
        not list refunds logs a warning and yields nothing: the charges still sync."""
        params: dict[str, Any] = {
            "created[gte]": _ceil_epoch(since),
            "created[lt]": _ceil_epoch(until),
            "expand[]": "data.charge",
        }
        try:
            for refund in self._pages("/refunds", params, "refunds"):
                charge = refund.get("charge")
                if isinstance(charge, dict):
                    yield parse_charge(charge)
        except MissingPermission as exc:
            log.warning(
                "stripe: account %s: the key cannot list refunds (%s); refunds made after a "
                "charge's lookback are not seen until it can (give the key Read on Refunds)",
                self.ctx.account_id,
                exc,
            )
