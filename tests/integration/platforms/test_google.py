"""Google Ads client against the Google sandbox over real HTTP on loopback.

Expected values are computed here from the raw wire rows the sandbox serves, with plain
``int``/``Decimal`` arithmetic, never with the client's own parsing."""

from __future__ import annotations

import gc
import json
import tracemalloc
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import requests

from clearlift_cli.errors import (
    AccountUnavailable,
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
    with SandboxServer(app) as srv:
        yield srv


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2024, 2, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def settings(tmp_path, server) -> Settings:
    return make_settings(tmp_path, server)


def make_settings(tmp_path, server, **flags) -> Settings:
    by_env = {env: name for name, env in ENV_NAMES.items()}
    base = {by_env[k]: v for k, v in APP_CREDENTIALS.items() if k.startswith("GOOGLE")}
    base.update(
        home=str(tmp_path), google_ads_url=server.base_url, google_oauth_url=server.base_url, http_timeout=2
    )
    base.update(flags)
    return resolve(flags=base, environ={})


def make_client(
    settings, clock, token, *, account=CUSTOMER, connection_settings=None, refresh=None, progress=None
) -> google.GoogleAdsClient:
    ctx = PlatformContext(
        settings=settings,
        account_id=account,
        clock=clock,
        connection_settings=connection_settings or {},
        progress=progress,
    )
    return google.GoogleAdsClient(ctx, Credentials(access_token=token, refresh_token=refresh))


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
        CID,
        "EUR",
        "Europe/Berlin",
        "Acme GmbH",
    )
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
        Campaign(
            campaign_id=r["campaign"]["id"],
            campaign_name=r["campaign"]["name"],
            status=r["campaign"]["status"],
            objective=None,
            channel=r["campaign"]["advertisingChannelType"],
            budget_micros=int(r["campaignBudget"]["amountMicros"]),
        )
        for r in every
        if r["campaign"]["id"] not in removed_ids
    ]
    assert campaigns == expected
    assert not removed_ids & {c.campaign_id for c in campaigns}
    assert all(isinstance(c.budget_micros, int) and c.budget_micros > 0 for c in campaigns)


def test_daily_metrics_over_many_batches_are_exact(app, settings, clock, token):
    served = app.metric_rows(CID, SINCE, UNTIL)
    progress: list[tuple[str, int, int | None]] = []

    metrics = list(
        make_client(settings, clock, token, progress=lambda *a: progress.append(a)).daily_metrics(
            SINCE, UNTIL
        )
    )

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
    inexact = [
        r
        for r in served
        if "conversionsValue" in r["metrics"]
        and int(r["metrics"]["conversionsValue"] * 1_000_000)
        != int(Decimal(str(r["metrics"]["conversionsValue"])) * 1_000_000)
    ]
    assert inexact
    assert all(isinstance(m.conversions, Decimal) for m in metrics)
    assert any(m.conversions != m.conversions.to_integral_value() for m in metrics)


