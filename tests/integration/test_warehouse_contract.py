"""One contract for every warehouse backend: a real SQLite file and a real PostgreSQL
schema pass the same tests, plus a few tests of what only one backend can do wrong."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from clearlift_cli.errors import ConfigError, StaleWrite, WarehouseError
from clearlift_cli.platforms.base import Account, Campaign, Charge, DailyMetric
from clearlift_cli.warehouse import RowOwner, open_warehouse
from clearlift_cli.warehouse.base import CHUNK_SIZE
from clearlift_cli.warehouse.schema import SCHEMA_VERSION
from tests.helpers import pg_policies, pg_row_security, warehouse_query

UTC = UTC
T1 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
T2 = T1 + timedelta(hours=1)
OWNER = RowOwner("org-1", "org-1-google-123", "123")
ACCOUNT = Account("123", "USD", "America/New_York", "Main")
BEYOND_FLOAT = 9_007_199_254_740_993  # 2**53 + 1: a float turns it into ...992
STRIPE_OWNER = RowOwner("org-1", "org-1-stripe-acct_1", "acct_1")
STRIPE_ACCOUNT = Account("acct_1", "USD", "America/New_York")

AD_TABLES = [
    f"{p}_ads_{kind}" for p in ("google", "facebook", "tiktok") for kind in ("campaigns", "daily_metrics")
]
ALL_TABLES = AD_TABLES + ["stripe_charges", "stripe_daily_revenue"]


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def wh(warehouse_url):
    warehouse = open_warehouse(warehouse_url)
    warehouse.init_schema()
    yield warehouse
    warehouse.close()


def metric(campaign: str, day: date, **values) -> DailyMetric:
    return DailyMetric(campaign_id=campaign, metric_date=day, **values)


def metric_dict(m: DailyMetric, synced: datetime, owner: RowOwner = OWNER, currency="USD") -> dict:
    return {
        "organization_id": owner.organization_id,
        "connection_id": owner.connection_id,
        "account_id": owner.account_id,
        "campaign_id": m.campaign_id,
        "metric_date": m.metric_date,
        "impressions": m.impressions,
        "clicks": m.clicks,
        "spend_micros": m.spend_micros,
        "conversions": m.conversions,
        "conversion_value_micros": m.conversion_value_micros,
        "currency": currency,
        "last_synced_at": synced,
    }


def days(start: date, n: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(n)]


# --- schema ----------------------------------------------------------------------------------


def test_init_schema_twice_is_a_no_op(wh, warehouse_url):
    with wh.transaction() as w:
        w.upsert_campaigns("google", OWNER, ACCOUNT, [Campaign("c1", "One", "ENABLED")], T1)
    before = wh.fetch_rows("google_ads_campaigns")

    wh.init_schema()
    again = open_warehouse(warehouse_url)
    try:
        again.init_schema()
    finally:
        again.close()

    assert wh.schema_version() == SCHEMA_VERSION
    assert warehouse_query(warehouse_url, "SELECT id, schema_version FROM clearlift_warehouse_meta") == [
        (1, SCHEMA_VERSION)
    ]
    assert wh.fetch_rows("google_ads_campaigns") == before
    assert all(wh.count_rows(t) == 0 for t in ALL_TABLES if t != "google_ads_campaigns")


def test_schema_stores_money_as_integers_and_never_floats(wh, warehouse_url):
    if warehouse_url.startswith("sqlite"):

        def types(table):
            return {
                r[1]: r[2].upper() for r in warehouse_query(warehouse_url, f'PRAGMA table_info("{table}")')
            }

        integer, exact, day, stamp = "INTEGER", "TEXT", "TEXT", "TEXT"
    else:

        def types(table):
            return dict(
                warehouse_query(
                    warehouse_url,
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = %s",
                    (table,),
                )
            )

        integer, exact, day, stamp = "bigint", "numeric", "date", "timestamp with time zone"

    money = {
        "campaigns": ["budget_micros"],
        "daily_metrics": ["impressions", "clicks", "spend_micros", "conversion_value_micros"],
    }
    for table in AD_TABLES:
        cols = types(table)
        kind = "campaigns" if table.endswith("campaigns") else "daily_metrics"
        assert {c: cols[c] for c in money[kind]} == {c: integer for c in money[kind]}, table
        assert cols["last_synced_at"] == stamp
        if kind == "daily_metrics":
            assert cols["conversions"] == exact
            assert cols["metric_date"] == day
    charges = types("stripe_charges")
    assert [charges[c] for c in ("amount_minor", "amount_refunded_minor", "amount_captured_minor")] == [
        integer
    ] * 3
    assert (charges["created_at"], charges["charge_date"]) == (stamp, day)
    revenue = types("stripe_daily_revenue")
    assert [revenue[c] for c in ("gross_minor", "refunded_minor", "net_minor", "charge_count")] == [
        integer
    ] * 4
    for table in ALL_TABLES:
        for column, declared in types(table).items():
            assert not any(f in declared.lower() for f in ("real", "double", "float", "money")), (
                table,
                column,
                declared,
            )


def test_a_newer_schema_is_refused(wh, warehouse_url):
    warehouse_query(warehouse_url, "UPDATE clearlift_warehouse_meta SET schema_version = 99")
    assert wh.schema_version() == 99
    with pytest.raises(WarehouseError, match="newer"):
        wh.init_schema()


# --- ads rows --------------------------------------------------------------------------------


def test_campaigns_and_metrics_round_trip_exactly(wh):
    campaigns = [
        Campaign("c1", "Brand — Été", "ENABLED", "SALES", "SEARCH", BEYOND_FLOAT),
        Campaign("c2", None, None),
    ]
    metrics = [
        metric(
            "c1",
            date(2024, 4, 30),
            impressions=BEYOND_FLOAT,
            clicks=12,
            spend_micros=BEYOND_FLOAT,
            conversions=Decimal("2.5"),
            conversion_value_micros=14_350_001,
        ),
        metric("c1", date(2024, 5, 1), conversions=Decimal("0.1234567890123456789"), spend_micros=1),
        metric("c2", date(2024, 5, 1)),
    ]
    with wh.transaction() as w:
        assert w.upsert_campaigns("google", OWNER, ACCOUNT, iter(campaigns), T1) == 2
        assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, iter(metrics), T1) == 3

    assert wh.fetch_rows("google_ads_campaigns") == [
        {
            "organization_id": "org-1",
            "connection_id": "org-1-google-123",
            "account_id": "123",
            "campaign_id": "c1",
            "campaign_name": "Brand — Été",
            "status": "ENABLED",
            "objective": "SALES",
            "channel": "SEARCH",
            "budget_micros": BEYOND_FLOAT,
            "currency": "USD",
            "last_synced_at": T1,
        },
        {
            "organization_id": "org-1",
            "connection_id": "org-1-google-123",
            "account_id": "123",
            "campaign_id": "c2",
            "campaign_name": None,
            "status": None,
            "objective": None,
            "channel": None,
            "budget_micros": None,
            "currency": "USD",
            "last_synced_at": T1,
        },
    ]
    rows = wh.fetch_rows("google_ads_daily_metrics")
    assert rows == [metric_dict(m, T1) for m in metrics]
    assert type(rows[0]["spend_micros"]) is int and rows[0]["spend_micros"] == BEYOND_FLOAT
    assert isinstance(rows[0]["conversions"], Decimal) and str(rows[0]["conversions"]) == "2.5"
    assert rows[1]["conversions"] == Decimal("0.1234567890123456789")
    assert wh.count_rows("facebook_ads_daily_metrics") == 0  # the platform picks the table


def test_replaying_the_same_rows_changes_nothing(wh):
    metrics = [metric("c1", d, impressions=100, spend_micros=5_000_000) for d in days(date(2024, 5, 1), 3)]
    for _ in range(2):
        with wh.transaction() as w:
            w.upsert_campaigns("tiktok", OWNER, ACCOUNT, [Campaign("c1", "One", "ENABLE")], T1)
            w.upsert_daily_metrics("tiktok", OWNER, ACCOUNT, metrics, T1)
        first = wh.fetch_rows("tiktok_ads_daily_metrics")
    assert wh.count_rows("tiktok_ads_daily_metrics") == 3
    assert wh.count_rows("tiktok_ads_campaigns") == 1
    assert first == [metric_dict(m, T1) for m in metrics]


def test_overlapping_windows_keep_the_newest_values(wh):
    old = [metric("c1", d, clicks=1, spend_micros=1_000_000) for d in days(date(2024, 5, 1), 5)]
    new = [
        metric("c1", d, clicks=2, spend_micros=2_500_000, conversions=Decimal("1.5"))
        for d in days(date(2024, 5, 3), 5)
    ]
    with wh.transaction() as w:
        w.upsert_daily_metrics("facebook", OWNER, ACCOUNT, old, T1)
    with wh.transaction() as w:
        w.upsert_daily_metrics("facebook", OWNER, ACCOUNT, new, T2)

    assert wh.fetch_rows("facebook_ads_daily_metrics") == (
        [metric_dict(m, T1) for m in old[:2]] + [metric_dict(m, T2) for m in new]
    )


def test_a_later_write_wins_whatever_the_clocks_said(wh):
    # No claim sequence (a tool, a test): the last transaction to commit wins, even when
    # its host's clock is an hour behind the host that wrote before it.
    with wh.transaction() as w:
        w.upsert_campaigns("google", OWNER, ACCOUNT, [Campaign("c1", "Old name", "ENABLED")], T2)
    with wh.transaction() as w:
        w.upsert_campaigns("google", OWNER, ACCOUNT, [Campaign("c1", "Renamed", "PAUSED")], T1)
    (row,) = wh.fetch_rows("google_ads_campaigns")
    assert (row["campaign_name"], row["status"], row["last_synced_at"]) == ("Renamed", "PAUSED", T1)


def test_writers_are_ordered_by_claim_sequence_not_by_their_clocks(wh, warehouse_url):
    """Two hosts: A's clock is an hour ahead. A claims first (sequence 1) and writes; B
    claims later (sequence 2) and writes fresher data with its correct, earlier clock.
    B's data stays, and a late write of A (its lease lost) is refused and changes nothing."""
    day = date(2024, 5, 1)
    ahead, right = T1 + timedelta(hours=1), T1 + timedelta(minutes=5)
    with wh.transaction(write_seq=1) as a:
        a.upsert_campaigns("google", OWNER, ACCOUNT, [Campaign("c1", "Old", "ENABLED")], ahead)
        a.upsert_daily_metrics("google", OWNER, ACCOUNT, [metric("c1", day, clicks=1)], ahead)
    with wh.transaction(write_seq=2) as b:
        b.upsert_campaigns("google", OWNER, ACCOUNT, [Campaign("c1", "New", "PAUSED")], right)
        b.upsert_daily_metrics("google", OWNER, ACCOUNT, [metric("c1", day, clicks=9)], right)

    def stored():
        (c,) = wh.fetch_rows("google_ads_campaigns")
        (m,) = wh.fetch_rows("google_ads_daily_metrics")
        return c["campaign_name"], c["last_synced_at"], m["clicks"], m["last_synced_at"]

    assert stored() == ("New", right, 9, right)
    with pytest.raises(StaleWrite, match="claim 1"):
        with wh.transaction(write_seq=1) as late:
            late.upsert_daily_metrics("google", OWNER, ACCOUNT, [metric("c1", day, clicks=1)], ahead)
    assert stored() == ("New", right, 9, right)
    assert warehouse_query(warehouse_url, "SELECT connection_id, write_seq FROM clearlift_write_fence") == [
        (OWNER.connection_id, 2)
    ]
    # The same delivery writes its next slice; another connection is not held up.
    with wh.transaction(write_seq=2) as b:
        assert (
            b.upsert_daily_metrics("google", OWNER, ACCOUNT, [metric("c1", day + timedelta(1))], right) == 1
        )
    other = RowOwner("org-1", "org-1-google-456", "456")
    with wh.transaction(write_seq=1) as w:
        assert w.upsert_daily_metrics("google", other, ACCOUNT, [metric("c1", day)], ahead) == 1
    assert wh.count_rows("google_ads_daily_metrics") == 3


