"""Google Ads client against the Google sandbox over real HTTP on loopback.

Expected values are computed here from the raw wire rows the sandbox serves, with plain
``int``/``Decimal`` arithmetic, never with the client's own parsing."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import requests

from clearlift_cli.errors import (
    AuthRevoked,
    MissingAppCredentials,
    PermanentError,
    RateLimited,
    TokenExpired,
    TransientError,
)
from clearlift_cli.platforms import google
from clearlift_cli.platforms.base import Campaign, Credentials, DailyMetric, PlatformContext
from clearlift_cli.sandbox import APP_CREDENTIALS
from clearlift_cli.sandbox.google import GoogleAdsApp, google_error
from clearlift_cli.sandbox.server import SandboxServer
from clearlift_cli.settings import ENV_NAMES, Settings, resolve
from clearlift_cli.timeutil import FrozenClock

CUSTOMER = "123-456-7890"
CID = "1234567890"
SINCE, UNTIL = date(2024, 1, 1), date(2024, 1, 10)


@pytest.fixture
def app() -> GoogleAdsApp:
    # Small batches so a ten-day window streams as several batches.
    return GoogleAdsApp(batch_size=4)


@pytest.fixture
def server(app):
    srv = SandboxServer(app).start()
    yield srv
    # stop() waits out serve_forever's 0.5 s poll; let that pass off the test's clock.
    threading.Thread(target=srv.stop, daemon=True).start()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2024, 2, 1, 12, 0, tzinfo=timezone.utc))


@pytest.fixture
def settings(tmp_path, server) -> Settings:
    return make_settings(tmp_path, server)


def make_settings(tmp_path, server, **flags) -> Settings:
    by_env = {env: name for name, env in ENV_NAMES.items()}
    base = {by_env[k]: v for k, v in APP_CREDENTIALS.items() if k.startswith("GOOGLE")}
    base.update(home=str(tmp_path), google_ads_url=server.base_url,
                google_oauth_url=server.base_url, http_timeout=2)
    base.update(flags)
    return resolve(flags=base, environ={})


def make_client(settings, clock, token, *, account=CUSTOMER, connection_settings=None,
                refresh=None, progress=None) -> google.GoogleAdsClient:
    ctx = PlatformContext(settings=settings, account_id=account, clock=clock,
                          connection_settings=connection_settings or {}, progress=progress)
    return google.CLIENT(ctx, Credentials(access_token=token, refresh_token=refresh))


@pytest.fixture
def token(app) -> str:
    access, _ = app.tokens.issue(ttl=3600)
    return access


def expected_metric(row: dict) -> DailyMetric:
    m = row["metrics"]
    value = Decimal(str(m.get("conversionsValue", 0))) * 1_000_000
    assert value == value.to_integral_value()  # the sandbox serves whole cents
    return DailyMetric(
        campaign_id=row["campaign"]["id"],
        metric_date=date.fromisoformat(row["segments"]["date"]),
        impressions=int(m.get("impressions", "0")),
        clicks=int(m.get("clicks", "0")),
        spend_micros=int(m.get("costMicros", "0")),
        conversions=Decimal(str(m.get("conversions", 0))),
        conversion_value_micros=int(value),
    )


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in str(exc)
        assert secret not in repr(exc.args)


# --- data -------------------------------------------------------------------------------------


def test_account_reads_currency_time_zone_and_name(app, settings, clock, token):
    app.configure_account(CID, currency="EUR", time_zone="Europe/Berlin", name="Acme GmbH")

    account = make_client(settings, clock, token).account()

    assert (account.account_id, account.currency, account.time_zone, account.name) == (
        CID, "EUR", "Europe/Berlin", "Acme GmbH")
    sent = app.requests_to("googleAds:searchStream")[-1]
    assert sent.path == f"/{settings.google_ads_api_version}/customers/{CID}/googleAds:searchStream"
    assert sent.headers["authorization"] == f"Bearer {token}"
    assert sent.headers["developer-token"] == APP_CREDENTIALS["GOOGLE_ADS_DEVELOPER_TOKEN"]
    assert "login-customer-id" not in sent.headers
    assert "FROM customer" in sent.json()["query"]


def test_campaigns_exact_with_budgets_and_removed_filtered(app, settings, clock, token):
    app.configure_account(CID, campaigns=6, removed=2)
    every = app.campaign_rows(CID, include_removed=True)
    removed_ids = {r["campaign"]["id"] for r in every if r["campaign"]["status"] == "REMOVED"}
    assert len(every) == 6 and len(removed_ids) == 2

    campaigns = list(make_client(settings, clock, token).campaigns())

    expected = [
        Campaign(campaign_id=r["campaign"]["id"], campaign_name=r["campaign"]["name"],
                 status=r["campaign"]["status"], objective=None,
                 channel=r["campaign"]["advertisingChannelType"],
                 budget_micros=int(r["campaignBudget"]["amountMicros"]))
        for r in every if r["campaign"]["id"] not in removed_ids
    ]
    assert campaigns == expected
    assert not removed_ids & {c.campaign_id for c in campaigns}
    assert all(isinstance(c.budget_micros, int) and c.budget_micros > 0 for c in campaigns)


def test_daily_metrics_over_many_batches_are_exact(app, settings, clock, token):
    served = app.metric_rows(CID, SINCE, UNTIL)
    progress: list[tuple[str, int, int | None]] = []

    metrics = list(make_client(settings, clock, token,
                               progress=lambda *a: progress.append(a)).daily_metrics(SINCE, UNTIL))

    assert len(served) > 3 * app.batch_size  # the answer really came as several batches
    assert metrics == [expected_metric(r) for r in served]
    assert {m.metric_date for m in metrics} == {SINCE + timedelta(days=i) for i in range(10)}
    assert len(app.requests_to("searchStream")) == 1
    query = app.requests_to("searchStream")[0].json()["query"]
    assert "segments.date BETWEEN '2024-01-01' AND '2024-01-10'" in query
    batches = -(-len(served) // app.batch_size)
    assert [p[1] for p in progress] == [min(len(served), app.batch_size * (i + 1)) for i in range(batches)]
    assert {p[0] for p in progress} == {"metrics"}
    # A float on the way would show: these doubles are not exact in binary.
    inexact = [r for r in served if "conversionsValue" in r["metrics"]
               and int(r["metrics"]["conversionsValue"] * 1_000_000)
               != int(Decimal(str(r["metrics"]["conversionsValue"])) * 1_000_000)]
    assert inexact
    assert all(isinstance(m.conversions, Decimal) for m in metrics)
    assert any(m.conversions != m.conversions.to_integral_value() for m in metrics)


def test_missing_metric_fields_read_as_zero(app, settings, clock, token):
    served = app.metric_rows(CID, SINCE, UNTIL)
    no_conversions = [i for i, r in enumerate(served) if "conversions" not in r["metrics"]]
    no_clicks = [i for i, r in enumerate(served) if "clicks" not in r["metrics"]]
    assert no_conversions and no_clicks

    metrics = list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL))

    for i in no_conversions:
        assert metrics[i].conversions == Decimal(0) and metrics[i].conversion_value_micros == 0
        assert metrics[i].impressions == int(served[i]["metrics"]["impressions"]) > 0
    for i in no_clicks:
        assert metrics[i].clicks == 0 and metrics[i].spend_micros == 0


def test_empty_stream_yields_nothing(app, settings, clock, token):
    app.configure_account(CID, campaigns=0)

    assert list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL)) == []
    assert list(make_client(settings, clock, token).campaigns()) == []


# --- customer ids and headers -------------------------------------------------------------------


def test_dashes_in_customer_id_are_stripped_and_bad_ids_refused(app, settings, clock, token):
    list(make_client(settings, clock, token, account="123-456-7890").campaigns())
    assert app.requests_to("searchStream")[-1].path.endswith(f"/customers/{CID}/googleAds:searchStream")

    with pytest.raises(PermanentError, match="not a Google Ads customer id"):
        list(make_client(settings, clock, token, account="act_123").campaigns())
    assert len(app.requests_to("searchStream")) == 1


def test_login_customer_id_header_reaches_manager_accounts(tmp_path, server, app, settings, clock, token):
    app.configure_account(CID, manager_id="9876543210")

    with pytest.raises(PermanentError, match="USER_PERMISSION_DENIED") as denied:
        list(make_client(settings, clock, token).campaigns())
    assert not isinstance(denied.value, AuthRevoked)
    assert_no_secret(denied.value, token)

    via_settings = make_settings(tmp_path, server, google_ads_login_customer_id="987-654-3210")
    assert list(make_client(via_settings, clock, token).campaigns())
    assert app.requests_to("searchStream")[-1].headers["login-customer-id"] == "9876543210"

    via_connection = list(make_client(settings, clock, token,
                                      connection_settings={"login_customer_id": "9876543210"}).campaigns())
    assert via_connection == list(make_client(via_settings, clock, token).campaigns())


def test_developer_token_is_required_and_checked(tmp_path, server, app, clock, token):
    no_dev = make_settings(tmp_path, server).with_overrides(google_ads_developer_token=None)
    with pytest.raises(MissingAppCredentials):
        list(make_client(no_dev, clock, token).campaigns())
    assert app.requests == []

    wrong = make_settings(tmp_path, server, google_ads_developer_token="not-the-sandbox-developer-token")
    with pytest.raises(PermanentError, match="DEVELOPER_TOKEN_INVALID") as exc:
        list(make_client(wrong, clock, token).campaigns())
    assert not isinstance(exc.value, AuthRevoked)  # the app's fault, not the user's grant
    assert_no_secret(exc.value, token, "not-the-sandbox-developer-token")
    assert app.requests[-1].headers["developer-token"] == "not-the-sandbox-developer-token"


def test_disabled_customer_is_permanent_with_the_platform_message(app, settings, clock, token):
    app.configure_account(CID, enabled=False)
    raw = requests.post(
        f"{settings.google_ads_url}/{settings.google_ads_api_version}/customers/{CID}/googleAds:searchStream",
        json={"query": google.CAMPAIGNS_QUERY}, timeout=2,
        headers={"Authorization": f"Bearer {token}",
                 "developer-token": APP_CREDENTIALS["GOOGLE_ADS_DEVELOPER_TOKEN"]})
    assert raw.status_code == 403 and isinstance(raw.json(), list)  # wrapped: [{"error": ...}]

    with pytest.raises(PermanentError, match="CUSTOMER_NOT_ENABLED.*not yet enabled") as exc:
        list(make_client(settings, clock, token).campaigns())
    assert type(exc.value) is PermanentError

    app.wrap_stream_errors = False  # the bare {"error": ...} shape reads the same
    with pytest.raises(PermanentError, match="CUSTOMER_NOT_ENABLED"):
        list(make_client(settings, clock, token).campaigns())


def test_bad_gaql_is_permanent(app, settings, clock, token):
    client = make_client(settings, clock, token)
    with pytest.raises(PermanentError, match="UNRECOGNIZED_FIELD.*campaign.colour") as exc:
        list(client.search_stream("SELECT campaign.colour FROM campaign"))
    assert type(exc.value) is PermanentError
    assert len(app.requests_to("searchStream")) == 1  # not retried


# --- rate limits --------------------------------------------------------------------------------


def test_short_quota_wait_is_slept_then_succeeds(app, settings, clock, token):
    app.exhaust_quota(times=1, retry_delay=2, rate_scope="ACCOUNT")

    campaigns = list(make_client(settings, clock, token).campaigns())

    assert [c.campaign_id for c in campaigns] == [r["campaign"]["id"] for r in app.campaign_rows(CID)]
    assert clock.slept == [2.0]
    assert len(app.requests_to("searchStream")) == 2


def test_long_developer_quota_wait_defers_the_whole_app(app, settings, clock, token):
    app.exhaust_quota(times=1, retry_delay=40, rate_scope="DEVELOPER")

    with pytest.raises(RateLimited) as exc:
        list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL))

    assert exc.value.retry_after == 40 and exc.value.scope == "app"
    assert clock.slept == [] and len(app.requests_to("searchStream")) == 1
    assert_no_secret(exc.value, token)


def test_long_account_quota_wait_defers_only_the_account(app, settings, clock, token):
    app.exhaust_quota(times=1, retry_delay=3600, rate_scope="ACCOUNT")

    with pytest.raises(RateLimited) as exc:
        list(make_client(settings, clock, token).campaigns())

    assert exc.value.retry_after == 3600 and exc.value.scope == "account"


def test_429_without_retry_delay_waits_the_default(app, settings, clock, token):
    app.faults.add("status", path="searchStream", status=429,
                   body=[google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")])

    with pytest.raises(RateLimited) as exc:
        list(make_client(settings, clock, token).campaigns())

    assert exc.value.retry_after == google.DEFAULT_RETRY_DELAY_SECONDS == 30
    assert exc.value.scope == "account"


# --- tokens -------------------------------------------------------------------------------------


def test_expired_token_raises_token_expired_without_retrying(app, settings, clock, token):
    app.tokens.expire(token)

    with pytest.raises(TokenExpired) as exc:
        list(make_client(settings, clock, token).campaigns())

    assert len(app.requests_to("searchStream")) == 1
    assert_no_secret(exc.value, token)


@pytest.mark.parametrize("how", ["revoked", "unknown"])
def test_revoked_or_unknown_token_is_an_ambiguous_auth_failure(app, settings, clock, token, how):
    if how == "revoked":
        app.tokens.revoke(token)
    else:
        token = "ya29.never-issued-by-this-sandbox"

    with pytest.raises(AuthRevoked, match="OAUTH_TOKEN_INVALID") as exc:
        list(make_client(settings, clock, token).campaigns())

    assert exc.value.definitive is False
    assert_no_secret(exc.value, token)


def test_refresh_token_grants_a_working_access_token(app, settings, clock):
    old, refresh = app.tokens.issue(ttl=3600)
    app.tokens.expire(old)
    ctx = PlatformContext(settings=settings, account_id=CUSTOMER, clock=clock)

    grant = google.refresh_token(ctx, Credentials(access_token=old, refresh_token=refresh))

    assert grant is not None and grant.access_token != old
    assert grant.expires_at == clock.now() + timedelta(seconds=3599)
    assert grant.refresh_token is None  # Google keeps the old refresh token
    form = app.requests_to("^/token$")[-1].form()
    assert form == {"client_id": APP_CREDENTIALS["GOOGLE_CLIENT_ID"],
                    "client_secret": APP_CREDENTIALS["GOOGLE_CLIENT_SECRET"],
                    "refresh_token": refresh, "grant_type": "refresh_token"}
    assert list(make_client(settings, clock, grant.access_token).campaigns())


def test_refresh_token_returns_a_rotated_refresh_token(app, settings, clock):
    app.rotate_refresh_tokens = True
    app.refresh_ttl = 600
    _, refresh = app.tokens.issue()
    ctx = PlatformContext(settings=settings, account_id=CUSTOMER, clock=clock)

    grant = google.refresh_token(ctx, Credentials(access_token="x" * 20, refresh_token=refresh))

    assert grant.refresh_token and grant.refresh_token != refresh
    assert grant.expires_at == clock.now() + timedelta(seconds=600)
    again = google.refresh_token(ctx, Credentials(access_token=grant.access_token,
                                                  refresh_token=grant.refresh_token))
    assert again.access_token not in (grant.access_token, "x" * 20)


def test_refresh_with_revoked_refresh_token_is_definitive(app, settings, clock):
    old, refresh = app.tokens.issue()
    app.tokens.revoke(refresh)
    ctx = PlatformContext(settings=settings, account_id=CUSTOMER, clock=clock)

    with pytest.raises(AuthRevoked) as exc:
        google.refresh_token(ctx, Credentials(access_token=old, refresh_token=refresh))

    assert exc.value.definitive is True
    assert exc.value.reason == "Token has been expired or revoked."
    assert len(app.requests_to("^/token$")) == 1
    assert_no_secret(exc.value, old, refresh, APP_CREDENTIALS["GOOGLE_CLIENT_SECRET"])


def test_refresh_without_stored_refresh_token_is_definitive(app, settings, clock):
    ctx = PlatformContext(settings=settings, account_id=CUSTOMER, clock=clock)

    with pytest.raises(AuthRevoked) as exc:
        google.refresh_token(ctx, Credentials(access_token="ya29.some-access-token"))

    assert exc.value.definitive is True and exc.value.reason == "no refresh token stored"
    assert app.requests == []


def test_refresh_needs_the_app_client_credentials(tmp_path, server, app, clock):
    _, refresh = app.tokens.issue()
    missing = make_settings(tmp_path, server).with_overrides(google_client_secret=None)
    with pytest.raises(MissingAppCredentials):
        google.refresh_token(PlatformContext(settings=missing, account_id=CUSTOMER, clock=clock),
                             Credentials(access_token="a" * 20, refresh_token=refresh))
    assert app.requests == []

    wrong = make_settings(tmp_path, server, google_client_secret="wrong-client-secret-value")
    with pytest.raises(PermanentError, match="invalid_client") as exc:
        google.refresh_token(PlatformContext(settings=wrong, account_id=CUSTOMER, clock=clock),
                             Credentials(access_token="a" * 20, refresh_token=refresh))
    assert not isinstance(exc.value, AuthRevoked)
    assert_no_secret(exc.value, "wrong-client-secret-value", refresh)


def test_token_endpoint_outage_is_transient(app, settings, clock):
    _, refresh = app.tokens.issue()
    app.faults.add("status", path="^/token$", times=3, status=503,
                   body={"error": "server_error", "error_description": "try later"})

    with pytest.raises(TransientError):
        google.refresh_token(PlatformContext(settings=settings, account_id=CUSTOMER, clock=clock),
                             Credentials(access_token="a" * 20, refresh_token=refresh))
    assert len(app.requests_to("^/token$")) == 3


# --- server trouble -----------------------------------------------------------------------------


def test_5xx_storm_is_transient_after_retries(app, settings, clock, token):
    app.faults.add("status", path="searchStream", times=3, status=503,
                   body=[google_error(503, "UNAVAILABLE", "The service is currently unavailable.")])

    with pytest.raises(TransientError, match="UNAVAILABLE") as exc:
        list(make_client(settings, clock, token).campaigns())

    assert not isinstance(exc.value, RateLimited)
    assert len(app.requests_to("searchStream")) == 3
    assert clock.slept == [0.5, 1.0]


def test_one_5xx_then_success(app, settings, clock, token):
    app.faults.add("status", path="searchStream", times=1, status=500,
                   body={"error": {"code": 500, "status": "INTERNAL", "message": "Internal error."}})

    metrics = list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL))

    assert metrics == [expected_metric(r) for r in app.metric_rows(CID, SINCE, UNTIL)]


@pytest.mark.parametrize("kind", ["truncate", "malformed", "html"])
def test_broken_bodies_are_transient(app, settings, clock, token, kind):
    app.faults.add(kind, path="searchStream", times=3, status=502)

    with pytest.raises(TransientError) as exc:
        list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL))

    assert type(exc.value) is TransientError
    assert len(app.requests_to("searchStream")) == 3
    assert_no_secret(exc.value, token)


def test_truncated_body_once_is_retried_to_exact_rows(app, settings, clock, token):
    app.faults.add("truncate", path="searchStream", times=1)

    metrics = list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL))

    assert metrics == [expected_metric(r) for r in app.metric_rows(CID, SINCE, UNTIL)]
    assert len(app.requests_to("searchStream")) == 2


def test_stream_failing_midway_never_yields_partial_data(app, settings, clock, token):
    app.break_stream(times=1, after_batches=2)
    metrics = list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL))
    assert metrics == [expected_metric(r) for r in app.metric_rows(CID, SINCE, UNTIL)]

    app.break_stream(times=3, after_batches=2)
    yielded: list[DailyMetric] = []
    with pytest.raises(TransientError, match="INTERNAL"):
        for metric in make_client(settings, clock, token).daily_metrics(SINCE, UNTIL):
            yielded.append(metric)
    assert yielded == []


def test_platform_text_echoing_secrets_is_redacted(app, settings, clock, token):
    dev = APP_CREDENTIALS["GOOGLE_ADS_DEVELOPER_TOKEN"]
    app.faults.add("status", path="searchStream", status=400, body=[google_error(
        400, "INVALID_ARGUMENT", f"Bad request for Bearer {token}", {"requestError": "INVALID_INPUT"},
        detail_message=f"Developer token '{dev}' with access token {token} is not allowed.")])

    with pytest.raises(PermanentError, match="is not allowed") as exc:
        list(make_client(settings, clock, token).campaigns())

    assert_no_secret(exc.value, token, dev)


# --- the sandbox's paged variant ------------------------------------------------------------------


def test_sandbox_search_pages_match_the_stream(app, settings, token):
    app.page_size = 7
    query = google.METRICS_QUERY.format(since=SINCE, until=UNTIL)
    url = f"{settings.google_ads_url}/{settings.google_ads_api_version}/customers/{CID}/googleAds:search"
    headers = {"Authorization": f"Bearer {token}",
               "developer-token": APP_CREDENTIALS["GOOGLE_ADS_DEVELOPER_TOKEN"]}
    rows, page_token, pages = [], None, 0
    while True:
        body = requests.post(url, json={"query": query, "pageToken": page_token},
                             headers=headers, timeout=2).json()
        rows += body.get("results", [])
        pages += 1
        page_token = body.get("nextPageToken")
        if not page_token:
            break

    assert rows == app.metric_rows(CID, SINCE, UNTIL)
    assert pages == -(-len(rows) // 7) and pages > 1
    bad = requests.post(url, json={"query": query, "pageToken": "bm9wZQ=="}, headers=headers, timeout=2)
    assert bad.status_code == 400
    failure = bad.json()["error"]["details"][0]["errors"][0]
    assert failure["errorCode"] == {"requestError": "INVALID_PAGE_TOKEN"}
