"""`clearlift` for Facebook (Meta) Ads, the command in-process: the Graph sandbox over
HTTP, a real SQLite store and a real PostgreSQL warehouse (issue 5). That no token or app
secret reaches a real process's output: tests/e2e/test_secrets.py."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from clearlift_cli.sandbox import APP_CREDENTIALS
from tests.expected import FACEBOOK_PURCHASE as PURCHASE
from tests.expected import facebook_expected as expected_metrics
from tests.expected import stored_ads
from tests.harness import (
    Env,
    coverage,
    make_visible,
    queue_row,
    without_synced_at,
)

ACCOUNT = "1029384756"
APP_SECRET = APP_CREDENTIALS["FACEBOOK_APP_SECRET"]
PIXEL = ("offsite_conversion.fb_pixel_purchase",)


def expected_campaigns(app, account: str, minor_per_unit: int = 100) -> dict:
    out = {}
    for row in app.campaign_rows(account):
        budget = next(
            (Decimal(row[k]) for k in ("daily_budget", "lifetime_budget") if Decimal(row.get(k) or "0") != 0),
            None,
        )
        out[row["id"]] = (
            row["name"],
            row["status"],
            row["objective"],
            None if budget is None else int(budget / minor_per_unit * 1_000_000),
        )
    return out


def stored_campaigns(env: Env, org: str) -> dict:
    return {
        c["campaign_id"]: (c["campaign_name"], c["status"], c["objective"], c["budget_micros"])
        for c in env.warehouse_rows("facebook_ads_campaigns", organization_id=org)
    }


def requests_with_token(app, pattern: str, token: str) -> list:
    return [r for r in app.requests_to(pattern) if r.query.get("access_token") == token]


def test_pages_of_campaigns_and_insights_land_exactly_with_configured_conversions(env, sandbox):
    fb = sandbox.facebook
    fb.configure_account(ACCOUNT, campaigns=7, currency="EUR", timezone_name="Europe/Berlin", max_page_rows=3)
    campaigns = fb.campaign_rows(ACCOUNT)
    pinned_day = datetime.now(UTC).date() - timedelta(days=3)
    pinned_campaign = campaigns[1]["id"]
    fb.pin_insight(
        ACCOUNT,
        pinned_campaign,
        pinned_day,
        spend="14.35",
        impressions="1000",
        clicks="37",
        actions=[
            {"action_type": "purchase", "value": "2"},
            {"action_type": "offsite_conversion.fb_pixel_purchase", "value": "5"},
            {"action_type": "omni_purchase", "value": "2"},
        ],
        action_values=[
            {"action_type": "purchase", "value": "10.01"},
            {"action_type": "offsite_conversion.fb_pixel_purchase", "value": "0.10"},
            {"action_type": "omni_purchase", "value": "10.01"},
        ],
    )
    token1, _ = fb.tokens.issue(ttl=None)
    token2, _ = fb.tokens.issue(ttl=None)
    # The same ad account for two organisations: with and without act_, default and pixel conversions.
    conn1 = env.add("org-1", "facebook", f"act_{ACCOUNT}", token1)
    conn2 = env.add(
        "org-2", "facebook", ACCOUNT, token2, settings=json.dumps({"conversion_action_types": list(PIXEL)})
    )

    assert "2 enqueued" in env.run("schedule").stdout
    env.run("consume", "--max-seconds", "60")

    (job1,) = env.jobs(conn1)
    (job2,) = env.jobs(conn2)
    assert job1["status"] == job2["status"] == "completed"
    since, until = env.window_days(job1["id"])
    assert (until - since).days == 7 and since <= pinned_day <= until

    want1 = expected_metrics(fb, ACCOUNT, since, until, PURCHASE)
    want2 = expected_metrics(fb, ACCOUNT, since, until, PIXEL)
    got1, got2 = stored_ads(env, "facebook", "org-1"), stored_ads(env, "facebook", "org-2")
    assert got1 == want1 and got2 == want2 and len(want1) > 30
    # The two settings really count different things on this data.
    assert sum(v[3] for v in want1.values()) != sum(v[3] for v in want2.values())
    # Literal values for the pinned row, independent of any parsing helper.
    key = (pinned_campaign, pinned_day.isoformat())
    assert got1[key] == (1000, 37, 14_350_000, Decimal(2), 10_010_000)
    assert got2[key] == (1000, 37, 14_350_000, Decimal(5), 100_000)

    # Several pages each: 7 campaigns at 3 per page, insights at 3 rows per page.
    assert len(requests_with_token(fb, r"/campaigns$", token1)) == 3
    assert len(requests_with_token(fb, r"/insights$", token1)) == -(-len(want1) // 3)
    assert len(requests_with_token(fb, r"/insights$", token2)) == -(-len(want2) // 3)

    want_campaigns = expected_campaigns(fb, ACCOUNT)
    assert stored_campaigns(env, "org-1") == want_campaigns == stored_campaigns(env, "org-2")
    assert len(want_campaigns) == 7 and any(v[3] is None for v in want_campaigns.values())
    # Archived and deleted campaigns are there, with their past spend (Graph hides both unless
    # the request's filtering lists their status).
    hidden = {c["id"] for c in campaigns if c["status"] in ("ARCHIVED", "DELETED")}
    assert len(hidden) == 2 and hidden <= {cid for cid, _ in got1}
    metric_rows = env.warehouse_rows("facebook_ads_daily_metrics", organization_id="org-1")
    assert {(r["currency"], r["connection_id"], r["account_id"]) for r in metric_rows} == {
        ("EUR", conn1, f"act_{ACCOUNT}")
    }
    assert job1["records_synced"] == len(want1) + 7

    # A replay of the same days changes nothing.
    before = {
        (org, t): without_synced_at(env.warehouse_rows(t, organization_id=org))
        for org in ("org-1", "org-2")
        for t in ("facebook_ads_daily_metrics", "facebook_ads_campaigns")
    }
    env.run("sync", conn1, "--now", "--since", since.isoformat(), "--until", until.isoformat())
    env.run("consume", "--max-seconds", "60")
    assert [j["status"] for j in env.jobs(conn1)] == ["completed", "completed"]
    after = {
        (org, t): without_synced_at(env.warehouse_rows(t, organization_id=org))
        for org in ("org-1", "org-2")
        for t in ("facebook_ads_daily_metrics", "facebook_ads_campaigns")
    }
    assert after == before


def test_oversized_window_is_split_and_a_big_day_goes_async_landing_once_per_campaign_day(env, sandbox):
    fb = sandbox.facebook
    # Six campaigns (archived and deleted ones among them: their rows count too), at most five
    # rows per request; Graph answers more with HTTP 500, code 1 and no subcode.
    fb.configure_account(ACCOUNT, campaigns=6, max_sync_rows=5, async_polls=1)
    campaigns = fb.campaign_rows(ACCOUNT)
    assert {c["status"] for c in campaigns} >= {"ARCHIVED", "DELETED"}
    big_day = datetime.now(UTC).date() - timedelta(days=4)
    for c in campaigns:  # all six deliver on big_day: too much even for a one-day request
        fb.pin_insight(ACCOUNT, c["id"], big_day)
    token, _ = fb.tokens.issue(ttl=None)
    conn = env.add("org-1", "facebook", ACCOUNT, token)
    env.run("schedule")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn)
    assert job["status"] == "completed", job["error_message"]
    since, until = env.window_days(job["id"])
    want = expected_metrics(fb, ACCOUNT, since, until)
    assert stored_ads(env, "facebook", "org-1") == want
    assert sum(day == big_day.isoformat() for _, day in want) == 6
    # Each campaign-day was written once: the job counted no row twice.
    assert job["records_synced"] == len(want) + len(campaigns)

    ranges = [
        json.loads(r.query["time_range"]) for r in fb.requests_to(r"act_\d+/insights$") if r.method == "GET"
    ]
    assert ranges[0] == {"since": since.isoformat(), "until": until.isoformat()}
    assert any(r["since"] != r["until"] and r != ranges[0] for r in ranges)  # halves
    assert {"since": big_day.isoformat(), "until": big_day.isoformat()} in ranges  # split down to the day
    # Exactly the days with more than five rows went through async reports, polled until complete.
    full_days = [
        d.isoformat()
        for d in (since + timedelta(days=i) for i in range((until - since).days + 1))
        if len(fb.insight_rows(ACCOUNT, d, d)) > 5
    ]
    assert big_day.isoformat() in full_days
    posts = [r for r in fb.requests_to(r"act_\d+/insights$") if r.method == "POST"]
    assert [json.loads(r.form()["time_range"]) for r in posts] == [
        {"since": d, "until": d} for d in full_days
    ]
    for run_id in fb.report_run_ids():
        assert len(fb.requests_to(rf"/{run_id}$")) == 2  # "Job Not Started", then "Job Completed"
        assert fb.requests_to(rf"/{run_id}/insights$")


def test_long_backfill_is_sliced_and_lands_exactly(env, sandbox):
    fb = sandbox.facebook
    fb.configure_account(ACCOUNT, campaigns=3, currency="USD")
    token, _ = fb.tokens.issue(ttl=None)
    conn = env.add("org-1", "facebook", ACCOUNT, token)
    until = datetime.now(UTC).date() - timedelta(days=2)
    since = until - timedelta(days=74)
    env.run("sync", conn, "--now", "--since", since.isoformat(), "--until", until.isoformat())
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn)
    assert job["status"] == "completed", job["error_message"]
    want = expected_metrics(fb, ACCOUNT, since, until)
    assert stored_ads(env, "facebook", "org-1") == want
    assert {d for _, d in want} >= {since.isoformat(), until.isoformat()}
    # 75 days in three slices of at most 30, each committed and recorded on its own.
    slices = [
        (since, since + timedelta(days=29)),
        (since + timedelta(days=30), since + timedelta(days=59)),
        (since + timedelta(days=60), until),
    ]
    cov = coverage(env, job["id"])
    assert [(s, e) for s, e, _ in cov] == [(s.isoformat(), e.isoformat()) for s, e in slices]
    assert sum(n for _, _, n in cov) == job["records_synced"] == len(want) + 3
    ranges = [json.loads(r.query["time_range"]) for r in fb.requests_to(r"/insights$")]
    assert ranges == [{"since": s.isoformat(), "until": e.isoformat()} for s, e in slices]


def test_expired_api_version_fails_the_job_at_once_saying_what_to_set(env, sandbox):
    fb = sandbox.facebook
    token, _ = fb.tokens.issue(ttl=None)
    conn = env.add("org-1", "facebook", ACCOUNT, token)
    env.extra["CLEARLIFT_FACEBOOK_API_VERSION"] = "v23.0"  # expired 2026-06-09
    env.run("sync", conn, "--now")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn)
    assert job["status"] == "failed"
    assert job["error_message"].startswith(
        "Meta Marketing API v23.0 is no longer served (sunset 2026-06-09): set CLEARLIFT_FACEBOOK_API_VERSION to"
    )
    q = queue_row(env, job["id"])
    assert (q["state"], q["attempts"]) == ("dead", 1)
    assert len(fb.requests) == 1 and env.connection(conn)["needs_reauth"] == 0


def test_endless_paging_fails_the_job_at_once_with_a_clear_message(env, sandbox):
    fb = sandbox.facebook
    fb.configure_account(ACCOUNT, campaigns=8, max_page_rows=3, endless_paging="self")
    token, _ = fb.tokens.issue(ttl=None)
    conn = env.add("org-1", "facebook", ACCOUNT, token)
    env.run("sync", conn, "--now")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn)
    assert job["status"] == "failed"
    assert "endless pagination while reading campaigns" in job["error_message"]
    assert (queue_row(env, job["id"])["state"], queue_row(env, job["id"])["attempts"]) == ("dead", 1)
    assert len(fb.requests_to(r"/campaigns$")) == 2  # the repeat is seen on the second page


def test_meta_tokens_are_renewed_from_a_week_before_expiry_on_every_run_until_it_works(env, sandbox):
    fb = sandbox.facebook
    day = 86400

    def in_days(n: float) -> str:
        return (datetime.now(UTC) + timedelta(days=n)).isoformat().replace("+00:00", "Z")

    renewable = fb.issue_long_lived(ttl=6 * day)
    stuck = fb.issue_long_lived(ttl=5 * day)
    later = fb.issue_long_lived(ttl=8 * day)
    c_renewable = env.add("org-1", "facebook", "3000000001", renewable, expires_at=in_days(6))
    c_stuck = env.add("org-1", "facebook", "3000000002", stuck, expires_at=in_days(5))
    c_later = env.add("org-1", "facebook", "3000000003", later, expires_at=in_days(8))
    g_access, g_refresh = sandbox.google.tokens.issue(ttl=6 * day)
    c_google = env.add("org-1", "google", "111-222-3333", g_access, g_refresh, expires_at=in_days(6))
    before = {c: env.connection(c) for c in (c_stuck, c_later, c_google)}

    # Meta hands an already long-lived token back unextended (its documented behaviour as far
    # as known): nothing is renewed, the run says so, and the connection is not flagged.
    first = json.loads(env.run("refresh-tokens", "--json").stdout)
    assert (first["refreshed"], first["failed"], first["needs_reauth"]) == (0, 2, 0)
    assert {f["connection_id"] for f in first["failures"]} == {c_renewable, c_stuck}
    assert all("same token without extending it" in f["reason"] for f in first["failures"])
    exchanged = [r.query["fb_exchange_token"] for r in fb.requests_to("oauth/access_token")]
    assert sorted(exchanged) == sorted([renewable, stuck])  # not the one 8 days out

    # If Meta does renew it, the next run (a few minutes later) stores the new 60-day token.
    fb.long_lived_renewal = "renewed"
    fb.faults.add(
        "status",
        path="oauth/access_token",
        times=3,
        status=500,
        body={
            "error": {
                "message": "An unexpected error has occurred. Please retry your request later.",
                "type": "OAuthException",
                "code": 2,
                "is_transient": True,
            }
        },
    )
    second = json.loads(env.run("refresh-tokens", "--json").stdout)
    assert (second["refreshed"], second["failed"]) == (1, 1)  # the first exchange met the outage
    third = json.loads(env.run("refresh-tokens", "--json").stdout)
    assert (third["refreshed"], third["failed"]) == (1, 0)
    for conn, old in ((c_renewable, renewable), (c_stuck, stuck)):
        row = env.connection(conn)
        assert row["needs_reauth"] == 0
        assert datetime.fromisoformat(row["expires_at"].replace("Z", "+00:00")) > datetime.now(
            UTC
        ) + timedelta(days=59)
        assert fb.tokens.check(old) == "ok"
    assert env.connection(c_later) == before[c_later]
    assert env.connection(c_google) == before[c_google] and sandbox.google.requests_to("/token") == []
    # Once renewed, nothing is due for weeks.
    assert json.loads(env.run("refresh-tokens", "--json").stdout)["refreshed"] == 0


def _delay(env: Env, job_id: str) -> float:
    return queue_row(env, job_id)["visible_at"] - time.time()


def test_rate_limits_defer_jobs_by_the_announced_wait_without_using_attempts(env, sandbox):
    fb = sandbox.facebook
    tokens = [fb.tokens.issue(ttl=None)[0] for _ in range(4)]
    accounts = ["1000000001", "1000000002", "1000000003", "1000000004"]
    usage_conn = env.add("org-1", "facebook", accounts[0], tokens[0])

    # 1. Usage headers at 100% with a regain estimate: the client stops before Graph refuses.
    fb.set_usage(call_count=100, estimated_time_to_regain_access=3)
    env.run("schedule")
    out = json.loads(env.run("consume", "--max-seconds", "60", "--json").stdout)
    assert out["deferred"] == 1
    (job,) = env.jobs(usage_conn)
    assert job["status"] == "pending" and "Rate limited" in job["error_message"]
    assert len(fb.requests) == 1  # only the account call; no request was sent into the block
    q = queue_row(env, job["id"])
    assert q["state"] == "ready" and q["attempts"] == 0
    assert 150 < _delay(env, job["id"]) <= 181
    fb.set_usage(call_count=4, estimated_time_to_regain_access=0)

    # 2. An account rate-limit error (80004) whose usage header says 7 minutes.
    error_conn = env.add("org-1", "facebook", accounts[1], tokens[1])
    fb.rate_limit_next(times=1, code=80004, minutes=7)
    env.run("schedule")
    env.run("consume", "--max-seconds", "60")
    (job,) = env.jobs(error_conn)
    assert job["status"] == "pending" and "80004" in job["error_message"]
    assert queue_row(env, job["id"])["attempts"] == 0
    assert 7 * 60 - 30 < _delay(env, job["id"]) <= 7 * 60 + 1
    assert env.connection(error_conn)["sync_status"] == "pending"
    assert env.run_json("queue")["paused_platforms"] == {}  # an account limit pauses nobody else

    # 3. The app-wide limit (code 4) defers every Facebook job, not other platforms.
    app_conns = [env.add("org-1", "facebook", a, t) for a, t in zip(accounts[2:], tokens[2:], strict=True)]
    stripe_conn = env.add(
        "org-1", "stripe", "acct_1RateLimitShop", sandbox.stripe.issue_key("acct_1RateLimitShop")
    )
    fb.rate_limit_next(times=1, code=4, minutes=10)
    assert "3 enqueued" in env.run("schedule").stdout
    before = len(fb.requests)
    out = json.loads(env.run("consume", "--concurrency", "1", "--max-seconds", "60", "--json").stdout)
    assert (out["jobs"], out["deferred"], out["completed"]) == (2, 1, 1)
    assert len(fb.requests) == before + 1  # the second Facebook job was never started
    assert env.jobs(stripe_conn)[0]["status"] == "completed"
    q = env.run_json("queue")
    paused = datetime.fromisoformat(q["paused_platforms"]["facebook"].replace("Z", "+00:00")).timestamp()
    assert 10 * 60 - 30 < paused - time.time() <= 10 * 60 + 1
    assert q["ready"]["high"] == 1 and q["delayed"] == 3
    jobs = [env.jobs(c)[0] for c in app_conns]
    assert [j["status"] for j in jobs] == ["pending", "pending"]
    assert sorted(queue_row(env, j["id"])["attempts"] for j in jobs) == [0, 0]
    deferred = [j for j in jobs if j["error_message"]]
    assert len(deferred) == 1 and "code 4" in deferred[0]["error_message"]

    # Once the waits are over every job completes, none having spent an attempt on a limit.
    make_visible(env, clear_pauses=True)
    env.run("consume", "--max-seconds", "60")
    for conn in [usage_conn, error_conn, *app_conns]:
        (job,) = env.jobs(conn)
        assert job["status"] == "completed", job["error_message"]
        assert queue_row(env, job["id"])["attempts"] == 1


def test_invalid_token_fails_at_once_asking_for_reauthorisation(env, sandbox):
    fb = sandbox.facebook
    token, _ = fb.tokens.issue(ttl=None)
    fb.tokens.revoke(token)
    conn = env.add("org-1", "facebook", ACCOUNT, token)
    env.run("schedule")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn)
    assert job["status"] == "failed"
    assert "re-authorised" in job["error_message"] and "code 190" in job["error_message"]
    conn_row = env.connection(conn)
    assert conn_row["needs_reauth"] == 1 and conn_row["sync_status"] == "failed"
    assert "190" in conn_row["reauth_reason"]
    q = queue_row(env, job["id"])
    assert q["state"] == "dead" and q["attempts"] == 1
    assert len(fb.requests) == 1  # no retry, no refresh attempt
    assert "re-authorised" in env.run_json("status", conn)["latest_sync"]["error"]
    assert "0 enqueued" in env.run("schedule").stdout  # waits for a reconnect