def test_a_replay_rewrites_no_unchanged_row(wh, warehouse_url):
    """Unchanged rows keep the time their values were written; changed rows take the new
    values and time; records count every distinct key written either way."""
    day = date(2024, 5, 1)
    metrics = [metric(f"c{i}", day, clicks=i) for i in range(5)]
    with wh.transaction(write_seq=1) as w:
        assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, metrics, T1) == 5
    changed = metrics[:4] + [metric("c4", day, clicks=40)]
    with wh.transaction(write_seq=2) as w:
        assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, changed, T2) == 5
    rows = wh.fetch_rows("google_ads_daily_metrics")
    assert [(r["clicks"], r["last_synced_at"]) for r in rows] == [
        (0, T1),
        (1, T1),
        (2, T1),
        (3, T1),
        (40, T2),
    ]


def test_duplicate_keys_in_one_batch_last_one_wins(wh):
    day = date(2024, 5, 1)
    batch = [metric("c1", day, clicks=1), metric("c2", day, clicks=7), metric("c1", day, clicks=3)]
    # A key repeated across chunk boundaries too (first and last row of 5,001).
    spread = [metric("c9", day, clicks=10)] + [metric(f"x{i}", day) for i in range(CHUNK_SIZE - 1)]
    spread.append(metric("c9", day, clicks=11))
    with wh.transaction() as w:
        # What was written, not what was sent: each key counts once.
        assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, batch, T1) == 2
        assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, (m for m in spread), T1) == CHUNK_SIZE

    rows = {r["campaign_id"]: r for r in wh.fetch_rows("google_ads_daily_metrics")}
    assert len(rows) == 3 + CHUNK_SIZE - 1
    assert (rows["c1"]["clicks"], rows["c2"]["clicks"], rows["c9"]["clicks"]) == (3, 7, 11)


