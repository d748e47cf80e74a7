"""`clearlift schedule` / `consume` for Google Ads, the command in-process: the sandbox over
HTTP, a real SQLite store, a real PostgreSQL warehouse."""

from __future__ import annotations

import json

from tests.expected import google_expected as expected_metrics
from tests.expected import metric_values
from tests.harness import Env, make_visible

CID = "123-456-7890"


def seed_onboarding(env: Env, org: str, user: str) -> None:
    with env.store() as c:
        c.execute(
            "INSERT INTO onboarding_progress (user_id, organization_id, current_step, services_connected, "
            "first_sync_completed) VALUES (?, ?, 'first_sync', 1, FALSE)",
            (user, org),
        )


def test_schedule_consume_writes_exact_rows_and_statuses(env, sandbox):
    sandbox.google.configure_account(CID, campaigns=4, currency="EUR", time_zone="Europe/Berlin")
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    conn_id = env.add("org-1", "google", CID, access, refresh)
    seed_onboarding(env, "org-1", "user-1")

    out = env.run("schedule").stdout
    assert "1 enqueued" in out
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn_id)
    since, until = env.window_days(job["id"])
    assert (until - since).days == 7
    want = expected_metrics(sandbox.google, CID.replace("-", ""), since, until)
    rows = env.warehouse_rows("google_ads_daily_metrics", organization_id="org-1")
    got = metric_values(rows)
    assert got == want and len(want) > 10
    assert all(r["currency"] == "EUR" and r["connection_id"] == conn_id for r in rows)

    campaigns = env.warehouse_rows("google_ads_campaigns", organization_id="org-1")
    wire = sandbox.google.campaign_rows(CID.replace("-", ""))
    assert {c["campaign_id"]: (c["campaign_name"], c["status"], c["budget_micros"]) for c in campaigns} == {
        w["campaign"]["id"]: (
            w["campaign"]["name"],
            w["campaign"]["status"],
            int(w.get("campaignBudget", {}).get("amountMicros", "0")),
        )
        for w in wire
    }
    assert all(w["campaign"]["status"] != "REMOVED" for w in wire)

    job = env.job(job["id"])
    assert job["status"] == "completed" and job["job_type"] == "full"
    assert job["records_synced"] == len(rows) + len(campaigns)
    assert json.loads(job["metadata"])["records_synced"] == job["records_synced"]
    assert job["started_at"].endswith("Z") and job["completed_at"].endswith("Z")
    assert job["progress_percentage"] == 100
    conn = env.connection(conn_id)
    assert conn["sync_status"] == "completed" and conn["sync_error"] is None
    assert conn["last_synced_at"] == job["completed_at"]
    with env.store() as c:
        ob = c.execute("SELECT * FROM onboarding_progress WHERE user_id = 'user-1'").fetchone()
    assert ob["first_sync_completed"] == 1 and ob["current_step"] == "completed" and ob["completed_at"]

    status = env.run_json("status", conn_id)
    assert status["latest_sync"] == {
        "status": "completed",
        "type": "full",
        "completed_at": job["completed_at"],
        "records_synced": job["records_synced"],
        "error": None,
    }

    # The same window again (a replay) leaves identical rows.
    before = sorted(got.items())
    env.run("sync", conn_id, "--now", "--since", since.isoformat(), "--until", until.isoformat())
    env.run("consume", "--max-seconds", "60")
    rows2 = env.warehouse_rows("google_ads_daily_metrics", organization_id="org-1")
    assert sorted(metric_values(rows2).items()) == before
    assert len(rows2) == len(rows)


def test_rate_limit_then_success_does_not_use_an_attempt(env, sandbox):
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    conn_id = env.add("org-1", "google", CID, access, refresh)
    sandbox.google.exhaust_quota(times=1, retry_delay=1, rate_scope="ACCOUNT")  # short: slept in place
    env.run("schedule")
    env.run("consume", "--max-seconds", "60")
    (job,) = env.jobs(conn_id)
    assert job["status"] == "completed"
    assert len(sandbox.google.requests_to("googleAds:searchStream")) >= 3  # account, retried call, data


