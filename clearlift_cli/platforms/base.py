"""The one interface every platform module implements.

A platform module (registered in ``registry.py``) defines a subclass of ``AdsClient``
(campaigns + daily metrics) or ``RevenueClient`` (charges) and, when its tokens expire, a
``refresh_token`` function (``RefreshToken``), and raises only the errors of
``clearlift_cli.errors``:
``TransientError`` (retry with backoff), ``RateLimited`` (wait ``retry_after`` without
using up an attempt), ``TokenExpired`` (refresh once, then retry), ``AuthRevoked`` (the user
must reconnect), ``AccountUnavailable`` (this one account cannot be synced; a connection
reaching several, see ``accounts``, syncs the others) or ``PermanentError`` (fail now). Rows are typed; money is integer micros
(ads) or integer minor units (Stripe) and ``Decimal`` for conversions, never a float.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar

from clearlift_cli.settings import Settings
from clearlift_cli.timeutil import SYSTEM_CLOCK, Clock


@dataclass(frozen=True)
class Credentials:
    """Decrypted tokens of one connection. ``repr`` never shows them."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None


@dataclass(frozen=True)
class TokenGrant:
    """What a token refresh returned. ``refresh_token`` is None when the platform kept
    the old one; ``expires_at`` None when the new token does not expire."""

    access_token: str = field(repr=False)
    expires_at: datetime | None
    refresh_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Account:
    account_id: str
    currency: str  # ISO 4217, upper case
    time_zone: str  # IANA name, e.g. "America/New_York"
    name: str | None = None


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    campaign_name: str | None
    status: str | None
    objective: str | None = None
    channel: str | None = None
    budget_micros: int | None = None  # daily (or the platform's) budget, account currency


@dataclass(frozen=True)
class DailyMetric:
    campaign_id: str
    metric_date: date  # the day in the account's own time zone, as the platform reports it
    impressions: int = 0
    clicks: int = 0
    spend_micros: int = 0
    conversions: Decimal = Decimal(0)
    conversion_value_micros: int = 0


@dataclass(frozen=True)
class Charge:
    charge_id: str
    amount_minor: int
    amount_refunded_minor: int
    currency: str  # upper case
    status: str
    paid: bool
    customer_id: str | None
    created_at: datetime  # aware UTC
    # What was captured: an authorisation not (yet) captured is not revenue, and a partial
    # capture is revenue only for the captured part. None: the platform did not say
    # (``amount_minor`` then stands for it).
    amount_captured_minor: int | None = None
    captured: bool = True


@dataclass(frozen=True)
class PlatformContext:
    """Everything a client needs besides the connection's tokens."""

    settings: Settings
    account_id: str
    connection_settings: Mapping[str, Any] = field(default_factory=dict)
    clock: Clock = SYSTEM_CLOCK
    # Called with (phase, done, total) so the job row can show live progress.
    progress: Callable[[str, int, int | None], None] | None = None
    # Optional requests.Session to reuse (tests may pass one with a custom adapter).
    session: Any = None


class PlatformClient(ABC):
    platform: ClassVar[str]
    # Longest date window one request/slice may cover (None: no limit). The consumer
    # slices longer windows and commits each slice on its own, so a failure loses one
    # slice, not the whole backfill.
    max_window_days: ClassVar[int | None] = None
    # Default re-read lookback for incremental jobs, in days.
    default_lookback_days: ClassVar[int] = 3
    # Where data keeps settling for weeks (Facebook: 28 days), once a day an incremental
    # job re-reads this many days instead of the lookback. None: never.
    attribution_window_days: ClassVar[int | None] = None

    def __init__(self, ctx: PlatformContext, credentials: Credentials):
        self.ctx = ctx
        self.credentials = credentials

    @abstractmethod
    def account(self) -> Account:
        """The account's currency and time zone (and name when the platform gives it)."""

    def accounts(self) -> list[str]:
        """The accounts this connection syncs, by the id their warehouse rows carry: its own
        account (a list of one), unless one login reaches several (a Google manager and its
        selected client accounts). The consumer syncs each through ``for_account``; one
        failing with ``AccountUnavailable`` or a transient error does not stop the others."""
        return [self.ctx.account_id]

    def for_account(self, account_id: str) -> PlatformClient:
        """The client of one of ``accounts()`` (this one for the connection's own)."""
        return self


class AdsClient(PlatformClient):
    kind: ClassVar[str] = "ads"

    @abstractmethod
    def campaigns(self) -> Iterator[Campaign]:
        """Every campaign of the account (all pages)."""

    @abstractmethod
    def daily_metrics(self, since: date, until: date) -> Iterator[DailyMetric]:
        """Daily campaign metrics for ``since``..``until`` inclusive (account time zone)."""


class RevenueClient(PlatformClient):
    kind: ClassVar[str] = "revenue"

    @abstractmethod
    def charges(self, since: datetime, until: datetime) -> Iterator[Charge]:
        """Charges created in [since, until) (all pages)."""

    def refunded_charges(self, since: datetime, until: datetime) -> Iterator[Charge]:
        """The charges, as they are now, that had a refund created in [since, until),
        whenever the charge itself was created (a repeated charge may come more than once):
        how a refund made weeks after the sale reaches the stored charge. Default: none."""
        return iter(())


# A module-level function with this signature refreshes a token; it returns None when the
# platform's tokens do not expire (nothing to do).
RefreshToken = Callable[[PlatformContext, Credentials], "TokenGrant | None"]