def test_a_big_upsert_over_days_partly_stored_lands_exactly(wh):
    """Rows campaign by campaign (every chunk spans all days), over days of which some are
    stored already with other values: stored keys take the new values, the rest is added."""
    start = date(2024, 3, 1)
    stored = [metric(f"c{i:03d}", d, clicks=1) for i in range(40) for d in days(start + timedelta(20), 10)]
    with wh.transaction(write_seq=1) as w:
        assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, stored, T1) == 400
    fresh = [metric(f"c{i:03d}", d, clicks=2) for i in range(300) for d in days(start, 40)]
    with wh.transaction(write_seq=2) as w:
        assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, iter(fresh), T2) == 12_000
    rows = wh.fetch_rows("google_ads_daily_metrics")
    assert len(rows) == 12_000
    assert {(r["clicks"], r["last_synced_at"]) for r in rows} == {(2, T2)}


def test_an_exception_inside_a_transaction_leaves_nothing(wh):
    with wh.transaction() as w:
        w.upsert_campaigns("google", OWNER, ACCOUNT, [Campaign("c1", "Kept", "ENABLED")], T1)

    with pytest.raises(RuntimeError, match="boom"):
        with wh.transaction() as w:
            w.upsert_campaigns("google", OWNER, ACCOUNT, [Campaign("c1", "Lost", "PAUSED")], T2)
            w.upsert_daily_metrics("google", OWNER, ACCOUNT, [metric("c1", date(2024, 5, 1))], T2)
            w.upsert_charges(STRIPE_OWNER, STRIPE_ACCOUNT, [charge("ch_1", 100, at=T2)], T2)
            raise RuntimeError("boom")

    (row,) = wh.fetch_rows("google_ads_campaigns")
    assert (row["campaign_name"], row["last_synced_at"]) == ("Kept", T1)
    assert wh.count_rows("google_ads_daily_metrics") == 0
    assert wh.count_rows("stripe_charges") == 0
    # The connection went back clean: the next transaction commits normally.
    with wh.transaction() as w:
        w.upsert_daily_metrics("google", OWNER, ACCOUNT, [metric("c1", date(2024, 5, 1))], T2)
    assert wh.count_rows("google_ads_daily_metrics") == 1


