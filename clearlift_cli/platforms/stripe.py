"""Stripe: the account's currency and time zone, and charges created in a time range.

The connection's "access token" is the account's secret key, sent as a Bearer token; it
does not expire. Amounts stay in the currency's minor unit exactly as Stripe gives them
(zero-decimal currencies such as JPY have none: 500 JPY is 500).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

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
    TokenGrant,
)
from clearlift_cli.platforms.http import HttpClient, Response
from clearlift_cli.redact import redact

PLATFORM = "stripe"
PAGE_LIMIT = 100
# Stripe sends Retry-After on most 429s; without it a short pause usually suffices.
DEFAULT_RATE_LIMIT_WAIT = 2.0

UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Stripe echoes a masked key ("sk_test_****1234"); even the masked tail is not ours to show.
_KEY_SHAPED = re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_\S*|\*{2,}\S*")


def _message(error: dict[str, Any], status: int) -> str:
    text = str(error.get("message") or f"HTTP {status}")
    return redact(_KEY_SHAPED.sub(redaction.MASK, text))


def classify(response: Response, body: Any) -> None:
    """Raise the ``clearlift_cli.errors`` exception for a Stripe error answer.

    401 is always a dead key; ``Stripe-Should-Retry: false`` is final; 429 (or code
    ``rate_limit``) waits ``Retry-After``; 409, 5xx or ``Stripe-Should-Retry: true`` retry."""
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
    if should_retry == "false":
        raise PermanentError(message, platform=PLATFORM)
    if status == 429 or error.get("code") == "rate_limit":
        raise RateLimited(
            message, retry_after=response.retry_after(DEFAULT_RATE_LIMIT_WAIT),
            scope="account", platform=PLATFORM,
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
    """One wire charge as a ``Charge`` (amounts in minor units, untouched)."""
    try:
        customer = row.get("customer")
        if isinstance(customer, dict):  # an expanded customer object
            customer = customer.get("id")
        return Charge(
            charge_id=str(row["id"]),
            amount_minor=to_int(row["amount"]),
            amount_refunded_minor=to_int(row.get("amount_refunded") or 0),
            currency=str(row["currency"]).upper(),
            status=str(row.get("status") or ""),
            paid=bool(row.get("paid")),
            customer_id=str(customer) if customer else None,
            created_at=datetime.fromtimestamp(to_int(row["created"]), UTC),
        )
    except KeyError as exc:
        raise PermanentError(f"stripe: charge without {exc.args[0]!r}", platform=PLATFORM) from None
    except ValueError as exc:
        raise PermanentError(f"stripe: charge with a bad number: {exc}", platform=PLATFORM) from None


class StripeClient(RevenueClient):
    """The charges of one Stripe account, read with its secret key."""

    platform = PLATFORM
    # Backfills commit a month at a time.
    max_window_days = 31
    default_lookback_days = 3
    attribution_window_days = None

    def __init__(self, ctx: PlatformContext, credentials: Credentials):
        super().__init__(ctx, credentials)
        redaction.register(credentials.access_token)
        self.base = f"{ctx.settings.stripe_url}/v1"
        self.http = HttpClient(
            platform=PLATFORM, clock=ctx.clock, timeout=ctx.settings.http_timeout,
            session=ctx.session,
        )

    def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.http.request(
            "GET", f"{self.base}{path}", classify=classify, params=params,
            headers={"Authorization": f"Bearer {self.credentials.access_token}"},
        )
        return body if isinstance(body, dict) else {}

    def account(self) -> Account:
        body = self._get("/account")
        currency = str(body.get("default_currency") or "").upper()
        if not currency:
            raise PermanentError("stripe: account has no default_currency", platform=PLATFORM)
        dashboard = (body.get("settings") or {}).get("dashboard") or {}
        profile = body.get("business_profile") or {}
        return Account(
            account_id=str(self.ctx.account_id),
            currency=currency,
            time_zone=str(dashboard.get("timezone") or "Etc/UTC"),
            name=dashboard.get("display_name") or profile.get("name"),
        )

    def charges(self, since: datetime, until: datetime) -> Iterator[Charge]:
        params: dict[str, Any] = {
            "limit": PAGE_LIMIT,
            "created[gte]": _ceil_epoch(since),
            "created[lt]": _ceil_epoch(until),
        }
        done = 0
        while True:
            page = self._get("/charges", params)
            rows = page.get("data") or []
            for row in rows:
                yield parse_charge(row)
            done += len(rows)
            if self.ctx.progress is not None:
                self.ctx.progress("charges", done, None)
            # An empty page ends the walk even if has_more says otherwise (no endless loop).
            if not page.get("has_more") or not rows:
                return
            params = {**params, "starting_after": rows[-1]["id"]}


CLIENT = StripeClient


def refresh_token(ctx: PlatformContext, credentials: Credentials) -> TokenGrant | None:
    """Stripe secret keys do not expire: nothing to refresh."""
    return None
