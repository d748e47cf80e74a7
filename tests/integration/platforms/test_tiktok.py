"""TikTok client against the TikTok sandbox over real HTTP on loopback."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import requests

from clearlift_cli.errors import (
    AuthRevoked,
    PermanentError,
    RateLimited,
    TokenExpired,
    TransientError,
)
from clearlift_cli.platforms import registry
from clearlift_cli.platforms.base import Account, Campaign, Credentials, DailyMetric, PlatformContext
from clearlift_cli.platforms.tiktok import TikTokAdsClient
from clearlift_cli.sandbox import APP_CREDENTIALS
from clearlift_cli.sandbox.server import SandboxServer
from clearlift_cli.sandbox.tiktok import TikTokApp
from clearlift_cli.settings import resolve
from clearlift_cli.timeutil import FrozenClock

UTC = UTC
ADVERTISER = "7012345678901234567"
REPORT = r"/report/integrated/get/$"
CAMPAIGNS = r"/campaign/get/$"


@pytest.fixture
def app() -> TikTokApp:
    return TikTokApp()


@pytest.fixture
def server(app):
    with SandboxServer(app) as srv:
        yield srv


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2024, 6, 1, 12, 0, tzinfo=UTC))


def _settings(tmp_path, server, *, app_credentials: bool = True):
    flags = {"home": str(tmp_path), "tiktok_url": server.base_url, "http_timeout": 2}
    if app_credentials:
        flags["tiktok_app_id"] = APP_CREDENTIALS["TIKTOK_APP_ID"]
        flags["tiktok_client_secret"] = APP_CREDENTIALS["TIKTOK_CLIENT_SECRET"]
    return resolve(flags=flags, environ={})


@pytest.fixture
def ctx(tmp_path, server, clock) -> PlatformContext:
    return PlatformContext(settings=_settings(tmp_path, server), account_id=ADVERTISER, clock=clock)


@pytest.fixture
def token(app) -> str:
    access, _refresh = app.tokens.issue(ttl=None)
    return access


@pytest.fixture
def client(ctx, token) -> TikTokAdsClient:
    return TikTokAdsClient(ctx, Credentials(access_token=token))


def _micros(value) -> int:
    """Expected micros computed from the wire value, independently of the client."""
    exact = Decimal(value) if isinstance(value, str) else Decimal(repr(value))
    assert exact * 1_000_000 == int(exact * 1_000_000), "sandbox serves whole micros"
    return int(exact * 1_000_000)


def _expected_metrics(rows) -> list[DailyMetric]:
    return [
        DailyMetric(
            campaign_id=row["dimensions"]["campaign_id"],
            metric_date=date.fromisoformat(row["dimensions"]["stat_time_day"].split(" ")[0]),
            impressions=int(row["metrics"]["impressions"]),
            clicks=int(row["metrics"]["clicks"]),
            spend_micros=_micros(row["metrics"]["spend"]),
            conversions=Decimal(str(row["metrics"]["conversion"])),
            # web "Complete Payment" value + in-app "Purchase" value
            conversion_value_micros=_micros(row["metrics"]["total_complete_payment_rate"])
            + _micros(row["metrics"]["total_purchase_value"]),
        )
        for row in rows
    ]


def _status(row) -> str:
    return "DELETE" if row["secondary_status"] == "CAMPAIGN_STATUS_DELETE" else row["operation_status"]


def test_module_registers_client_and_refresh():
    entry = registry.get("tiktok")
    assert entry.client is TikTokAdsClient and TikTokAdsClient.platform == "tiktok"
    # Advertiser tokens do not expire and have no refresh call (tt_user/oauth2/refresh_token
    # is for TikTok account tokens): nothing renews them, whatever is stored with them
    # (test_tokens.py runs refresh-tokens over such connections: no request reaches TikTok).
    assert entry.refresh_token is None and entry.refresh_requires == ()
    assert TikTokAdsClient.max_window_days == 30


def test_account_reads_currency_and_keeps_timezone_as_given(app, client, token):
    app.configure_account(ADVERTISER, currency="eur", time_zone="Etc/GMT+8", name="Berlin Shop")

    assert client.account() == Account(
        account_id=ADVERTISER, currency="EUR", time_zone="Etc/GMT+8", name="Berlin Shop"
    )
    (sent,) = app.requests_to(r"/advertiser/info/$")
    assert sent.headers["access-token"] == token
    assert json.loads(sent.query["advertiser_ids"]) == [ADVERTISER]
    assert set(json.loads(sent.query["fields"])) == {"currency", "timezone", "name"}


def test_campaigns_span_pages_and_match_the_wire_exactly(app, client):
    app.configure_account(ADVERTISER, campaigns=25, page_size_cap=10)
    wire = app.campaign_rows(ADVERTISER)
    assert any(row["budget"] == 0 for row in wire)
    assert any(isinstance(row["budget"], float) and row["budget"] % 1 for row in wire)

    got = list(client.campaigns())

    assert got == [
        Campaign(
            campaign_id=row["campaign_id"],
            campaign_name=row["campaign_name"],
            status=_status(row),
            objective=row["objective_type"],
            budget_micros=_micros(row["budget"]),
        )
        for row in wire
    ]
    pages = [int(r.query["page"]) for r in app.requests_to(CAMPAIGNS)]
    assert pages == [1, 2, 3]


def test_decimal_budget_becomes_exact_micros(app, client):
    app.configure_account(ADVERTISER, campaigns=25)
    by_id = {row["campaign_id"]: row["budget"] for row in app.campaign_rows(ADVERTISER)}
    decimal_ids = [cid for cid, budget in by_id.items() if isinstance(budget, float) and budget % 1]
    assert decimal_ids

    got = {c.campaign_id: c.budget_micros for c in client.campaigns()}

    for cid in decimal_ids:
        # e.g. 50.5 -> 50_500_000: tenths of a unit, never a binary-float artefact
        assert got[cid] == int(Decimal(repr(by_id[cid])) * 1_000_000)
        assert got[cid] % 100_000 == 0


def test_45_day_window_is_two_report_requests_with_exact_totals(app, client):
    app.configure_account(ADVERTISER, campaigns=4)
    since, until = date(2024, 1, 1), date(2024, 2, 14)
    wire = app.report_rows(ADVERTISER, since, until)

    got = list(client.daily_metrics(since, until))

    sent = app.requests_to(REPORT)
    assert [(r.query["start_date"], r.query["end_date"]) for r in sent] == [
        ("2024-01-01", "2024-01-30"),
        ("2024-01-31", "2024-02-14"),
    ]
    assert got == _expected_metrics(wire)
    assert sum(m.spend_micros for m in got) == sum(_micros(r["metrics"]["spend"]) for r in wire)
    assert sum(m.impressions for m in got) == sum(int(r["metrics"]["impressions"]) for r in wire)
    assert sum(m.clicks for m in got) == sum(int(r["metrics"]["clicks"]) for r in wire)
    assert {m.metric_date for m in got} == {since + timedelta(days=i) for i in range(45)}
    for request in sent:
        assert json.loads(request.query["dimensions"]) == ["campaign_id", "stat_time_day"]
        assert request.query["report_type"] == "BASIC"
        assert request.query["data_level"] == "AUCTION_CAMPAIGN"


def test_report_pages_are_followed(app, client):
    app.configure_account(ADVERTISER, campaigns=5, page_size_cap=20)
    since, until = date(2024, 3, 1), date(2024, 3, 10)
    wire = app.report_rows(ADVERTISER, since, until)
    assert len(wire) > 40  # at least three pages of 20

    got = list(client.daily_metrics(since, until))

    assert got == _expected_metrics(wire)
    pages = [int(r.query["page"]) for r in app.requests_to(REPORT)]
    assert pages == list(range(1, (len(wire) + 19) // 20 + 1))


def test_metric_strings_and_numbers_are_both_parsed_exactly(app, client):
    app.configure_account(ADVERTISER, campaigns=2)
    day = date(2024, 4, 2)
    wire = app.report_rows(ADVERTISER, day, day + timedelta(days=5))
    spend_types = {type(row["metrics"]["spend"]) for row in wire}
    count_types = {type(row["metrics"]["impressions"]) for row in wire}
    assert spend_types == {str, float} and count_types == {str, int}

    got = list(client.daily_metrics(day, day + timedelta(days=5)))

    assert got == _expected_metrics(wire)
    for metric, row in zip(got, wire, strict=True):
        spend = row["metrics"]["spend"]
        assert metric.spend_micros == round(Decimal(str(spend)) * 1_000_000)
        assert isinstance(metric.conversions, Decimal)


def test_sandbox_rejects_reports_longer_than_30_days(server, token):
    response = requests.get(
        f"{server.base_url}/open_api/v1.3/report/integrated/get/",
        headers={"Access-Token": token},
        params={
            "advertiser_id": ADVERTISER,
            "report_type": "BASIC",
            "data_level": "AUCTION_CAMPAIGN",
            "dimensions": '["campaign_id","stat_time_day"]',
            "metrics": '["spend"]',
            "start_date": "2024-01-01",
            "end_date": "2024-01-31",
        },
        timeout=5,
    )
    body = response.json()
    assert response.status_code == 200
    assert body["code"] == 40002 and "30 days" in body["message"]


@pytest.mark.parametrize(
    "code, expected, scope",
    [
        (40100, RateLimited, "app"),
        (40132, RateLimited, "account"),
        (61000, RateLimited, "account"),
        (40102, TokenExpired, None),
        (40105, AuthRevoked, None),
        (40103, AuthRevoked, None),
        (40107, AuthRevoked, None),
        (40001, PermanentError, None),
        (40002, PermanentError, None),
        (50000, TransientError, None),
        (40999, PermanentError, None),
    ],
)
def test_http_200_error_codes_are_classified(app, client, code, expected, scope):
    app.fail_next(code, times=3, path=CAMPAIGNS)

    with pytest.raises(expected) as info:
        list(client.campaigns())

    exc = info.value
    assert type(exc) is expected
    assert str(code) in str(exc)
    assert exc.platform == "tiktok"
    if expected is RateLimited:
        assert exc.scope == scope
        assert exc.retry_after == 60.0
    if expected is AuthRevoked:
        assert exc.definitive is True
    # only the plain transient code is retried in place (three attempts)
    assert len(app.requests_to(CAMPAIGNS)) == (3 if code == 50000 else 1)


def test_one_system_error_is_retried_and_recovers(app, client, clock):
    app.configure_account(ADVERTISER, campaigns=3)
    app.fail_next(50000, times=1, path=CAMPAIGNS)

    assert len(list(client.campaigns())) == 3
    assert len(app.requests_to(CAMPAIGNS)) == 2
    assert clock.slept == [0.5]


def test_expired_and_revoked_tokens_on_the_sandbox(app, ctx):
    expired, _ = app.tokens.issue(ttl=60)
    app.tokens.expire(expired)
    revoked, _ = app.tokens.issue(ttl=None)
    app.tokens.revoke(revoked)

    with pytest.raises(TokenExpired):
        TikTokAdsClient(ctx, Credentials(expired)).account()
    with pytest.raises(AuthRevoked) as info:
        TikTokAdsClient(ctx, Credentials(revoked)).account()
    assert info.value.definitive is True


@pytest.mark.parametrize(
    "status, expected", [(503, TransientError), (429, RateLimited), (404, PermanentError)]
)
def test_http_level_errors(app, client, status, expected):
    app.faults.add("status", path=CAMPAIGNS, times=3, status=status, body={"message": "no"})

    with pytest.raises(expected):
        list(client.campaigns())


def test_no_token_in_error_messages(app, ctx):
    access, refresh = app.tokens.issue()
    client = TikTokAdsClient(ctx, Credentials(access, refresh))
    app.fail_next(40105, path=CAMPAIGNS, message=f"Access token {access} is incorrect")

    with pytest.raises(AuthRevoked) as first:
        list(client.campaigns())

    exc = first.value
    for text in (str(exc), exc.reason, repr(exc.args)):
        assert access not in text and refresh not in text
        assert APP_CREDENTIALS["TIKTOK_CLIENT_SECRET"] not in text
    assert "incorrect" in str(exc)


# --- deleted campaigns, conversion value, time zone, endless pages (issue 14, 16) ------------


def _report_query(start: str, end: str, **more) -> dict:
    return {
        "advertiser_id": ADVERTISER,
        "report_type": "BASIC",
        "data_level": "AUCTION_CAMPAIGN",
        "dimensions": '["campaign_id","stat_time_day"]',
        "metrics": '["spend"]',
        "start_date": start,
        "end_date": end,
        "page_size": "1000",
        **more,
    }


def test_deleted_campaigns_and_their_past_spend_are_read(app, client):
    app.configure_account(ADVERTISER, campaigns=9, page_size_cap=4)
    wire = app.campaign_rows(ADVERTISER)
    deleted = {r["campaign_id"] for r in wire if r["secondary_status"] == "CAMPAIGN_STATUS_DELETE"}
    assert len(deleted) == 2
    since, until = date(2024, 5, 1), date(2024, 5, 10)

    campaigns = {c.campaign_id: c.status for c in client.campaigns()}
    metrics = list(client.daily_metrics(since, until))

    assert set(campaigns) == {r["campaign_id"] for r in wire}
    assert {campaigns[cid] for cid in deleted} == {"DELETE"}
    assert metrics == _expected_metrics(app.report_rows(ADVERTISER, since, until))
    assert deleted <= {m.campaign_id for m in metrics}
    assert {r.query["filtering"] for r in app.requests_to(REPORT)} == {
        json.dumps(
            [{"field_name": "campaign_status", "filter_type": "IN", "filter_value": '["STATUS_ALL"]'}],
            separators=(",", ":"),
        )
    }
    assert {json.loads(r.query["filtering"])["secondary_status"] for r in app.requests_to(CAMPAIGNS)} == {
        "CAMPAIGN_STATUS_ALL"
    }


def test_sandbox_leaves_deleted_campaigns_out_unless_asked(app, server, token):
    app.configure_account(ADVERTISER, campaigns=5)
    deleted = {
        r["campaign_id"]
        for r in app.campaign_rows(ADVERTISER)
        if r["secondary_status"] == "CAMPAIGN_STATUS_DELETE"
    }
    assert len(deleted) == 1
    base = f"{server.base_url}/open_api/v1.3"

    def get(path, **query):
        body = requests.get(f"{base}{path}", headers={"Access-Token": token}, params=query, timeout=5).json()
        assert body["code"] == 0, body
        return body["data"]["list"]

    plain = get("/campaign/get/", advertiser_id=ADVERTISER, page_size=100)
    everything = get(
        "/campaign/get/",
        advertiser_id=ADVERTISER,
        page_size=100,
        filtering='{"secondary_status":"CAMPAIGN_STATUS_ALL"}',
    )
    assert {r["campaign_id"] for r in everything} - {r["campaign_id"] for r in plain} == deleted
    rows = get("/report/integrated/get/", **_report_query("2024-05-01", "2024-05-05"))
    all_rows = get(
        "/report/integrated/get/",
        **_report_query(
            "2024-05-01",
            "2024-05-05",
            filtering='[{"field_name":"campaign_status","filter_type":"IN","filter_value":"[\\"STATUS_ALL\\"]"}]',
        ),
    )
    assert not deleted & {r["dimensions"]["campaign_id"] for r in rows}
    assert deleted <= {r["dimensions"]["campaign_id"] for r in all_rows}


def test_conversion_value_is_stored_exactly_from_the_decimal_text(app, client):
    app.configure_account(ADVERTISER, campaigns=3)
    day = date(2024, 5, 20)
    wire = {r["dimensions"]["campaign_id"]: r["metrics"] for r in app.report_rows(ADVERTISER, day, day)}
    got = {m.campaign_id: m.conversion_value_micros for m in client.daily_metrics(day, day)}

    assert got and got == {
        cid: int(Decimal(str(m["total_complete_payment_rate"])) * 1_000_000)
        + int(Decimal(str(m["total_purchase_value"])) * 1_000_000)
        for cid, m in wire.items()
    }
    assert any(v for v in got.values())
    sent = json.loads(app.requests_to(REPORT)[0].query["metrics"])
    assert {"total_complete_payment_rate", "total_purchase_value", "conversion"} <= set(sent)


def test_reporting_day_follows_the_fixed_offset_timezone_not_display_timezone(app, ctx, token, clock):
    # 07:30 UTC on 1 June: 00:30 in Los Angeles (summer time, what display_timezone names),
    # still 31 May in Etc/GMT+8, the zone TikTok cuts reports in (no daylight saving time).
    clock.advance((datetime(2024, 6, 1, 7, 30, tzinfo=UTC) - clock.now()).total_seconds())
    app.clock = clock.time
    app.configure_account(
        ADVERTISER, campaigns=2, time_zone="Etc/GMT+8", display_timezone="America/Los_Angeles"
    )
    client = TikTokAdsClient(ctx, Credentials(token))

    account = client.account()
    metrics = list(client.daily_metrics(date(2024, 5, 30), date(2024, 6, 1)))

    assert account.time_zone == "Etc/GMT+8"
    assert max(m.metric_date for m in metrics) == date(2024, 5, 31)
    (info,) = app.requests_to(r"/advertiser/info/$")
    assert "timezone" in json.loads(info.query["fields"])


@pytest.mark.parametrize("walk", ["campaigns", "report"])
def test_endless_total_page_over_repeating_rows_fails_fast(app, client, walk):
    app.configure_account(ADVERTISER, campaigns=5, page_size_cap=2, endless_pages=True)

    with pytest.raises(PermanentError, match="endless pagination") as info:
        if walk == "campaigns":
            list(client.campaigns())
        else:
            list(client.daily_metrics(date(2024, 5, 1), date(2024, 5, 3)))

    assert "repeats the 2 rows" in str(info.value)
    assert len(app.requests_to(CAMPAIGNS if walk == "campaigns" else REPORT)) == 2