def test_a_float_for_money_is_refused_and_nothing_is_written(wh):
    with pytest.raises(TypeError, match="spend_micros"):
        with wh.transaction() as w:
            w.upsert_daily_metrics(
                "google", OWNER, ACCOUNT, [metric("c1", date(2024, 5, 1), spend_micros=1.5)], T1
            )
    with pytest.raises(TypeError, match="conversions"):
        with wh.transaction() as w:
            w.upsert_daily_metrics(
                "google", OWNER, ACCOUNT, [metric("c1", date(2024, 5, 1), conversions=0.1)], T1
            )
    with pytest.raises(ValueError, match="platform"):
        with wh.transaction() as w:
            w.upsert_campaigns("bing", OWNER, ACCOUNT, [], T1)
    assert wh.count_rows("google_ads_daily_metrics") == 0
    # Past the first chunk: refused while the earlier rows are on their way in.
    many = [metric(f"c{i}", date(2024, 5, 1)) for i in range(CHUNK_SIZE + 10)]
    many.append(metric("late", date(2024, 5, 2), spend_micros=2.5))
    with pytest.raises(TypeError, match="spend_micros"):
        with wh.transaction(write_seq=1) as w:
            w.upsert_daily_metrics("google", OWNER, ACCOUNT, iter(many), T1)
    assert wh.count_rows("google_ads_daily_metrics") == 0
    with wh.transaction(write_seq=2) as w:  # the next transaction works as ever
        assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, many[:-1], T1) == CHUNK_SIZE + 10


def test_a_twenty_thousand_row_generator_is_streamed(wh):
    campaigns = [f"c{i:03d}" for i in range(100)]
    start = date(2024, 1, 1)
    consumed = 0

    def generate():
        nonlocal consumed
        for d in days(start, 200):
            for c in campaigns:
                consumed += 1
                yield metric(
                    c,
                    d,
                    impressions=consumed,
                    spend_micros=consumed * 1_000_001,
                    conversions=Decimal(consumed) / 4,
                )

    with wh.transaction() as w:
        assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, generate(), T1) == 20_000
    assert consumed == 20_000
    assert wh.count_rows("google_ads_daily_metrics") == 20_000
    assert wh.count_rows("google_ads_daily_metrics", organization_id="org-2") == 0
    last = wh.fetch_rows("google_ads_daily_metrics")[-1]
    assert (last["campaign_id"], last["metric_date"]) == ("c099", start + timedelta(days=199))
    assert (last["spend_micros"], last["conversions"]) == (20_000 * 1_000_001, Decimal(5000))


def test_fetch_rows_filters_orders_and_limits(wh):
    other = RowOwner("org-2", "org-2-google-9", "9")
    with wh.transaction() as w:
        w.upsert_campaigns("google", OWNER, ACCOUNT, [Campaign("b", "B", None), Campaign("a", "A", None)], T1)
        w.upsert_campaigns(
            "google", other, Account("9", "eur", "Europe/Paris"), [Campaign("z", "Z", None)], T1
        )

    assert [r["campaign_id"] for r in wh.fetch_rows("google_ads_campaigns")] == ["a", "b", "z"]
    assert [r["campaign_id"] for r in wh.fetch_rows("google_ads_campaigns", organization_id="org-2")] == ["z"]
    assert wh.fetch_rows("google_ads_campaigns", organization_id="org-2")[0]["currency"] == "EUR"
    assert [r["campaign_id"] for r in wh.fetch_rows("google_ads_campaigns", account_id="123", limit=1)] == [
        "a"
    ]
    assert (
        wh.count_rows("google_ads_campaigns"),
        wh.count_rows("google_ads_campaigns", "org-1"),
    ) == (3, 2)
    with pytest.raises(ValueError, match="unknown warehouse table"):
        wh.count_rows("google_ads_campaigns; DROP TABLE x")


def test_transactions_from_many_threads_all_commit(wh):
    errors: list[BaseException] = []

    def job(n: int) -> None:
        owner = RowOwner("org-t", f"org-t-google-{n}", str(n))
        try:
            for part in range(3):
                with wh.transaction() as w:
                    w.upsert_daily_metrics(
                        "google",
                        owner,
                        ACCOUNT,
                        (metric(f"c{i}", date(2024, 5, 1 + part), clicks=n) for i in range(300)),
                        T1,
                    )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert wh.count_rows("google_ads_daily_metrics", organization_id="org-t") == 4 * 3 * 300
    for n in range(4):
        rows = wh.fetch_rows("google_ads_daily_metrics", organization_id="org-t", account_id=str(n))
        assert {r["clicks"] for r in rows} == {n} and len(rows) == 900


# --- stripe ----------------------------------------------------------------------------------


def charge(
    charge_id,
    amount,
    *,
    at,
    refunded=0,
    currency="usd",
    status="succeeded",
    paid=True,
    customer="cus_1",
    captured=None,
):
    """A charge; ``captured``: the amount captured when not all of it (0: not captured)."""
    return Charge(
        charge_id,
        amount,
        refunded,
        currency.upper(),
        status,
        paid,
        customer,
        at,
        amount if captured is None else captured,
        captured is None or captured > 0,
    )