def test_a_gzip_stream_is_decoded_batch_by_batch_and_exact(app, settings, clock, token):
    """Google's front end compresses searchStream for a client that accepts gzip (clearlift's
    requests say they do): the answer is decompressed as it arrives and decoded as before."""
    app.gzip = True
    served = app.metric_rows(CID, SINCE, UNTIL)
    metrics = list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL))
    assert app.gzipped == 1 and len(served) > 3 * app.batch_size
    assert metrics == [expected_metric(r) for r in served]


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

    via_connection = list(
        make_client(
            settings, clock, token, connection_settings={"login_customer_id": "9876543210"}
        ).campaigns()
    )
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
        json={"query": google.CAMPAIGNS_QUERY},
        timeout=2,
        headers={
            "Authorization": f"Bearer {token}",
            "developer-token": APP_CREDENTIALS["GOOGLE_ADS_DEVELOPER_TOKEN"],
        },
    )
    assert raw.status_code == 403 and isinstance(raw.json(), list)  # wrapped: [{"error": ...}]

    with pytest.raises(PermanentError, match="CUSTOMER_NOT_ENABLED.*not yet enabled") as exc:
        list(make_client(settings, clock, token).campaigns())
    # About this account, not the user's grant; the message says what to do.
    assert type(exc.value) is AccountUnavailable and exc.value.account_id == CID
    assert "re-enable it in Google Ads" in str(exc.value)

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
    app.faults.add(
        "status",
        path="searchStream",
        status=429,
        body=[google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")],
    )

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
    assert form == {
        "client_id": APP_CREDENTIALS["GOOGLE_CLIENT_ID"],
        "client_secret": APP_CREDENTIALS["GOOGLE_CLIENT_SECRET"],
        "refresh_token": refresh,
        "grant_type": "refresh_token",
    }
    assert list(make_client(settings, clock, grant.access_token).campaigns())


def test_refresh_token_returns_a_rotated_refresh_token(app, settings, clock):
    app.rotate_refresh_tokens = True
    app.refresh_ttl = 600
    _, refresh = app.tokens.issue()
    ctx = PlatformContext(settings=settings, account_id=CUSTOMER, clock=clock)

    grant = google.refresh_token(ctx, Credentials(access_token="x" * 20, refresh_token=refresh))

    assert grant.refresh_token and grant.refresh_token != refresh
    assert grant.expires_at == clock.now() + timedelta(seconds=600)
    again = google.refresh_token(
        ctx, Credentials(access_token=grant.access_token, refresh_token=grant.refresh_token)
    )
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
        google.refresh_token(
            PlatformContext(settings=missing, account_id=CUSTOMER, clock=clock),
            Credentials(access_token="a" * 20, refresh_token=refresh),
        )
    assert app.requests == []

    wrong = make_settings(tmp_path, server, google_client_secret="wrong-client-secret-value")
    with pytest.raises(PermanentError, match="invalid_client") as exc:
        google.refresh_token(
            PlatformContext(settings=wrong, account_id=CUSTOMER, clock=clock),
            Credentials(access_token="a" * 20, refresh_token=refresh),
        )
    assert not isinstance(exc.value, AuthRevoked)
    assert_no_secret(exc.value, "wrong-client-secret-value", refresh)


def test_token_endpoint_outage_is_transient(app, settings, clock):
    _, refresh = app.tokens.issue()
    app.faults.add(
        "status",
        path="^/token$",
        times=3,
        status=503,
        body={"error": "server_error", "error_description": "try later"},
    )

    with pytest.raises(TransientError):
        google.refresh_token(
            PlatformContext(settings=settings, account_id=CUSTOMER, clock=clock),
            Credentials(access_token="a" * 20, refresh_token=refresh),
        )
    assert len(app.requests_to("^/token$")) == 3


# --- server trouble -----------------------------------------------------------------------------


def test_5xx_storm_is_transient_after_retries(app, settings, clock, token):
    app.faults.add(
        "status",
        path="searchStream",
        times=3,
        status=503,
        body=[google_error(503, "UNAVAILABLE", "The service is currently unavailable.")],
    )

    with pytest.raises(TransientError, match="UNAVAILABLE") as exc:
        list(make_client(settings, clock, token).campaigns())

    assert not isinstance(exc.value, RateLimited)
    assert len(app.requests_to("searchStream")) == 3
    assert clock.slept == [0.5, 1.0]


def test_one_5xx_then_success(app, settings, clock, token):
    app.faults.add(
        "status",
        path="searchStream",
        times=1,
        status=500,
        body={"error": {"code": 500, "status": "INTERNAL", "message": "Internal error."}},
    )

    metrics = list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL))

    assert metrics == [expected_metric(r) for r in app.metric_rows(CID, SINCE, UNTIL)]


@pytest.mark.parametrize("kind", ["malformed", "html"])
def test_broken_bodies_are_transient(app, settings, clock, token, kind):
    app.faults.add(kind, path="searchStream", times=3, status=502)

    with pytest.raises(TransientError) as exc:
        list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL))

    assert type(exc.value) is TransientError
    assert len(app.requests_to("searchStream")) == 3
    assert_no_secret(exc.value, token)


def test_truncated_stream_raises_after_the_rows_it_had(app, settings, clock, token):
    # Rows arrive batch by batch: a stream cut midway has yielded some rows when it ends
    # early, so it cannot be retried in place; the caller's transaction drops them (see
    # tests/e2e/test_consume_google.py) and the next call is exact.
    app.faults.add("truncate", path="searchStream", times=1)
    yielded: list[DailyMetric] = []
    with pytest.raises(TransientError, match="truncated") as exc:
        for metric in make_client(settings, clock, token).daily_metrics(SINCE, UNTIL):
            yielded.append(metric)
    assert type(exc.value) is TransientError
    served = [expected_metric(r) for r in app.metric_rows(CID, SINCE, UNTIL)]
    assert yielded and yielded == served[: len(yielded)] and len(yielded) < len(served)
    assert len(app.requests_to("searchStream")) == 1

    assert list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL)) == served