def test_app_wide_quota_defers_every_google_job(env, sandbox):
    ids = []
    for acct in ("111-111-1111", "222-222-2222", "333-333-3333"):
        access, refresh = sandbox.google.tokens.issue(ttl=3600)
        ids.append(env.add("org-1", "google", acct, access, refresh))
    sandbox.google.exhaust_quota(times=1, retry_delay=3600, rate_scope="DEVELOPER")
    env.run("schedule")
    out = env.run("consume", "--concurrency", "1", "--max-seconds", "60", "--json").stdout
    summary = json.loads(out)
    assert summary.get("deferred") == 1 and summary["jobs"] == 1  # the others were not even claimed
    q = env.run_json("queue")
    assert "google" in q["paused_platforms"]
    assert q["delayed"] == 1 and q["ready"]["high"] == 2
    statuses = sorted(env.jobs(i)[0]["status"] for i in ids)
    assert statuses == ["pending", "pending", "pending"]
    deferred = [env.jobs(i)[0] for i in ids if env.jobs(i)[0]["error_message"]]
    assert len(deferred) == 1 and "Rate limited" in deferred[0]["error_message"]


def test_5xx_storm_ends_in_dead_letter_and_failed_job(env, sandbox):
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    conn_id = env.add("org-1", "google", CID, access, refresh)
    sandbox.google.faults.add(
        "status",
        path="googleAds",
        times=-1,
        status=503,
        body={"error": {"code": 503, "status": "UNAVAILABLE", "message": "Service unavailable"}},
    )
    env.run("schedule")
    # Four deliveries; backoff delays between them are skipped by re-queueing at once.
    for _ in range(4):
        env.run("consume", "--max-seconds", "30")
        with env.store() as c:
            c.execute("UPDATE sync_queue SET visible_at = 0 WHERE state = 'ready'")
    (job,) = env.jobs(conn_id)
    assert job["status"] == "failed"
    assert "503" in job["error_message"] or "unavailable" in job["error_message"].lower()
    dead = env.run_json("queue", "dead")
    assert len(dead) == 1 and dead[0]["attempts"] == 4
    assert env.connection(conn_id)["sync_status"] == "failed"
    assert env.run("status", check=False).returncode == 1


def test_revoked_token_fails_at_once_without_retries(env, sandbox):
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    sandbox.google.tokens.revoke(access)
    sandbox.google.tokens.revoke(refresh)
    conn_id = env.add("org-1", "google", CID, access, refresh)
    env.run("schedule")
    env.run("consume", "--max-seconds", "30")
    (job,) = env.jobs(conn_id)
    assert job["status"] == "failed"
    assert "re-authoris" in job["error_message"]
    conn = env.connection(conn_id)
    assert conn["needs_reauth"] == 1 and conn["sync_status"] == "failed"
    assert access not in job["error_message"] and refresh not in (conn["sync_error"] or "")
    assert env.run_json("queue")["ready"] == {"high": 0, "normal": 0}
    # Not scheduled again until reconnected; a reconnect clears the flag.
    assert "0 enqueued" in env.run("schedule").stdout
    access2, refresh2 = sandbox.google.tokens.issue(ttl=3600)
    env.add("org-1", "google", CID, access2, refresh2)
    assert env.connection(conn_id)["needs_reauth"] == 0
    assert "1 enqueued" in env.run("schedule").stdout


def test_truncated_body_is_transient(env, sandbox):
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    conn_id = env.add("org-1", "google", CID, access, refresh)
    sandbox.google.faults.add("truncate", path="googleAds", times=3)
    env.run("schedule")
    env.run("consume", "--max-seconds", "30")
    (job,) = env.jobs(conn_id)
    assert job["status"] == "pending" and "truncated" in job["error_message"]
    assert env.run_json("queue")["delayed"] == 1


MANAGER, CLIENT_A, CLIENT_B = "111-222-3333", "2000000001", "2000000002"


def manager_with_two_clients(sandbox) -> None:
    sandbox.google.configure_account(MANAGER, manager=True)
    sandbox.google.configure_account(
        CLIENT_A, manager_id="1112223333", campaigns=3, currency="EUR", time_zone="Europe/Berlin"
    )
    sandbox.google.configure_account(
        CLIENT_B, manager_id="1112223333", campaigns=2, currency="JPY", time_zone="Asia/Tokyo"
    )


def test_manager_connection_syncs_every_selected_client_as_its_own_account(env, sandbox):
    manager_with_two_clients(sandbox)
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    selection = {
        "accountSelection": {"mode": "selected", "selectedAccounts": ["200-000-0001", "200-000-0002"]}
    }
    conn_id = env.add("org-1", "google", MANAGER, access, refresh, settings=json.dumps(selection))

    env.run("schedule")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn_id)
    since, until = env.window_days(job["id"])
    total = 0
    for cid, currency in ((CLIENT_A, "EUR"), (CLIENT_B, "JPY")):
        rows = env.warehouse_rows("google_ads_daily_metrics", organization_id="org-1", account_id=cid)
        assert metric_values(rows) == expected_metrics(sandbox.google, cid, since, until) and rows
        assert {(r["currency"], r["connection_id"]) for r in rows} == {(currency, conn_id)}
        campaigns = env.warehouse_rows("google_ads_campaigns", organization_id="org-1", account_id=cid)
        assert {c["campaign_id"] for c in campaigns} == {
            w["campaign"]["id"] for w in sandbox.google.campaign_rows(cid)
        }
        total += len(rows) + len(campaigns)
    assert env.warehouse_rows("google_ads_daily_metrics", account_id=MANAGER) == []
    job = env.job(job["id"])
    assert job["status"] == "completed" and job["records_synced"] == total
    assert {r.headers.get("login-customer-id") for r in sandbox.google.requests_to("searchStream")} == {
        "1112223333"
    }