def utc_at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_charges_land_on_the_account_days_and_revenue_is_exact(wh):
    charges = [
        charge("ch_1", 2_000, at=utc_at("2024-01-01T03:00:00")),  # 22:00 on Dec 31 in New York
        charge("ch_2", 10_000, refunded=2_500, at=utc_at("2024-01-01T15:00:00")),  # partial refund
        charge("ch_3", 1_500, currency="jpy", at=utc_at("2024-01-01T16:00:00")),  # zero-decimal yen
        charge("ch_4", 9_999, status="failed", paid=False, at=utc_at("2024-01-01T17:00:00")),
        charge("ch_5", BEYOND_FLOAT, at=utc_at("2024-01-02T12:00:00")),
    ]
    with wh.transaction() as w:
        assert w.upsert_charges(STRIPE_OWNER, STRIPE_ACCOUNT, charges, T1) == 5
        assert (
            w.rebuild_daily_revenue(STRIPE_OWNER, STRIPE_ACCOUNT, date(2023, 12, 31), date(2024, 1, 2), T1)
            == 4
        )

    stored = {r["charge_id"]: r for r in wh.fetch_rows("stripe_charges")}
    assert stored["ch_1"]["charge_date"] == date(2023, 12, 31)
    assert stored["ch_1"]["created_at"] == utc_at("2024-01-01T03:00:00")
    assert stored["ch_2"]["charge_date"] == date(2024, 1, 1)
    assert (stored["ch_3"]["amount_minor"], stored["ch_3"]["currency"]) == (1_500, "JPY")
    assert (stored["ch_4"]["paid"], stored["ch_4"]["status"]) == (False, "failed")
    assert stored["ch_5"]["amount_minor"] == BEYOND_FLOAT

    def revenue(day, currency, gross, refunded, count, synced=T1):
        return {
            "organization_id": "org-1",
            "connection_id": "org-1-stripe-acct_1",
            "account_id": "acct_1",
            "revenue_date": day,
            "currency": currency,
            "gross_minor": gross,
            "refunded_minor": refunded,
            "net_minor": gross - refunded,
            "charge_count": count,
            "last_synced_at": synced,
        }

    expected = [
        revenue(date(2023, 12, 31), "USD", 2_000, 0, 1),
        revenue(date(2024, 1, 1), "JPY", 1_500, 0, 1),
        revenue(date(2024, 1, 1), "USD", 10_000, 2_500, 1),
        revenue(date(2024, 1, 2), "USD", BEYOND_FLOAT, 0, 1),
    ]
    assert wh.fetch_rows("stripe_daily_revenue") == expected

    # Idempotent: replaying the same charges and rebuilding again changes nothing.
    with wh.transaction() as w:
        w.upsert_charges(STRIPE_OWNER, STRIPE_ACCOUNT, charges, T1)
        w.rebuild_daily_revenue(STRIPE_OWNER, STRIPE_ACCOUNT, date(2023, 12, 31), date(2024, 1, 2), T1)
    assert wh.fetch_rows("stripe_daily_revenue") == expected
    assert wh.count_rows("stripe_charges") == 5


def test_revenue_stays_exact_when_syncs_cover_part_of_a_day(wh):
    morning = [charge("ch_a", 1_000, at=utc_at("2024-03-05T14:00:00"))]
    evening = [
        charge("ch_b", 3_000, at=utc_at("2024-03-05T23:30:00")),
        # ch_a again, now partly refunded.
        charge("ch_a", 1_000, refunded=400, at=utc_at("2024-03-05T14:00:00")),
    ]
    before = [charge("ch_old", 700, at=utc_at("2024-03-01T14:00:00"))]
    with wh.transaction() as w:
        w.upsert_charges(STRIPE_OWNER, STRIPE_ACCOUNT, before + morning, T1)
        w.rebuild_daily_revenue(STRIPE_OWNER, STRIPE_ACCOUNT, date(2024, 3, 1), date(2024, 3, 5), T1)
    with wh.transaction() as w:
        # The second sync only saw the evening, but the day is rebuilt from every stored charge.
        w.upsert_charges(STRIPE_OWNER, STRIPE_ACCOUNT, evening, T2)
        assert (
            w.rebuild_daily_revenue(STRIPE_OWNER, STRIPE_ACCOUNT, date(2024, 3, 5), date(2024, 3, 5), T2) == 1
        )

    rows = {r["revenue_date"]: r for r in wh.fetch_rows("stripe_daily_revenue")}
    assert set(rows) == {date(2024, 3, 1), date(2024, 3, 5)}
    assert rows[date(2024, 3, 1)]["last_synced_at"] == T1  # outside the rebuilt range: untouched
    day = rows[date(2024, 3, 5)]
    assert (day["gross_minor"], day["refunded_minor"], day["net_minor"], day["charge_count"]) == (
        4_000,
        400,
        3_600,
        2,
    )
    assert day["last_synced_at"] == T2