def test_stream_cut_before_its_first_batch_is_retried_in_place(app, settings, clock, token):
    app.configure_account(CID, campaigns=1)  # one small batch: half of it is no batch at all
    app.faults.add("truncate", path="searchStream", times=2)

    campaigns = list(make_client(settings, clock, token).campaigns())

    assert [c.campaign_id for c in campaigns] == [r["campaign"]["id"] for r in app.campaign_rows(CID)]
    assert len(app.requests_to("searchStream")) == 3
    assert clock.slept == [0.5, 1.0]


def test_stream_failing_midway_raises_after_the_earlier_batches(app, settings, clock, token):
    served = [expected_metric(r) for r in app.metric_rows(CID, SINCE, UNTIL)]
    app.break_stream(times=1, after_batches=0)  # before any batch: retried in place
    assert list(make_client(settings, clock, token).daily_metrics(SINCE, UNTIL)) == served
    assert len(app.requests_to("searchStream")) == 2

    app.break_stream(times=1, after_batches=2)
    yielded: list[DailyMetric] = []
    with pytest.raises(TransientError, match="INTERNAL"):
        for metric in make_client(settings, clock, token).daily_metrics(SINCE, UNTIL):
            yielded.append(metric)
    assert yielded == served[: 2 * app.batch_size]  # the two batches before the error


def test_stream_is_decoded_batch_by_batch_in_flat_memory(app, settings, clock, token):
    # 16,000 rows in batches of 200, served as one prebuilt answer (so the sandbox allocates
    # nothing while traced). Read whole, the answer's bytes, its text and its rows would
    # take several times its size; decoded batch by batch, the peak does not grow with it
    # (measured: 0.73 MB for answers of 0.9, 2.8 and 5.7 MB).
    app.configure_account(CID, campaigns=200, removed=0)
    rows = app.metric_rows(CID, SINCE, SINCE + timedelta(days=9)) * 10
    rows = rows[:16_000]
    body = json.dumps(
        [{"results": rows[i : i + 200], "fieldMask": "x", "requestId": "r"} for i in range(0, len(rows), 200)]
    ).encode()
    del rows
    client = make_client(settings, clock, token)
    list(client.campaigns())  # first request: lazy imports and pools are not the answer's
    app.faults.add("status", path="searchStream", status=200, body=body)

    gc.collect()
    tracemalloc.start()
    try:
        count = sum(1 for _ in client.daily_metrics(SINCE, UNTIL))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert count == 16_000 and len(body) > 3_500_000
    assert peak < len(body) / 4, f"peak {peak:,} bytes for a {len(body):,}-byte answer"


def test_one_oversized_batch_fails_clearly_instead_of_filling_memory(app, settings, clock, token):
    client = make_client(settings, clock, token)
    client.http.max_response_bytes = 200_000  # the sandbox's one batch of this window is larger
    app.configure_account(CID, campaigns=20)
    app.batch_size = 10_000

    with pytest.raises(
        PermanentError,
        match="one element of the streamed answer is larger than 0.191 MiB; refused to keep memory bounded",
    ) as exc:
        list(client.daily_metrics(SINCE, UNTIL + timedelta(days=300)))

    assert type(exc.value) is PermanentError
    assert len(app.requests_to("searchStream")) == 1  # the same request would bring it again


def test_oversized_error_answer_is_refused_too(app, settings, clock, token):
    client = make_client(settings, clock, token)
    client.http.max_response_bytes = 100_000
    app.faults.add("status", path="searchStream", status=500, body=b"x" * 300_000)

    with pytest.raises(PermanentError, match="the answer is larger than"):
        list(client.campaigns())


def test_platform_text_echoing_secrets_is_redacted(app, settings, clock, token):
    dev = APP_CREDENTIALS["GOOGLE_ADS_DEVELOPER_TOKEN"]
    app.faults.add(
        "status",
        path="searchStream",
        status=400,
        body=[
            google_error(
                400,
                "INVALID_ARGUMENT",
                f"Bad request for Bearer {token}",
                {"requestError": "INVALID_INPUT"},
                detail_message=f"Developer token '{dev}' with access token {token} is not allowed.",
            )
        ],
    )

    with pytest.raises(PermanentError, match="is not allowed") as exc:
        list(make_client(settings, clock, token).campaigns())

    assert_no_secret(exc.value, token, dev)


# --- the sandbox's paged variant ------------------------------------------------------------------