def test_manager_job_with_an_unlinked_client_keeps_the_others_rows(env, sandbox):
    manager_with_two_clients(sandbox)
    sandbox.google.configure_account(CLIENT_A, accessible=False)  # unlinked: the first one fails
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    selection = {
        "accountSelection": {"mode": "selected", "selectedAccounts": [CLIENT_A, CLIENT_B]},
        "manager_customer_id": "111-222-3333",
    }
    conn_id = env.add("org-1", "google", MANAGER, access, refresh, settings=json.dumps(selection))

    env.run("schedule")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn_id)
    since, until = env.window_days(job["id"])
    rows = env.warehouse_rows("google_ads_daily_metrics", organization_id="org-1")
    assert metric_values(rows) == expected_metrics(sandbox.google, CLIENT_B, since, until) and rows
    assert {r["account_id"] for r in rows} == {CLIENT_B}
    job = env.job(job["id"])
    assert job["status"] == "failed"
    error = job["error_message"]
    assert "1 of 2 accounts failed (1 synced" in error and f"account {CLIENT_A}" in error
    assert "USER_PERMISSION_DENIED" in error and "cannot reach customer 200-000-0001" in error
    assert "link it again or remove it from the connection's selected accounts" in error
    assert access not in error
    dead = env.run_json("queue", "dead")
    assert len(dead) == 1 and dead[0]["attempts"] == 1  # permanent: not retried
    status = env.run_json("status", conn_id)
    assert status["latest_sync"]["error"] == error
    assert env.connection(conn_id)["sync_status"] == "failed"


def test_stream_broken_midway_leaves_no_partial_slice_and_the_retry_is_exact(env, sandbox):
    sandbox.google.configure_account(CID, campaigns=6)
    sandbox.google.batch_size = 5
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    conn_id = env.add("org-1", "google", CID, access, refresh)
    env.run("schedule")
    sandbox.google.break_stream(times=1, after_batches=2, query="metrics")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn_id)
    assert job["status"] == "pending" and "INTERNAL" in job["error_message"]
    assert env.warehouse_rows("google_ads_daily_metrics", organization_id="org-1") == []

    make_visible(env)
    env.run("consume", "--max-seconds", "60")
    since, until = env.window_days(job["id"])
    rows = env.warehouse_rows("google_ads_daily_metrics", organization_id="org-1")
    assert metric_values(rows) == expected_metrics(sandbox.google, CID.replace("-", ""), since, until)
    assert env.job(job["id"])["status"] == "completed"


def test_sunset_version_fails_jobs_at_once_and_consume_warns_once(env, sandbox):
    ids = []
    for acct in ("111-111-1111", "222-222-2222"):
        access, refresh = sandbox.google.tokens.issue(ttl=3600)
        ids.append(env.add("org-1", "google", acct, access, refresh))
    env.run("schedule")
    old = {"CLEARLIFT_GOOGLE_ADS_API_VERSION": "v21", "CLEARLIFT_FACEBOOK_API_VERSION": "v24.0"}

    proc = env.run("consume", "--max-seconds", "60", **old)

    message = (
        "Google Ads API v21 is no longer served (sunset 2026-08-05): "
        "set CLEARLIFT_GOOGLE_ADS_API_VERSION to v23 or newer"
    )
    for conn_id in ids:
        (job,) = env.jobs(conn_id)
        assert job["status"] == "failed" and job["error_message"] == message
    assert [d["attempts"] for d in env.run_json("queue", "dead")] == [1, 1]
    warnings = [ln for ln in proc.stderr.splitlines() if "WARNING clearlift.consume: Google Ads API" in ln]
    assert len(warnings) == 1 and warnings[0].endswith(message)  # once per run, not per job
    assert (
        sum(
            "clearlift.consume: Meta Marketing API v24.0 is no longer served" in ln
            for ln in proc.stderr.splitlines()
        )
        == 1
    )
    # With the current versions nothing is said.
    assert "API v" not in env.run("consume", "--max-seconds", "5").stderr