def test_revenue_rebuild_is_scoped_to_its_owner(wh):
    other = RowOwner("org-2", "org-2-stripe-acct_1", "acct_1")
    day_charge = [charge("ch_1", 500, at=utc_at("2024-03-05T14:00:00"))]
    with wh.transaction() as w:
        w.upsert_charges(STRIPE_OWNER, STRIPE_ACCOUNT, day_charge, T1)
        w.upsert_charges(other, STRIPE_ACCOUNT, day_charge, T1)
        w.rebuild_daily_revenue(STRIPE_OWNER, STRIPE_ACCOUNT, date(2024, 3, 5), date(2024, 3, 5), T1)
        w.rebuild_daily_revenue(other, STRIPE_ACCOUNT, date(2024, 3, 5), date(2024, 3, 5), T1)
    with wh.transaction() as w:
        w.upsert_charges(
            STRIPE_OWNER, STRIPE_ACCOUNT, [charge("ch_2", 50, at=utc_at("2024-03-05T15:00:00"))], T2
        )
        w.rebuild_daily_revenue(STRIPE_OWNER, STRIPE_ACCOUNT, date(2024, 3, 5), date(2024, 3, 5), T2)
    assert [r["gross_minor"] for r in wh.fetch_rows("stripe_daily_revenue", organization_id="org-1")] == [550]
    assert [r["gross_minor"] for r in wh.fetch_rows("stripe_daily_revenue", organization_id="org-2")] == [500]


def test_only_captured_amounts_are_revenue(wh):
    charges = [
        charge("ch_full", 1_000, at=utc_at("2024-03-05T14:00:00")),
        charge("ch_held", 5_000, captured=0, at=utc_at("2024-03-05T15:00:00")),  # authorised only
        charge("ch_part", 2_000, captured=1_200, refunded=200, at=utc_at("2024-03-05T16:00:00")),
    ]
    with wh.transaction() as w:
        w.upsert_charges(STRIPE_OWNER, STRIPE_ACCOUNT, charges, T1)
        w.rebuild_daily_revenue(STRIPE_OWNER, STRIPE_ACCOUNT, date(2024, 3, 5), date(2024, 3, 5), T1)
    stored = {r["charge_id"]: r for r in wh.fetch_rows("stripe_charges")}
    assert (stored["ch_held"]["captured"], stored["ch_held"]["amount_captured_minor"]) == (False, 0)
    assert (stored["ch_part"]["captured"], stored["ch_part"]["amount_captured_minor"]) == (True, 1_200)
    (day,) = wh.fetch_rows("stripe_daily_revenue")
    assert (day["gross_minor"], day["refunded_minor"], day["net_minor"], day["charge_count"]) == (
        2_200,
        200,
        2_000,
        2,
    )


def test_rows_stored_before_captures_were_count_in_full(wh, warehouse_url):
    with wh.transaction() as w:
        w.upsert_charges(
            STRIPE_OWNER,
            STRIPE_ACCOUNT,
            [charge("ch_old", 700, refunded=100, at=utc_at("2024-03-05T14:00:00"))],
            T1,
        )
    # What a schema-1 row looks like once the columns were added: NULL.
    warehouse_query(warehouse_url, "UPDATE stripe_charges SET amount_captured_minor = NULL, captured = NULL")
    with wh.transaction() as w:
        w.rebuild_daily_revenue(STRIPE_OWNER, STRIPE_ACCOUNT, date(2024, 3, 5), date(2024, 3, 5), T1)
    (day,) = wh.fetch_rows("stripe_daily_revenue")
    assert (day["gross_minor"], day["net_minor"], day["charge_count"]) == (700, 600, 1)


def test_a_schema_1_warehouse_gains_the_capture_columns(wh, warehouse_url):
    for column in ("amount_captured_minor", "captured"):
        warehouse_query(warehouse_url, f"ALTER TABLE stripe_charges DROP COLUMN {column}")
    warehouse_query(warehouse_url, "UPDATE clearlift_warehouse_meta SET schema_version = 1")
    again = open_warehouse(warehouse_url)
    try:
        again.init_schema()
        with again.transaction() as w:
            w.upsert_charges(
                STRIPE_OWNER,
                STRIPE_ACCOUNT,
                [charge("ch_held", 900, captured=0, at=utc_at("2024-03-05T14:00:00"))],
                T1,
            )
        assert again.fetch_rows("stripe_charges")[0]["captured"] is False
    finally:
        again.close()
    assert wh.schema_version() == SCHEMA_VERSION


def test_update_stored_charges_touches_stored_charges_only_and_names_their_days(wh):
    old = charge("ch_old", 1_000, at=utc_at("2024-01-10T14:00:00"))
    with wh.transaction() as w:
        w.upsert_charges(STRIPE_OWNER, STRIPE_ACCOUNT, [old], T1)
    later = [
        charge("ch_old", 1_000, refunded=1_000, at=utc_at("2024-01-10T14:00:00")),
        charge("ch_never_synced", 300, refunded=300, at=utc_at("2023-12-01T14:00:00")),
    ]
    other = RowOwner("org-2", "org-2-stripe-acct_1", "acct_1")
    with wh.transaction() as w:
        assert w.update_stored_charges(other, STRIPE_ACCOUNT, later, T2) == (0, set())
        assert w.update_stored_charges(STRIPE_OWNER, STRIPE_ACCOUNT, iter(later), T2) == (
            1,
            {date(2024, 1, 10)},
        )
    stored = {r["charge_id"]: r for r in wh.fetch_rows("stripe_charges")}
    assert set(stored) == {"ch_old"}  # no lone charge on a day never synced
    assert (stored["ch_old"]["amount_refunded_minor"], stored["ch_old"]["last_synced_at"]) == (1_000, T2)


# --- opening ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "warehouse.db", "", "http://example.com/x"])
def test_an_unknown_url_scheme_is_a_config_error(url):
    with pytest.raises(ConfigError, match="unsupported warehouse URL"):
        open_warehouse(url)


