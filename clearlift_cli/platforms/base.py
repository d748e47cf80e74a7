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

Each kind of client also owns how a slice of a job reaches the warehouse
(``load_slice``): ads write campaigns and daily metrics, revenue writes charges and
rebuilds the daily revenue of whole local days. The consumer makes one call per slice and
account and knows no kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from clearlift_cli.errors import UnknownTimeZone
from clearlift_cli.platforms import registry
from clearlift_cli.settings import Settings
from clearlift_cli.timeutil import SYSTEM_CLOCK, UTC, Clock, date_runs

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from clearlift_cli.models import SyncWindow
    from clearlift_cli.warehouse.base import RowOwner, Warehouse


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
    # The connection being synced (named in configuration errors); None outside a job.
    connection_id: str | None = None


@dataclass(frozen=True)
class Slice:
    """One slice of a job for one account: the days to read, and whose rows they become."""

    owner: RowOwner  # the organisation, connection and account every row carries
    account: Account
    since: date  # first day, inclusive
    until: date  # last day, inclusive
    window: SyncWindow  # the job's window (its end exclusive): nothing outside it is read
    first: bool  # the job's first slice (an ads slice writes the campaigns with it)
    synced_at: datetime


def time_zone(name: str, *, platform: str, connection_id: str | None, what: str) -> ZoneInfo:
    """The IANA zone ``name``; ``UnknownTimeZone`` naming the zone, where it came from
    (``what``) and the connection when it is not one. One policy wherever clearlift computes
    days with a zone: the job fails at once, and is not retried (see docs/design.md)."""
    from zoneinfo import ZoneInfo  # here: status imports the clients for their defaults

    try:
        return ZoneInfo(str(name))
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        where = f"connection {connection_id}: " if connection_id else ""
        raise UnknownTimeZone(
            f"{platform}: {where}{what} {str(name)[:64]!r} is not an IANA time zone name "
            '(e.g. "America/New_York"); the job fails until it is corrected',
            platform=platform,
        ) from None


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
    # The progress phase of ``load_after_slices`` (run once per account after every slice
    # is written); None: the kind has nothing to do then.
    after_slices_phase: ClassVar[str | None] = None

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

    @abstractmethod
    def load_slice(self, part: Slice, warehouse: Warehouse, *, write_seq: int | None = None) -> int:
        """Read ``part`` from the platform and write it to ``warehouse`` in one transaction,
        fenced by ``write_seq`` (the delivery's claim sequence); returns the rows written. A
        single-writer warehouse gets the slice read whole before its lock is taken, so
        concurrent jobs do not wait on each other's HTTP calls; the others stream it while
        it is fetched (flat memory)."""

    def load_after_slices(
        self,
        owner: RowOwner,
        account: Account,
        window: SyncWindow,
        warehouse: Warehouse,
        *,
        write_seq: int | None = None,
    ) -> int:
        """What the kind writes once every slice of the job is (see ``after_slices_phase``),
        fenced by ``write_seq`` like ``load_slice``; the rows written."""
        return 0


class AdsClient(PlatformClient):
    kind: ClassVar[str] = registry.ADS

    def load_slice(self, part: Slice, warehouse: Warehouse, *, write_seq: int | None = None) -> int:
        """The slice's daily metrics, and with the job's first slice every campaign."""
        campaigns: Iterable[Campaign] = self.campaigns() if part.first else iter(())
        metrics: Iterable[DailyMetric] = self.daily_metrics(part.since, part.until)
        if warehouse.single_writer:
            campaigns, metrics = list(campaigns), list(metrics)
        owner, account, synced_at = part.owner, part.account, part.synced_at
        with warehouse.transaction(write_seq=write_seq) as w:
            n = w.upsert_campaigns(self.platform, owner, account, campaigns, synced_at) if part.first else 0
            return n + w.upsert_daily_metrics(self.platform, owner, account, metrics, synced_at)

    @abstractmethod
    def campaigns(self) -> Iterator[Campaign]:
        """Every campaign of the account (all pages)."""

    @abstractmethod
    def daily_metrics(self, since: date, until: date) -> Iterator[DailyMetric]:
        """Daily campaign metrics for ``since``..``until`` inclusive (account time zone)."""


class RevenueClient(PlatformClient):
    kind: ClassVar[str] = registry.REVENUE
    after_slices_phase: ClassVar[str | None] = "late refunds"

    def _zone(self, account: Account, owner: RowOwner) -> ZoneInfo:
        return time_zone(
            account.time_zone,
            platform=self.platform,
            connection_id=owner.connection_id,
            what="the account's time zone",
        )

    def load_slice(self, part: Slice, warehouse: Warehouse, *, write_seq: int | None = None) -> int:
        """The charges of the slice's days, widened to whole days in the account's time zone
        (so each revenue row rebuilt sums every charge of its day, not just those in the
        window), and the daily revenue of those days rebuilt."""
        tz = self._zone(part.account, part.owner)
        window = part.window
        start = datetime.combine(part.since, time.min, window.start.tzinfo)
        end = datetime.combine(part.until + timedelta(days=1), time.min, window.start.tzinfo)
        start, end = max(start, window.start), min(end, window.end)
        first_day = start.astimezone(tz).date()
        last_day = (end - timedelta(microseconds=1)).astimezone(tz).date()
        start = _local_midnight(first_day, tz)
        end = min(self.ctx.clock.now(), _local_midnight(last_day + timedelta(days=1), tz))
        charges: Iterable[Charge] = self.charges(start, end)
        if warehouse.single_writer:
            charges = list(charges)
        owner, account, synced_at = part.owner, part.account, part.synced_at
        with warehouse.transaction(write_seq=write_seq) as w:
            n = w.upsert_charges(owner, account, charges, synced_at)
            return n + w.rebuild_daily_revenue(owner, account, first_day, last_day, synced_at)

    def load_after_slices(
        self,
        owner: RowOwner,
        account: Account,
        window: SyncWindow,
        warehouse: Warehouse,
        *,
        write_seq: int | None = None,
    ) -> int:
        """Refunds created in the job's window on charges created before it (a refund made
        weeks after the sale): those charges updated where they are stored, and the revenue
        of their days rebuilt. Charges created in the window were just read afresh. Fenced
        as the slices are: a delivery whose lease was taken over writes nothing."""
        self._zone(account, owner)
        clock = self.ctx.clock
        until = min(window.end, clock.now())
        if until <= window.start:
            return 0
        synced_at = clock.now()
        charges: Iterable[Charge] = (
            ch for ch in self.refunded_charges(window.start, until) if ch.created_at < window.start
        )
        if warehouse.single_writer:
            charges = list(charges)
        with warehouse.transaction(write_seq=write_seq) as w:
            n, days = w.update_stored_charges(owner, account, charges, synced_at)
            for first, last in date_runs(days):
                n += w.rebuild_daily_revenue(owner, account, first, last, synced_at)
        return n

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


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The instant ``day`` starts in ``tz``."""
    return datetime.combine(day, time.min, tz).astimezone(UTC)
