"""The warehouse tables, declared once for every backend, and the rows that fill them.

Each table is a list of columns with a logical kind; a backend maps kinds to its own
types (``bigint`` is PostgreSQL BIGINT / SQLite INTEGER, ``numeric`` is NUMERIC / exact
decimal TEXT, ...). No kind is ever a float. The row builders turn the platform row types
into tuples in column order, holding Python values (``int``, ``Decimal``, ``date``, aware
UTC ``datetime``, ``bool``, ``str``/``None``), and refuse floats where money goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clearlift_cli.money import to_decimal
from clearlift_cli.platforms import registry
from clearlift_cli.platforms.base import Account, Campaign, Charge, DailyMetric

if TYPE_CHECKING:
    from clearlift_cli.warehouse.base import RowOwner

# Bump when TABLES change; init_schema adds what an older warehouse lacks.
# 2: stripe_charges.amount_captured_minor and captured.
# 3: clearlift_write_fence (writes ordered by the store's claim sequence).
SCHEMA_VERSION = 3
META_TABLE = "clearlift_warehouse_meta"
# One row per connection: the claim sequence of the latest delivery that wrote its rows.
FENCE_TABLE = "clearlift_write_fence"

KINDS = ("text", "bigint", "numeric", "date", "timestamptz", "boolean")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    not_null: bool = False


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    indexes: tuple[Index, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def key_positions(self) -> tuple[int, ...]:
        names = self.column_names
        return tuple(names.index(k) for k in self.key)

    @property
    def value_columns(self) -> tuple[str, ...]:
        """Columns an upsert overwrites (everything outside the key)."""
        return tuple(n for n in self.column_names if n not in self.key)

    @property
    def compared_columns(self) -> tuple[str, ...]:
        """Columns whose change makes a row worth rewriting: all values but the time of
        the sync, so a replay of unchanged rows writes nothing."""
        return tuple(n for n in self.value_columns if n != "last_synced_at")

    def kind_of(self, column: str) -> str:
        for c in self.columns:
            if c.name == column:
                return c.kind
        raise KeyError(column)


def _owner_columns() -> tuple[Column, ...]:
    return (
        Column("organization_id", "text", True),
        Column("connection_id", "text", True),
        Column("account_id", "text", True),
    )


def _campaigns(name: str) -> Table:
    return Table(
        name=name,
        columns=_owner_columns()
        + (
            Column("campaign_id", "text", True),
            Column("campaign_name", "text"),
            Column("status", "text"),
            Column("objective", "text"),
            Column("channel", "text"),
            Column("budget_micros", "bigint"),
            Column("currency", "text", True),
            Column("last_synced_at", "timestamptz", True),
        ),
        key=("organization_id", "account_id", "campaign_id"),
        indexes=(Index(f"{name}_connection_idx", ("connection_id",)),),
    )


def _daily_metrics(name: str) -> Table:
    return Table(
        name=name,
        columns=_owner_columns()
        + (
            Column("campaign_id", "text", True),
            Column("metric_date", "date", True),
            Column("impressions", "bigint", True),
            Column("clicks", "bigint", True),
            Column("spend_micros", "bigint", True),
            Column("conversions", "numeric", True),
            Column("conversion_value_micros", "bigint", True),
            Column("currency", "text", True),
            Column("last_synced_at", "timestamptz", True),
        ),
        key=("organization_id", "account_id", "campaign_id", "metric_date"),
        indexes=(
            # Dashboards read one organisation's days, across or within accounts.
            Index(f"{name}_org_date_idx", ("organization_id", "metric_date")),
            Index(f"{name}_org_account_date_idx", ("organization_id", "account_id", "metric_date")),
        ),
    )


def _charges(name: str) -> Table:
    return Table(
        name=name,
        columns=_owner_columns()
        + (
            Column("charge_id", "text", True),
            Column("amount_minor", "bigint", True),
            Column("amount_refunded_minor", "bigint", True),
            Column("currency", "text", True),
            Column("status", "text", True),
            Column("paid", "boolean", True),
            Column("customer_id", "text"),
            Column("created_at", "timestamptz", True),
            Column("charge_date", "date", True),
            Column("last_synced_at", "timestamptz", True),
            # Added in schema 2 (NULL on older rows: count them as captured in full).
            Column("amount_captured_minor", "bigint"),
            Column("captured", "boolean"),
        ),
        key=("organization_id", "account_id", "charge_id"),
        indexes=(
            # rebuild_daily_revenue aggregates one account's days.
            Index(f"{name}_org_account_date_idx", ("organization_id", "account_id", "charge_date")),
            Index(f"{name}_org_created_idx", ("organization_id", "created_at")),
        ),
    )


def _daily_revenue(name: str) -> Table:
    return Table(
        name=name,
        columns=_owner_columns()
        + (
            Column("revenue_date", "date", True),
            Column("currency", "text", True),
            Column("gross_minor", "bigint", True),
            Column("refunded_minor", "bigint", True),
            Column("net_minor", "bigint", True),
            Column("charge_count", "bigint", True),
            Column("last_synced_at", "timestamptz", True),
        ),
        key=("organization_id", "account_id", "revenue_date", "currency"),
        indexes=(Index(f"{name}_org_date_idx", ("organization_id", "revenue_date")),),
    )


# The tables of each kind of platform, in the order its registry entry names them.
_SHAPES = {registry.ADS: (_campaigns, _daily_metrics), registry.REVENUE: (_charges, _daily_revenue)}

TABLES: dict[str, Table] = {
    name: shape(name)
    for platform in registry.platforms()
    for name, shape in zip(platform.tables, _SHAPES[platform.kind], strict=True)
}
# The revenue tables the warehouse's charge operations write (one revenue platform so far;
# a second would pass its platform to those operations, as the ads ones do).
(_REVENUE,) = registry.of_kind(registry.REVENUE)
STRIPE_CHARGES, STRIPE_DAILY_REVENUE = (TABLES[name] for name in _REVENUE.tables)


def table(name: str) -> Table:
    """The declared table called ``name``; ValueError for anything else (no SQL injection
    through a table name)."""
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown warehouse table {name!r}") from None


def campaigns_table(platform: str) -> Table:
    return table(_ad_platform(platform).tables[0])


def daily_metrics_table(platform: str) -> Table:
    return table(_ad_platform(platform).tables[1])


def _ad_platform(platform: str) -> registry.Platform:
    found = registry.find(platform)
    if found is None or found.kind != registry.ADS:
        known = ", ".join(p.name for p in registry.of_kind(registry.ADS))
        raise ValueError(f"unknown ad platform {platform!r} (expected one of {known})")
    return found


# --- values ---------------------------------------------------------------------------------


def integer(value: object, field: str) -> int:
    """An exact integer (money, counts). Floats are refused: they may already be corrupt."""
    if type(value) is int:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    raise TypeError(f"{field} must be an integer, not {type(value).__name__} {value!r}")


def optional_integer(value: object, field: str) -> int | None:
    return None if value is None else integer(value, field)


def exact_decimal(value: object, field: str) -> Decimal:
    """An exact decimal (conversions); floats are refused like in ``integer``."""
    if isinstance(value, float):
        raise TypeError(f"{field} must be a Decimal, not float {value!r}")
    try:
        return to_decimal(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


def utc(value: datetime, field: str) -> datetime:
    """An aware UTC datetime; naive values are taken as UTC."""
    if not isinstance(value, datetime):
        raise TypeError(f"{field} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def a_date(value: object, field: str) -> date:
    if isinstance(value, datetime) or not isinstance(value, date):
        raise TypeError(f"{field} must be a date, not {type(value).__name__}")
    return value


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


# --- rows, in column order ------------------------------------------------------------------

Row = tuple


def campaign_rows(
    owner: RowOwner, account: Account, rows: Iterable[Campaign], synced_at: datetime
) -> Iterator[Row]:
    synced = utc(synced_at, "synced_at")
    currency = account.currency.upper()
    head = (owner.organization_id, owner.connection_id, owner.account_id)
    for c in rows:
        yield head + (
            str(c.campaign_id),
            c.campaign_name,
            c.status,
            c.objective,
            c.channel,
            optional_integer(c.budget_micros, "budget_micros"),
            currency,
            synced,
        )


def daily_metric_rows(
    owner: RowOwner, account: Account, rows: Iterable[DailyMetric], synced_at: datetime
) -> Iterator[Row]:
    synced = utc(synced_at, "synced_at")
    currency = account.currency.upper()
    head = (owner.organization_id, owner.connection_id, owner.account_id)
    for m in rows:
        # The checks of integer(), exact_decimal() and a_date(), inline for the values
        # that are already right (nearly all): this loop runs for every row written.
        imp, clicks, spend, value = m.impressions, m.clicks, m.spend_micros, m.conversion_value_micros
        conv, day = m.conversions, m.metric_date
        yield head + (
            str(m.campaign_id),
            day if type(day) is date else a_date(day, "metric_date"),
            imp if type(imp) is int else integer(imp, "impressions"),
            clicks if type(clicks) is int else integer(clicks, "clicks"),
            spend if type(spend) is int else integer(spend, "spend_micros"),
            conv if type(conv) is Decimal and conv.is_finite() else exact_decimal(conv, "conversions"),
            value if type(value) is int else integer(value, "conversion_value_micros"),
            currency,
            synced,
        )


def charge_rows(
    owner: RowOwner, account: Account, rows: Iterable[Charge], synced_at: datetime
) -> Iterator[Row]:
    synced = utc(synced_at, "synced_at")
    tz = zone(account.time_zone)
    head = (owner.organization_id, owner.connection_id, owner.account_id)
    for ch in rows:
        created = utc(ch.created_at, "created_at")
        yield head + (
            str(ch.charge_id),
            integer(ch.amount_minor, "amount_minor"),
            integer(ch.amount_refunded_minor, "amount_refunded_minor"),
            ch.currency.upper(),
            ch.status,
            bool(ch.paid),
            ch.customer_id,
            created,
            # The day the charge happened where the account lives, not in UTC.
            created.astimezone(tz).date(),
            synced,
            optional_integer(ch.amount_captured_minor, "amount_captured_minor"),
            bool(ch.captured),
        )