def test_an_unreachable_postgres_is_a_warehouse_error_without_the_password():
    secret = "Sup3rS3cretPassw0rd"
    with pytest.raises(WarehouseError) as info:
        open_warehouse(f"postgresql://postgres:{secret}@127.0.0.1:1/test?connect_timeout=2")
    message = str(info.value)
    assert secret not in message and secret not in repr(info.value)
    assert "127.0.0.1" in message and "postgres:***@" in message
    assert "\n" not in message


def test_the_display_url_masks_the_password(pg_schema_url):
    parts = urlsplit(pg_schema_url)
    secret = parts.password
    if secret is None:  # trust auth ignores a password, so add one to be masked
        secret = "hunter2hunter2"
        parts = parts._replace(netloc=f"{parts.username}:{secret}@{parts.hostname}:{parts.port}")
    wh = open_warehouse(urlunsplit(parts))
    try:
        assert secret not in wh.url_for_display and f"{parts.username}:***@" in wh.url_for_display
        assert secret not in repr(wh)
        assert wh.schema_version() is None  # connected to the fresh, empty schema
    finally:
        wh.close()


def test_sqlite_urls_name_a_file(tmp_path):
    with pytest.raises(ConfigError):
        open_warehouse("sqlite://")
    with pytest.raises(ConfigError):
        open_warehouse("sqlite:///:memory:")
    nested = tmp_path / "new" / "dir" / "w.db"
    wh = open_warehouse(f"sqlite:///{nested}")
    wh.init_schema()
    wh.close()
    assert nested.exists()
    assert warehouse_query(f"sqlite:///{nested}", "PRAGMA journal_mode") == [("wal",)]


def test_a_file_that_is_not_a_database_is_a_warehouse_error(tmp_path):
    bogus = tmp_path / "w.db"
    bogus.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(WarehouseError, match="not a database"):
        open_warehouse(f"sqlite:///{bogus}").init_schema()


# --- PostgreSQL connections that die ---------------------------------------------------------


def _terminate(application_name: str) -> int:
    from tests.helpers import PG_URL

    rows = warehouse_query(
        PG_URL,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (application_name,),
    )
    return len(rows)


@pytest.fixture
def named_pg(pg_schema_url):
    """A PostgreSQL warehouse whose connections can be found (and killed) by name."""
    name = f"cl_test_{uuid.uuid4().hex[:10]}"
    wh = open_warehouse(f"{pg_schema_url}&application_name={name}")
    wh.init_schema()
    yield wh, name
    wh.close()


def test_a_connection_killed_mid_transaction_rolls_back_with_a_warehouse_error(named_pg):
    wh, name = named_pg
    with pytest.raises(WarehouseError, match="warehouse postgresql://"):
        with wh.transaction() as w:
            w.upsert_campaigns("google", OWNER, ACCOUNT, [Campaign("c1", "Lost", None)], T1)
            assert _terminate(name) == 1
            w.upsert_daily_metrics("google", OWNER, ACCOUNT, [metric("c1", date(2024, 5, 1))], T1)
    assert wh.count_rows("google_ads_campaigns") == 0
    with wh.transaction() as w:
        w.upsert_campaigns("google", OWNER, ACCOUNT, [Campaign("c1", "Kept", None)], T1)
    assert [r["campaign_name"] for r in wh.fetch_rows("google_ads_campaigns")] == ["Kept"]


def test_an_idle_connection_killed_between_jobs_is_replaced(named_pg):
    wh, name = named_pg
    assert wh.count_rows("google_ads_campaigns") == 0
    assert _terminate(name) >= 1  # the pooled idle connection (e.g. a server restart)
    with wh.transaction() as w:
        w.upsert_campaigns("google", OWNER, ACCOUNT, [Campaign("c1", "After restart", None)], T1)
    assert wh.count_rows("google_ads_campaigns") == 1


# --- PostgreSQL: what a replay writes, and who may read -------------------------------------------


def _versions(url: str, table: str) -> list[tuple]:
    """Each row's key with its tuple version (xmin) and lock/delete marker (xmax)."""
    return warehouse_query(
        url,
        f"SELECT campaign_id, metric_date, xmin::text, xmax::text FROM {table} "
        "ORDER BY campaign_id, metric_date",
    )


def test_a_postgres_replay_writes_no_tuple_version_and_locks_no_row(pg_schema_url):
    wh = open_warehouse(pg_schema_url)
    wh.init_schema()
    try:
        start = date(2024, 1, 1)
        metrics = [metric(f"c{i:02d}", d, clicks=i) for d in days(start, 300) for i in range(20)]
        with wh.transaction(write_seq=1) as w:  # 6,000 new rows: straight in with COPY
            assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, metrics, T1) == 6_000
        before = _versions(pg_schema_url, "google_ads_daily_metrics")
        (size,) = warehouse_query(pg_schema_url, "SELECT pg_relation_size('google_ads_daily_metrics')")[0]

        with wh.transaction(write_seq=2) as w:  # the same rows again, a later claim
            assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, iter(metrics), T2) == 6_000
        after = _versions(pg_schema_url, "google_ads_daily_metrics")
        assert after == before  # same tuple versions, and no xmax: not even a row lock
        assert {xmax for *_, xmax in after} == {"0"}
        assert (
            warehouse_query(pg_schema_url, "SELECT pg_relation_size('google_ads_daily_metrics')")[0][0]
            == size
        )

        # One changed row, one new day: exactly those two get written.
        more = metrics[:1] + [metric("c00", start, clicks=99), metric("c00", start + timedelta(300))]
        with wh.transaction(write_seq=3) as w:
            assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, more, T2) == 2
        final = {(r[0], r[1]): r for r in _versions(pg_schema_url, "google_ads_daily_metrics")}
        untouched = {(r[0], r[1]): r for r in before if (r[0], r[1]) != ("c00", start)}
        assert {k: final[k] for k in untouched} == untouched
        assert final[("c00", start)][2] != before[0][2] and len(final) == 6_001
    finally:
        wh.close()