def test_sandbox_search_pages_match_the_stream(app, settings, token):
    app.page_size = 7
    query = google.METRICS_QUERY.format(since=SINCE, until=UNTIL)
    url = f"{settings.google_ads_url}/{settings.google_ads_api_version}/customers/{CID}/googleAds:search"
    headers = {
        "Authorization": f"Bearer {token}",
        "developer-token": APP_CREDENTIALS["GOOGLE_ADS_DEVELOPER_TOKEN"],
    }
    rows, page_token, pages = [], None, 0
    while True:
        body = requests.post(
            url, json={"query": query, "pageToken": page_token}, headers=headers, timeout=2
        ).json()
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


# --- API versions -------------------------------------------------------------------------------


def test_sunset_version_gets_googles_html_404_and_fails_for_good(tmp_path, server, app, token):
    today = FrozenClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
    app.clock = today.time  # the sandbox decides what is sunset on the same day
    old = make_settings(tmp_path, server, google_ads_api_version="v21")
    raw = requests.post(
        f"{old.google_ads_url}/v21/customers/{CID}/googleAds:searchStream",
        json={"query": google.CAMPAIGNS_QUERY},
        timeout=2,
    )
    assert raw.status_code == 404 and raw.headers["Content-Type"].startswith("text/html")
    assert raw.text.startswith("<!DOCTYPE html>") and "was not found on this server" in raw.text

    with pytest.raises(PermanentError) as exc:
        make_client(old, today, token).account()

    assert str(exc.value) == (
        "Google Ads API v21 is no longer served (sunset 2026-08-05): "
        "set CLEARLIFT_GOOGLE_ADS_API_VERSION to v23 or newer"
    )
    assert len(app.requests_to("searchStream")) == 2  # ours was sent once: no retries
    # The same day, the current version is served.
    assert make_client(make_settings(tmp_path, server), today, token).account().account_id == CID


def test_a_404_on_a_live_version_still_points_at_the_url(tmp_path, server, app, token):
    app.faults.add("html", path="searchStream", status=404)
    with pytest.raises(PermanentError, match="HTTP 404, check CLEARLIFT_GOOGLE_ADS_URL"):
        make_client(
            make_settings(tmp_path, server), FrozenClock(datetime(2026, 11, 29, tzinfo=UTC)), token
        ).account()


def test_unsupported_version_answer_names_the_setting(tmp_path, server, app, token):
    # Before the 404, Google answered a deprecated version with UNSUPPORTED_VERSION.
    app.faults.add(
        "status",
        path="searchStream",
        status=400,
        body=[
            google_error(
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                {"requestError": "UNSUPPORTED_VERSION"},
                detail_message="Version v22 is deprecated. Requests to this version will be blocked.",
            )
        ],
    )
    old = make_settings(tmp_path, server, google_ads_api_version="v22")
    with pytest.raises(
        PermanentError,
        match=r"^Google Ads API v22 is no longer served \(sunset 2026-10-07\): "
        r"set CLEARLIFT_GOOGLE_ADS_API_VERSION to v23 or newer$",
    ):
        make_client(old, FrozenClock(datetime(2026, 11, 29, tzinfo=UTC)), token).account()
    assert len(app.requests_to("searchStream")) == 1


# --- manager (MCC) accounts ---------------------------------------------------------------------

MANAGER = "111-222-3333"
MID = "1112223333"
CLIENT_A, CLIENT_B, SUB_MANAGER, CLIENT_C = "2000000001", "2000000002", "2000000003", "2000000004"


def manager_tree(app) -> None:
    """Manager 111-222-3333 with two clients in their own currencies, a cancelled one, and a
    sub-manager holding one more client (level 2)."""
    app.configure_account(MID, manager=True, name="Agency MCC")
    app.configure_account(CLIENT_A, manager_id=MID, currency="EUR", time_zone="Europe/Berlin", campaigns=3)
    app.configure_account(CLIENT_B, manager_id=MID, currency="JPY", time_zone="Asia/Tokyo", campaigns=2)
    app.configure_account("2000000009", manager_id=MID, enabled=False)
    app.configure_account(SUB_MANAGER, manager_id=MID, manager=True)
    app.configure_account(CLIENT_C, manager_id=SUB_MANAGER, currency="GBP", time_zone="Europe/London")


