"""The Facebook client against the Graph sandbox, over real HTTP on loopback."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
import requests

from clearlift_cli.errors import (
    AuthRevoked,
    MissingAppCredentials,
    PermanentError,
    RateLimited,
    TransientError,
)
from clearlift_cli.platforms import facebook as facebook_module
from clearlift_cli.platforms import registry, versions
from clearlift_cli.platforms.base import Credentials, PlatformContext
from clearlift_cli.platforms.facebook import FacebookAdsClient, TokenNotExtended, refresh_token
from clearlift_cli.sandbox import APP_CREDENTIALS
from clearlift_cli.sandbox.facebook import EXCHANGED_TOKEN_TTL, FacebookApp
from clearlift_cli.sandbox.server import SandboxServer
from clearlift_cli.settings import resolve
from clearlift_cli.timeutil import FrozenClock

DEFAULT_VERSION = versions.DEFAULT_VERSIONS["facebook"]
ACCOUNT = "1234567890"
SINCE, UNTIL = date(2025, 6, 1), date(2025, 6, 8)
APP_SECRET = APP_CREDENTIALS["FACEBOOK_APP_SECRET"]


@pytest.fixture
def clock():
    return FrozenClock(datetime(2025, 7, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def app(clock):
    return FacebookApp(clock=clock.time)


@pytest.fixture
def server(app):
    with SandboxServer(app) as running:
        yield running


@pytest.fixture
def token(app):
    return app.tokens.issue(ttl=30 * 86400)[0]


@pytest.fixture
def make_settings(tmp_path, server):
    def build(**flags):
        base = {
            "home": str(tmp_path),
            "facebook_url": server.base_url,
            "facebook_app_id": APP_CREDENTIALS["FACEBOOK_APP_ID"],
            "facebook_app_secret": APP_SECRET,
            "http_timeout": 2,
        }
        return resolve(flags={**base, **flags}, environ={})

    return build


@pytest.fixture
def make_client(make_settings, clock, token):
    def build(account=ACCOUNT, *, access_token=None, settings=None, progress=None, **conn):
        ctx = PlatformContext(
            settings=settings or make_settings(),
            account_id=account,
            connection_settings=conn,
            clock=clock,
            progress=progress,
        )
        return FacebookAdsClient(ctx, Credentials(access_token or token))

    return build


def expected_metrics(app, since, until, action_types=("purchase",)):
    """What the warehouse must hold, computed from the wire rows with Decimal arithmetic."""
    out = {}
    for row in app.insight_rows(ACCOUNT, since, until):
        actions = [a for a in row.get("actions", []) if a["action_type"] in action_types]
        values = [a for a in row.get("action_values", []) if a["action_type"] in action_types]
        out[(row["campaign_id"], date.fromisoformat(row["date_start"]))] = (
            int(row["impressions"]),
            int(row["clicks"]),
            int(Decimal(row["spend"]) * 1_000_000),
            sum((Decimal(a["value"]) for a in actions), Decimal(0)),
            sum(int(Decimal(a["value"]) * 1_000_000) for a in values),
        )
    return out


def as_table(metrics):
    return {
        (m.campaign_id, m.metric_date): (
            m.impressions,
            m.clicks,
            m.spend_micros,
            m.conversions,
            m.conversion_value_micros,
        )
        for m in metrics
    }


def time_ranges(app):
    ranges = []
    for r in app.requests_to(rf"/act_{ACCOUNT}/insights$"):
        window = json.loads(r.query["time_range"])
        ranges.append((date.fromisoformat(window["since"]), date.fromisoformat(window["until"])))
    return ranges


# --- registry, account ids --------------------------------------------------------------


def test_registry_entry_names_client_and_refresh():
    entry = registry.get("facebook")
    assert entry.client is FacebookAdsClient and FacebookAdsClient.platform == "facebook"
    client = entry.client
    windows = (client.max_window_days, client.default_lookback_days, client.attribution_window_days)
    assert windows == (30, 3, 28)
    assert entry.refresh_token is refresh_token


@pytest.mark.parametrize("given", [ACCOUNT, f"act_{ACCOUNT}", f" act_{ACCOUNT} "])
def test_account_with_or_without_act_prefix(app, make_client, token, given):
    app.configure_account(ACCOUNT, currency="EUR", timezone_name="Europe/Berlin")
    account = make_client(given).account()
    got = (account.account_id, account.currency, account.time_zone)
    assert got == (ACCOUNT, "EUR", "Europe/Berlin")
    request = app.requests[-1]
    assert request.path == f"/{DEFAULT_VERSION}/act_{ACCOUNT}"
    assert request.query["access_token"] == token
    assert set(request.query["fields"].split(",")) == {"name", "currency", "timezone_name"}


@pytest.mark.parametrize("bad", ["act_12a4", "12-34", "", "act_"])
def test_non_digit_account_id_is_permanent(make_client, bad):
    with pytest.raises(PermanentError, match="not an ad account id"):
        make_client(bad)


def test_unknown_account_is_permanent_not_auth(app, make_client):
    app.configure_account(ACCOUNT, exists=False)
    with pytest.raises(PermanentError) as info:
        make_client().account()
    assert not isinstance(info.value, AuthRevoked)
    assert "code 100" in str(info.value)
    assert len(app.requests) == 1  # permanent: not retried


# --- campaigns --------------------------------------------------------------------------


def test_campaigns_three_pages_exact(app, make_client):
    app.configure_account(ACCOUNT, campaigns=8, max_page_rows=3)
    seen = []
    client = make_client(progress=lambda phase, done, total: seen.append((phase, done)))
    campaigns = list(client.campaigns())

    wire = app.campaign_rows(ACCOUNT)
    assert len(wire) == 8
    expected = []
    for row in wire:
        budget = row.get("daily_budget", "0")
        if budget == "0":
            budget = row.get("lifetime_budget")
        expected.append(
            (
                row["id"],
                row["name"],
                row["status"],
                row["objective"],
                int(budget) * 10_000 if budget else None,
            )
        )
    got = [(c.campaign_id, c.campaign_name, c.status, c.objective, c.budget_micros) for c in campaigns]
    assert got == expected
    assert {c.budget_micros is None for c in campaigns} == {True, False}
    assert any("lifetime_budget" in r and r["daily_budget"] == "0" for r in wire)

    pages = app.requests_to(rf"/act_{ACCOUNT}/campaigns$")
    assert len(pages) == 3
    assert pages[0].query["limit"] == "100" and "after" not in pages[0].query
    assert all("after" in p.query for p in pages[1:])
    assert set(pages[0].query["fields"].split(",")) >= {
        "id",
        "name",
        "status",
        "effective_status",
        "objective",
        "daily_budget",
        "lifetime_budget",
    }
    assert seen == [("campaigns", 3), ("campaigns", 6), ("campaigns", 8)]


def test_budget_minor_units_follow_currency(app, make_client):
    app.configure_account(ACCOUNT, campaigns=2, currency="JPY")
    wire = app.campaign_rows(ACCOUNT)
    got = {c.campaign_id: c.budget_micros for c in make_client().campaigns()}
    daily = wire[0]["daily_budget"]
    assert got[wire[0]["id"]] == int(daily) * 1_000_000  # yen have no minor unit
    assert got[wire[1]["id"]] == int(wire[1]["lifetime_budget"]) * 1_000_000


# --- insights ---------------------------------------------------------------------------


def test_insights_several_pages_exact(app, make_client):
    app.configure_account(ACCOUNT, campaigns=4, max_page_rows=7)
    first = app.campaign_rows(ACCOUNT)[0]["id"]
    app.pin_insight(
        ACCOUNT,
        first,
        SINCE,
        impressions="185",
        clicks="9",
        spend="14.35",
        actions=[
            {"action_type": "purchase", "value": "2"},
            {"action_type": "omni_purchase", "value": "2"},
            {"action_type": "offsite_conversion.fb_pixel_purchase", "value": "1"},
            {"action_type": "link_click", "value": "9"},
        ],
        action_values=[
            {"action_type": "purchase", "value": "59.90"},
            {"action_type": "omni_purchase", "value": "59.90"},
        ],
    )
    metrics = list(make_client().daily_metrics(SINCE, UNTIL))

    table = as_table(metrics)
    assert len(table) == len(metrics)  # one row per campaign and day
    assert table == expected_metrics(app, SINCE, UNTIL)
    assert table[(first, SINCE)] == (185, 9, 14_350_000, Decimal(2), 59_900_000)
    pages = app.requests_to(rf"/act_{ACCOUNT}/insights$")
    assert len(pages) >= 3
    assert pages[0].query["level"] == "campaign" and pages[0].query["time_increment"] == "1"
    assert pages[0].query["limit"] == "500"
    assert time_ranges(app)[0] == (SINCE, UNTIL)


def test_configured_action_types_decide_conversions(app, make_client):
    types = ("offsite_conversion.fb_pixel_purchase", "add_to_cart")
    custom = as_table(make_client(conversion_action_types=list(types)).daily_metrics(SINCE, UNTIL))
    default = as_table(make_client().daily_metrics(SINCE, UNTIL))
    assert custom == expected_metrics(app, SINCE, UNTIL, types)
    assert custom != default
    # The default counts a purchase once, not once per spelling of it.
    wire = app.insight_rows(ACCOUNT, SINCE, UNTIL)
    purchases = sum(
        Decimal(a["value"]) for r in wire for a in r.get("actions", []) if a["action_type"] == "purchase"
    )
    assert purchases > 0
    assert sum(m[3] for m in default.values()) == purchases


def test_too_much_data_splits_the_window(app, make_client, clock):
    campaigns = app.campaign_rows(ACCOUNT)
    app.configure_account(ACCOUNT, max_sync_rows=2 * len(campaigns))  # about two days' rows
    metrics = list(make_client().daily_metrics(SINCE, UNTIL))

    assert as_table(metrics) == expected_metrics(app, SINCE, UNTIL)
    assert len(metrics) == len(app.insight_rows(ACCOUNT, SINCE, UNTIL))
    ranges = list(dict.fromkeys(time_ranges(app)))
    assert ranges[:2] == [(SINCE, UNTIL), (SINCE, date(2025, 6, 4))]  # halves first
    # The windows small enough to answer tile the full window exactly once.
    limit = 2 * len(campaigns)
    answered = [(s, u) for s, u in ranges if len(app.insight_rows(ACCOUNT, s, u)) <= limit]
    assert len(answered) < len(ranges)
    assert answered[0][0] == SINCE and answered[-1][1] == UNTIL
    assert all(b[0] == a[1] + timedelta(days=1) for a, b in pairwise(answered))
    assert app.report_run_ids() == []
    assert clock.slept == []  # splitting is immediate, no backoff


def test_single_day_still_too_large_goes_async(app, make_client, clock):
    app.configure_account(ACCOUNT, max_sync_rows=0, async_polls=2)
    day = date(2025, 6, 3)
    metrics = list(make_client().daily_metrics(day, day))

    assert as_table(metrics) == expected_metrics(app, day, day)
    assert len(app.report_run_ids()) == 1
    posts = [r for r in app.requests_to(rf"/act_{ACCOUNT}/insights$") if r.method == "POST"]
    assert len(posts) == 1
    window = json.loads(posts[0].form()["time_range"])
    assert window == {"since": "2025-06-03", "until": "2025-06-03"}
    assert clock.slept == [1.0, 2.0]  # two polls before "Job Completed"


def test_forced_async_report_flow(app, make_client, clock):
    app.configure_account(ACCOUNT, campaigns=5, max_page_rows=6, async_polls=3)
    metrics = list(make_client(insights_mode="async").daily_metrics(SINCE, UNTIL))

    assert as_table(metrics) == expected_metrics(app, SINCE, UNTIL)
    (run_id,) = app.report_run_ids()
    statuses = app.requests_to(rf"^/{DEFAULT_VERSION}/{run_id}$")
    assert len(statuses) == 4  # not started, running, running, completed
    assert len(app.requests_to(rf"^/{DEFAULT_VERSION}/{run_id}/insights$")) >= 3
    assert [r.method for r in app.requests_to(rf"/act_{ACCOUNT}/insights$")] == ["POST"]
    assert clock.slept == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("outcome", ["Job Failed", "Job Skipped"])
def test_failed_async_report_is_transient(app, make_client, outcome):
    app.configure_account(ACCOUNT, async_polls=1, async_outcome=outcome)
    with pytest.raises(TransientError, match=outcome):
        list(make_client(insights_mode="async").daily_metrics(SINCE, SINCE))


def test_long_window_is_sliced_by_max_window_days(app, make_client):
    until = SINCE + timedelta(days=44)
    seen = []
    client = make_client(progress=lambda phase, done, total: seen.append((phase, done, total)))
    metrics = list(client.daily_metrics(SINCE, until))
    assert as_table(metrics) == expected_metrics(app, SINCE, until)
    split = SINCE + timedelta(days=30)
    assert time_ranges(app) == [(SINCE, split - timedelta(days=1)), (split, until)]
    assert seen == [("metrics", 30, 45), ("metrics", 45, 45)]


# --- usage and rate limits ---------------------------------------------------------------


def test_low_usage_does_not_pause(app, make_client, clock):
    client = make_client()
    client.account()
    list(client.campaigns())
    assert clock.slept == []


@pytest.mark.parametrize(
    "header, value, pause",
    [
        ("call_count", 95, 8.0),
        ("total_time", 85, 4.0),
        ("app_call_count", 90, 6.0),
        ("acc_id_util_pct", 80, 2.0),
    ],
)
def test_usage_near_limit_slows_down(app, make_client, clock, header, value, pause):
    app.set_usage(**{header: value})
    client = make_client()
    client.account()
    assert clock.slept == []
    list(client.campaigns())  # one page: one request after the high reading
    assert clock.slept == [pause]


def test_blocked_usage_stops_before_sending(app, make_client, clock):
    app.set_usage(call_count=100, estimated_time_to_regain_access=3)
    client = make_client()
    client.account()
    with pytest.raises(RateLimited) as info:
        list(client.campaigns())
    assert info.value.retry_after == 180 and info.value.scope == "account"
    assert app.requests_to("/campaigns") == []
    clock.advance(181)
    app.set_usage(call_count=10, estimated_time_to_regain_access=0)
    assert len(list(client.campaigns())) == len(app.campaign_rows(ACCOUNT))


def test_garbage_usage_headers_are_tolerated(app, make_client, clock):
    app.set_usage(
        raw={
            "x-app-usage": "{not json",
            "x-business-use-case-usage": '{"1": [7, "x"]}',
            "x-ad-account-usage": "null",
        }
    )
    client = make_client()
    client.account()
    assert len(list(client.campaigns())) == len(app.campaign_rows(ACCOUNT))
    assert clock.slept == []


@pytest.mark.parametrize(
    "code, minutes, retry_after, scope",
    [
        (80004, 7, 420, "account"),
        (17, 2, 120, "account"),
        (17, 0, 300, "account"),
        (4, 0, 300, "app"),
        (613, 0, 60, "account"),
    ],
)
def test_rate_limit_error(app, make_client, code, minutes, retry_after, scope):
    app.rate_limit_next(code=code, minutes=minutes)
    with pytest.raises(RateLimited) as info:
        make_client().account()
    assert (info.value.retry_after, info.value.scope) == (retry_after, scope)
    assert f"code {code}" in str(info.value)
    assert len(app.requests) == 1  # a long wait is not slept in place


def test_transient_graph_error_is_retried(app, make_client):
    app.faults.add(
        "status",
        status=500,
        times=1,
        body={
            "error": {
                "message": "An unknown error occurred",
                "type": "OAuthException",
                "code": 1,
                "is_transient": True,
            }
        },
    )
    assert make_client().account().currency == "USD"
    assert len(app.requests) == 2


# --- tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, meaning",
    [
        ("expire", "expired"),
        ("revoke", "password"),
        ("unknown", "invalid"),
    ],
)
def test_invalid_token_is_definitive_auth_revoked(app, make_client, token, damage, meaning):
    if damage == "expire":
        app.tokens.expire(token)
    elif damage == "revoke":
        app.tokens.revoke(token)
    client = make_client(access_token=token if damage != "unknown" else "EAAB-not-a-real-token-123")
    with pytest.raises(AuthRevoked) as info:
        client.account()
    assert info.value.definitive is True
    assert "re-authorised" in str(info.value)
    assert meaning in info.value.reason
    assert len(app.requests) == 1


def test_token_exchange_gives_a_working_token(app, make_settings, make_client, clock, token):
    ctx = PlatformContext(settings=make_settings(), account_id=ACCOUNT, clock=clock)
    grant = refresh_token(ctx, Credentials(token, expires_at=clock.now() + timedelta(days=2)))

    assert grant.access_token != token
    assert grant.expires_at == clock.now() + timedelta(seconds=EXCHANGED_TOKEN_TTL)
    assert grant.refresh_token is None
    (call,) = app.requests_to("/oauth/access_token")
    assert call.query["grant_type"] == "fb_exchange_token"
    assert call.query["fb_exchange_token"] == token
    assert call.query["client_secret"] == APP_SECRET
    assert make_client(access_token=grant.access_token).account().currency == "USD"


def test_expired_token_cannot_be_exchanged(app, make_settings, clock, token):
    app.tokens.expire(token)
    ctx = PlatformContext(settings=make_settings(), account_id=ACCOUNT, clock=clock)
    with pytest.raises(AuthRevoked) as info:
        refresh_token(ctx, Credentials(token))
    assert info.value.definitive is True and "expired" in info.value.reason


def test_exchange_needs_app_credentials(app, make_settings, clock, token, tmp_path):
    settings = resolve(
        flags={"home": str(tmp_path), "facebook_url": make_settings().facebook_url}, environ={}
    )
    ctx = PlatformContext(settings=settings, account_id=ACCOUNT, clock=clock)
    with pytest.raises(MissingAppCredentials):
        refresh_token(ctx, Credentials(token))
    assert app.requests == []


def test_exchange_with_wrong_secret_is_permanent(app, make_settings, clock, token):
    ctx = PlatformContext(
        settings=make_settings(facebook_app_secret="wrong-secret-value-42"), account_id=ACCOUNT, clock=clock
    )
    with pytest.raises(PermanentError) as info:
        refresh_token(ctx, Credentials(token))
    assert not isinstance(info.value, AuthRevoked)
    assert "FACEBOOK_APP_SECRET" in info.value.hint


# --- no secret ever leaks ---------------------------------------------------------------

WRONG_SECRET = "wrong-app-secret-do-not-leak-77"
ECHOING_BODY = "upstream failed for /v27.0/act_1?access_token={token}&client_secret={secret}"


def _break(case, app, token):
    """Arrange the sandbox so the next call fails the way ``case`` names."""
    if case == "expired":
        app.tokens.expire(token)
    elif case == "revoked":
        app.tokens.revoke(token)
    elif case == "rate_limited":
        app.rate_limit_next(code=80004, minutes=5)
    elif case == "unknown_account":
        app.configure_account(ACCOUNT, exists=False)
    elif case == "server_error_echo":
        app.faults.add(
            "status",
            status=500,
            times=-1,
            body={
                "error": {
                    "message": ECHOING_BODY.format(token=token, secret=APP_SECRET),
                    "code": 2,
                    "type": "OAuthException",
                }
            },
        )
    elif case == "html":
        app.faults.add("html", status=502, times=-1)
    elif case == "malformed":
        app.faults.add("malformed", times=-1)
    elif case == "reset":
        app.faults.add("reset", times=-1)
    elif case == "timeout":
        app.faults.add("timeout", seconds=0.6, times=-1)
    elif case == "too_much_then_async_failed":
        app.configure_account(ACCOUNT, max_sync_rows=0, async_polls=1, async_outcome="Job Failed")


CLIENT_CASES = [
    "expired",
    "revoked",
    "unknown_token",
    "rate_limited",
    "unknown_account",
    "server_error_echo",
    "html",
    "malformed",
    "reset",
    "timeout",
    "too_much_then_async_failed",
    "blocked_usage",
]
REFRESH_CASES = [
    "refresh_expired",
    "refresh_revoked",
    "refresh_unknown",
    "refresh_wrong_secret",
    "refresh_server_error_echo",
]


@pytest.mark.parametrize("case", CLIENT_CASES + REFRESH_CASES)
def test_no_error_path_leaks_token_or_secret(app, make_settings, clock, token, caplog, case):
    caplog.set_level(logging.DEBUG)
    unknown = case in ("unknown_token", "refresh_unknown")
    access = "EAABwzLixnjYBO-unknown-token-0000" if unknown else token
    flags = {"http_timeout": 0.3}
    if case == "refresh_wrong_secret":
        flags["facebook_app_secret"] = WRONG_SECRET
    settings = make_settings(**flags)
    ctx = PlatformContext(settings=settings, account_id=f"act_{ACCOUNT}", clock=clock)
    _break(case.removeprefix("refresh_"), app, token)

    with pytest.raises((AuthRevoked, RateLimited, TransientError, PermanentError)) as info:
        if case.startswith("refresh_"):
            refresh_token(ctx, Credentials(access))
        elif case == "blocked_usage":
            app.set_usage(call_count=100, estimated_time_to_regain_access=10)
            client = FacebookAdsClient(ctx, Credentials(access))
            client.account()
            list(client.campaigns())
        else:
            client = FacebookAdsClient(ctx, Credentials(access))
            client.account()
            list(client.daily_metrics(SINCE, SINCE))

    exc = info.value
    shown = " ".join([str(exc), repr(exc), str(exc.hint or ""), str(getattr(exc, "reason", "")), caplog.text])
    for secret in (access, token, APP_SECRET, WRONG_SECRET):
        assert secret not in shown, f"{case}: a secret leaked"
    # The HTTP library did log at DEBUG, so the check above had something to look at.
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    assert app.requests, "the failure must come from a real request"


# --- API versions (issue 14) -------------------------------------------------------------


def _at(clock, when: datetime) -> None:
    clock.advance((when - clock.now()).total_seconds())


def test_expired_version_fails_the_job_naming_the_version_and_setting(app, make_settings, make_client, clock):
    _at(clock, datetime(2026, 11, 29, 12, 0, tzinfo=UTC))  # v24.0 expired on 2026-11-10
    client = make_client(
        settings=make_settings(facebook_api_version="v24.0"), access_token=app.tokens.issue(ttl=None)[0]
    )

    with pytest.raises(PermanentError) as info:
        client.account()

    message = str(info.value)
    assert message.startswith(
        "Meta Marketing API v24.0 is no longer served (sunset 2026-11-10): "
        "set CLEARLIFT_FACEBOOK_API_VERSION to v25.0 or newer"
    )
    assert "2635" in message and not isinstance(info.value, AuthRevoked)
    assert len(app.requests) == 1  # permanent: not retried in place


def test_sandbox_answers_expired_versions_by_its_clock_with_error_2635(app, server, clock):
    token = app.tokens.issue(ttl=None)[0]

    def get(version):
        return requests.get(
            f"{server.base_url}/{version}/act_{ACCOUNT}",
            params={"access_token": token, "fields": "currency"},
            timeout=5,
        )

    _at(clock, datetime(2026, 11, 9, 12, 0, tzinfo=UTC))
    assert get("v24.0").status_code == 200  # the day before its expiry
    _at(clock, datetime(2026, 11, 10, 0, 0, tzinfo=UTC))
    for version in ("v24.0", "v19.0"):  # expired, and older than the table knows
        reply = get(version)
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert (error["code"], error["type"]) == (2635, "OAuthException")
        assert error["message"] == (
            "(#2635) You are calling a deprecated version of the Ads API. "
            f"Please update to the latest version: {DEFAULT_VERSION}."
        )
        assert "error_subcode" not in error
    assert get("v25.0").status_code == 200 and get(DEFAULT_VERSION).status_code == 200


# --- "Please reduce the amount of data" (issue 14) ---------------------------------------


@pytest.mark.parametrize("shape", ["plain", "subcode"])
def test_too_much_data_in_either_shape_splits_instead_of_retrying(app, make_client, clock, shape):
    campaigns = app.campaign_rows(ACCOUNT)
    app.configure_account(ACCOUNT, max_sync_rows=2 * len(campaigns), oversize_shape=shape)
    metrics = list(make_client().daily_metrics(SINCE, UNTIL))

    assert as_table(metrics) == expected_metrics(app, SINCE, UNTIL)
    ranges = time_ranges(app)
    assert ranges[:2] == [(SINCE, UNTIL), (SINCE, date(2025, 6, 4))]  # no second try of the whole
    assert clock.slept == [] and app.report_run_ids() == []


def test_sandbox_too_much_data_is_http_500_code_1_without_subcode(app, server, token):
    app.configure_account(ACCOUNT, max_sync_rows=0)
    reply = requests.get(
        f"{server.base_url}/{DEFAULT_VERSION}/act_{ACCOUNT}/insights",
        params={
            "access_token": token,
            "level": "campaign",
            "time_increment": "1",
            "fields": "spend",
            "time_range": json.dumps({"since": "2025-06-01", "until": "2025-06-01"}),
        },
        timeout=5,
    )
    assert reply.status_code == 500
    error = reply.json()["error"]
    assert error["code"] == 1 and "error_subcode" not in error
    assert error["message"] == "Please reduce the amount of data you're asking for, then retry your request"


# --- archived and deleted campaigns (issue 14) ---------------------------------------------


def test_archived_and_deleted_campaigns_and_their_spend_are_read(app, make_client):
    app.configure_account(ACCOUNT, campaigns=7, max_page_rows=3)
    wire = app.campaign_rows(ACCOUNT)
    hidden = {r["id"]: r["status"] for r in wire if r["effective_status"] in ("ARCHIVED", "DELETED")}
    assert sorted(hidden.values()) == ["ARCHIVED", "DELETED"]
    client = make_client()

    campaigns = {c.campaign_id: c.status for c in client.campaigns()}
    metrics = as_table(client.daily_metrics(SINCE, UNTIL))

    assert set(campaigns) == {r["id"] for r in wire}
    assert {cid: campaigns[cid] for cid in hidden} == hidden
    assert metrics == expected_metrics(app, SINCE, UNTIL)
    assert set(hidden) <= {cid for cid, _ in metrics}  # their past spend is real spend
    everything = json.loads(facebook_module.status_filter("x"))[0]["value"]
    assert set(everything) == {"ACTIVE", "PAUSED", "IN_PROCESS", "WITH_ISSUES", "ARCHIVED", "DELETED"}
    for r in app.requests_to(rf"/act_{ACCOUNT}/campaigns$"):
        assert json.loads(r.query["filtering"]) == [
            {"field": "effective_status", "operator": "IN", "value": everything}
        ]
    for r in app.requests_to(rf"/act_{ACCOUNT}/insights$"):
        assert json.loads(r.query["filtering"]) == [
            {"field": "campaign.effective_status", "operator": "IN", "value": everything}
        ]


def test_async_report_keeps_the_status_filter(app, make_client):
    app.configure_account(ACCOUNT, campaigns=7, async_polls=1)
    metrics = as_table(make_client(insights_mode="async").daily_metrics(SINCE, UNTIL))
    assert metrics == expected_metrics(app, SINCE, UNTIL)
    (post,) = [r for r in app.requests_to(rf"/act_{ACCOUNT}/insights$") if r.method == "POST"]
    assert "DELETED" in post.form()["filtering"]


def test_sandbox_a_status_list_missing_a_status_loses_its_rows(app, server, token):
    app.configure_account(ACCOUNT, campaigns=7)
    by_status: dict[str, set[str]] = {}
    for r in app.campaign_rows(ACCOUNT):
        by_status.setdefault(r["effective_status"], set()).add(r["id"])
    all_ids = set().union(*by_status.values())
    base = f"{server.base_url}/{DEFAULT_VERSION}/act_{ACCOUNT}"

    def insight_campaigns(statuses=None):
        params = {
            "access_token": token,
            "level": "campaign",
            "time_increment": "1",
            "fields": "campaign_id,spend",
            "limit": "500",
            "time_range": json.dumps({"since": "2025-06-01", "until": "2025-06-08"}),
        }
        if statuses is not None:
            params["filtering"] = json.dumps(
                [{"field": "campaign.effective_status", "operator": "IN", "value": statuses}]
            )
        return {
            r["campaign_id"]
            for r in requests.get(f"{base}/insights", params=params, timeout=5).json()["data"]
        }

    def edge_campaigns(statuses=None):
        params = {"access_token": token, "fields": "id", "limit": "100"}
        if statuses is not None:
            params["filtering"] = json.dumps(
                [{"field": "effective_status", "operator": "IN", "value": statuses}]
            )
        return {r["id"] for r in requests.get(f"{base}/campaigns", params=params, timeout=5).json()["data"]}

    every = list(facebook_module.CAMPAIGN_STATUSES)
    assert set(by_status) == set(every) and len(all_ids) == 7
    assert insight_campaigns(every) == all_ids == edge_campaigns(every)
    for status in every:
        without = [s for s in every if s != status]
        assert insight_campaigns(without) == all_ids - by_status[status], status
        assert edge_campaigns(without) == all_ids - by_status[status], status
    # No filter at all: Graph's default leaves archived and deleted campaigns out.
    assert insight_campaigns() == edge_campaigns() == all_ids - by_status["ARCHIVED"] - by_status["DELETED"]


# --- endless pagination (issue 16) ---------------------------------------------------------


@pytest.mark.parametrize("fault, why", [("self", "same page twice"), ("same_rows", "repeats the 3 rows")])
def test_endless_campaign_paging_fails_with_a_clear_message(app, make_client, fault, why):
    app.configure_account(ACCOUNT, campaigns=8, max_page_rows=3, endless_paging=fault)
    with pytest.raises(PermanentError, match="endless pagination while reading campaigns") as info:
        list(make_client().campaigns())
    assert why in str(info.value)
    assert len(app.requests_to(rf"/act_{ACCOUNT}/campaigns$")) == 2


def test_endless_insights_paging_fails_with_a_clear_message(app, make_client):
    app.configure_account(ACCOUNT, campaigns=5, max_page_rows=4, endless_paging="same_rows")
    with pytest.raises(
        PermanentError, match=r"endless pagination while reading insights 2025-06-01\.\.2025-06-08"
    ):
        list(make_client().daily_metrics(SINCE, UNTIL))
    assert len(app.requests_to(rf"/act_{ACCOUNT}/insights$")) == 2


# --- long-lived token renewal (issue 14) ---------------------------------------------------


def test_exchanging_a_long_lived_token_that_meta_hands_back_unextended_is_no_renewal(
    app, make_settings, clock
):
    token = app.issue_long_lived(ttl=5 * 86400)
    expires = clock.now() + timedelta(days=5)
    ctx = PlatformContext(settings=make_settings(), account_id=ACCOUNT, clock=clock)

    with pytest.raises(TokenNotExtended) as info:
        refresh_token(ctx, Credentials(token, expires_at=expires))

    assert isinstance(info.value, TransientError)  # the next refresh-tokens run tries again
    assert "same token without extending it" in str(info.value)
    assert expires.strftime("%Y-%m-%d") in str(info.value) and token not in str(info.value)
    (call,) = app.requests_to("/oauth/access_token")
    assert call.query["fb_exchange_token"] == token
    assert app.tokens.check(token) == "ok"


def test_exchanging_a_long_lived_token_that_meta_renews_stores_the_new_one(
    app, make_settings, make_client, clock
):
    app.long_lived_renewal = "renewed"
    token = app.issue_long_lived(ttl=5 * 86400)
    ctx = PlatformContext(settings=make_settings(), account_id=ACCOUNT, clock=clock)

    grant = refresh_token(ctx, Credentials(token, expires_at=clock.now() + timedelta(days=5)))

    assert grant.access_token != token
    assert grant.expires_at == clock.now() + timedelta(seconds=EXCHANGED_TOKEN_TTL)
    assert make_client(access_token=grant.access_token).account().currency == "USD"
    # A token Meta hands out by an exchange is long-lived: exchanging it at once changes nothing.
    app.long_lived_renewal = "unchanged"
    with pytest.raises(TokenNotExtended):
        refresh_token(ctx, Credentials(grant.access_token, expires_at=grant.expires_at))