def test_a_key_repeated_across_chunks_of_new_rows_lands_once_with_its_last_values(pg_schema_url):
    wh = open_warehouse(pg_schema_url)
    wh.init_schema()
    try:
        day = date(2024, 5, 1)
        rows = [metric("dup", day, clicks=1)] + [metric(f"x{i}", day) for i in range(CHUNK_SIZE)]
        rows += [metric("dup", day, clicks=2), metric("dup", day, clicks=3)]
        with wh.transaction() as w:
            assert w.upsert_daily_metrics("google", OWNER, ACCOUNT, rows, T1) == CHUNK_SIZE + 1
        got = {r["campaign_id"]: r["clicks"] for r in wh.fetch_rows("google_ads_daily_metrics")}
        assert len(got) == CHUNK_SIZE + 1 and got["dup"] == 3
    finally:
        wh.close()


def test_tables_clearlift_creates_have_row_level_security_and_existing_ones_are_left_alone(
    pg_schema_url, caplog
):
    # A table the operator made (say, from an older clearlift), with a policy of their own.
    warehouse_query(
        pg_schema_url,
        "CREATE TABLE google_ads_campaigns (organization_id TEXT NOT NULL, "
        "connection_id TEXT NOT NULL, account_id TEXT NOT NULL, campaign_id TEXT NOT NULL, "
        "PRIMARY KEY (organization_id, account_id, campaign_id))",
    )
    warehouse_query(pg_schema_url, "CREATE POLICY mine ON google_ads_campaigns FOR SELECT USING (true)")
    wh = open_warehouse(pg_schema_url)
    try:
        with caplog.at_level("WARNING", logger="clearlift.warehouse"):
            wh.init_schema(read_policy="organization_id = 'org-1'")
    finally:
        wh.close()
    security = pg_row_security(pg_schema_url)
    assert security.pop("google_ads_campaigns") is False
    assert set(security) == {*ALL_TABLES, "clearlift_warehouse_meta", "clearlift_write_fence"} - {
        "google_ads_campaigns"
    }
    assert all(security.values()), security
    assert pg_policies(pg_schema_url) == {("google_ads_campaigns", "mine", ("public",), "true")}
    assert [r.getMessage() for r in caplog.records if "row level security" in r.getMessage()] == [
        "warehouse tables without row level security (on Supabase the anon key can read them): "
        "google_ads_campaigns; enable it with ALTER TABLE ... ENABLE ROW LEVEL SECURITY"
    ]


@pytest.fixture
def read_roles():
    """Two roles standing in for Supabase's anon and authenticated (roles are cluster-wide:
    unique names, dropped afterwards), and one that exists nowhere."""
    from tests.helpers import PG_URL

    tag = uuid.uuid4().hex[:10]
    made = [f"cl_anon_{tag}", f"cl_authenticated_{tag}", f"cl_other_{tag}"]
    for role in made:
        warehouse_query(PG_URL, f'CREATE ROLE "{role}" NOLOGIN')
    yield (made[0], made[1], f"cl_missing_{tag}"), made[2]
    for role in made:
        warehouse_query(PG_URL, f'DROP OWNED BY "{role}"')
        warehouse_query(PG_URL, f'DROP ROLE "{role}"')


def test_the_read_policy_lets_each_role_read_only_what_the_condition_allows(pg_schema_url, read_roles):
    roles, other = read_roles
    wh = open_warehouse(pg_schema_url)
    try:
        wh.init_schema(
            read_policy="organization_id = current_setting('clearlift_test.org', true)", read_roles=roles
        )
        with wh.transaction(write_seq=1) as w:
            for org in ("org-1", "org-2"):
                owner = RowOwner(org, f"{org}-google-123", "123")
                w.upsert_daily_metrics("google", owner, ACCOUNT, [metric("c1", date(2024, 5, 1))], T1)
    finally:
        wh.close()
    policies = pg_policies(pg_schema_url)
    assert {t for t, *_ in policies} == set(ALL_TABLES)  # not the meta and fence tables
    assert {(p, r) for _, p, r, _ in policies} == {("clearlift_read", tuple(sorted(roles[:2])))}

    schema_name = warehouse_query(pg_schema_url, "SELECT current_schema()")[0][0]

    def visible(role: str) -> list[str]:
        # What a client with that role sees (Supabase grants SELECT on public tables itself).
        with psycopg.connect(pg_schema_url, autocommit=True) as conn:
            conn.execute(f'GRANT USAGE ON SCHEMA "{schema_name}" TO "{role}"')
            conn.execute(f'GRANT SELECT ON google_ads_daily_metrics TO "{role}"')
            conn.execute(f'SET ROLE "{role}"')
            conn.execute("SET clearlift_test.org = 'org-1'")
            return [r[0] for r in conn.execute("SELECT organization_id FROM google_ads_daily_metrics")]

    assert visible(roles[0]) == ["org-1"] and visible(roles[1]) == ["org-1"]
    assert visible(other) == []  # row level security on, no policy for it: nothing