def test_manager_with_selected_clients_queries_each_client_through_the_manager(app, settings, clock, token):
    manager_tree(app)
    selection = {"accountSelection": {"mode": "selected", "selectedAccounts": ["200-000-0001", CLIENT_B]}}
    client = make_client(settings, clock, token, account=MANAGER, connection_settings=selection)

    assert client.accounts() == [CLIENT_A, CLIENT_B]
    got = {}
    for cid in client.accounts():
        sub = client.for_account(cid)
        account = sub.account()
        got[cid] = (
            account.currency,
            account.time_zone,
            [c.campaign_id for c in sub.campaigns()],
            list(sub.daily_metrics(SINCE, UNTIL)),
        )
    sent = app.requests_to("searchStream")
    assert {r.path.split("/")[3] for r in sent} == {CLIENT_A, CLIENT_B}  # never the manager's metrics
    assert {r.headers["login-customer-id"] for r in sent} == {MID}
    for cid, currency, tz in ((CLIENT_A, "EUR", "Europe/Berlin"), (CLIENT_B, "JPY", "Asia/Tokyo")):
        assert got[cid][:3] == (currency, tz, [r["campaign"]["id"] for r in app.campaign_rows(cid)])
        assert got[cid][3] == [expected_metric(r) for r in app.metric_rows(cid, SINCE, UNTIL)]
    assert client.for_account(MANAGER) is client


def test_manager_with_all_clients_lists_enabled_non_managers_at_every_level(app, settings, clock, token):
    manager_tree(app)
    client = make_client(
        settings, clock, token, account=MANAGER, connection_settings={"accountSelection": {"mode": "all"}}
    )

    assert client.accounts() == [CLIENT_A, CLIENT_B, CLIENT_C]
    (listing,) = app.requests_to("searchStream")
    assert listing.path == f"/v26/customers/{MID}/googleAds:searchStream"
    assert listing.headers["login-customer-id"] == MID
    query = listing.json()["query"]
    for field in (
        "customer_client.id",
        "customer_client.manager",
        "customer_client.level",
        "customer_client.status",
        "customer_client.currency_code",
        "customer_client.time_zone",
    ):
        assert field in query
    # The level-2 client is reached with the top manager as login customer.
    assert client.for_account(CLIENT_C).account().currency == "GBP"


def test_metrics_of_a_manager_are_refused_with_what_to_do(app, settings, clock, token):
    manager_tree(app)
    with pytest.raises(AccountUnavailable, match="REQUESTED_METRICS_FOR_MANAGER") as exc:
        list(make_client(settings, clock, token, account=MANAGER).daily_metrics(SINCE, UNTIL))
    assert "manager account, which has no metrics of its own" in str(exc.value)
    assert "accountSelection" in str(exc.value) and exc.value.account_id == MID


def test_unlinked_client_fails_alone_and_says_what_to_do(app, settings, clock, token):
    manager_tree(app)
    app.configure_account(CLIENT_B, accessible=False)  # unlinked from the manager
    client = make_client(
        settings,
        clock,
        token,
        account=MANAGER,
        connection_settings={
            "accountSelection": {"mode": "selected", "selectedAccounts": [CLIENT_A, CLIENT_B]}
        },
    )

    assert client.for_account(CLIENT_A).account().currency == "EUR"
    with pytest.raises(AccountUnavailable, match="USER_PERMISSION_DENIED") as exc:
        client.for_account(CLIENT_B).account()
    text = str(exc.value)
    assert "cannot reach customer 200-000-0002 through manager 111-222-3333" in text
    assert "link it again or remove it from the connection's selected accounts" in text
    assert exc.value.account_id == CLIENT_B and not isinstance(exc.value, AuthRevoked)
    assert_no_secret(exc.value, token)


@pytest.mark.parametrize("key", ["login_customer_id", "manager_customer_id"])
def test_connection_login_customer_beats_the_app_wide_one(tmp_path, server, app, clock, token, key):
    app.configure_account(CID, manager_id="9876543210")
    app.configure_account("9876543210", manager_id="5555555555")  # a manager above a manager
    app_wide = make_settings(tmp_path, server, google_ads_login_customer_id="555-555-5555")

    assert list(make_client(app_wide, clock, token).campaigns())
    assert app.requests_to("searchStream")[-1].headers["login-customer-id"] == "5555555555"
    assert list(make_client(app_wide, clock, token, connection_settings={key: "987-654-3210"}).campaigns())
    assert app.requests_to("searchStream")[-1].headers["login-customer-id"] == "9876543210"


@pytest.mark.parametrize(
    "selection, why",
    [
        ({"mode": "some"}, "must be"),
        ({"mode": "selected"}, "must be"),
        ({"mode": "selected", "selectedAccounts": []}, "selects no client accounts"),
        ({"mode": "selected", "selectedAccounts": ["act_1"]}, "not a Google Ads customer id"),
    ],
)
def test_broken_account_selection_is_permanent(app, settings, clock, token, selection, why):
    client = make_client(
        settings, clock, token, account=MANAGER, connection_settings={"accountSelection": selection}
    )
    with pytest.raises(PermanentError, match=why):
        client.accounts()
    assert app.requests == []
