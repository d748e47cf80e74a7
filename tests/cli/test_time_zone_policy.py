"""One policy for a time zone that is not an IANA name, through the command (in-process,
the Stripe and Google sandboxes, a real store and warehouse): where clearlift computes days
with it (revenue), the job fails at once as a configuration error naming the zone and the
connection, and is not retried; where it only passes through (ads), the job syncs."""

from __future__ import annotations

from tests.harness import queue_row


def _failed_once(env, conn: str) -> str:
    (job,) = env.jobs(conn)
    assert job["status"] == "failed", job["error_message"]
    q = queue_row(env, job["id"])
    assert (q["state"], q["attempts"]) == ("dead", 1)  # not retried
    connection = env.connection(conn)
    assert (connection["sync_status"], connection["sync_error"]) == ("failed", job["error_message"])
    return job["error_message"]


def test_an_accounts_unknown_time_zone_fails_the_revenue_job_once_naming_zone_and_connection(env, sandbox):
    st = sandbox.stripe
    # the account's dashboard says so; clearlift used to count its days in UTC, then fail
    # to write them, and retry until the job died
    st.configure_account("acct_1Mars", time_zone="Mars/Olympus_Mons", charges_per_day=3)
    conn = env.add("org-1", "stripe", "acct_1Mars", st.issue_key("acct_1Mars"))
    env.run("sync", conn, "--now")
    env.run("consume", "--max-seconds", "60")

    error = _failed_once(env, conn)
    assert error == (
        f"stripe: connection {conn}: the account's time zone 'Mars/Olympus_Mons' is not an IANA "
        'time zone name (e.g. "America/New_York"); the job fails until it is corrected'
    )
    assert st.requests_to(r"^/v1/charges") == []  # nothing read before the zone was checked
    assert env.warehouse_rows("stripe_charges", organization_id="org-1") == []
    assert env.warehouse_rows("stripe_daily_revenue", organization_id="org-1") == []

    status = env.run_json("status", conn)
    assert status["latest_sync"]["status"] == "failed" and status["latest_sync"]["error"] == error


def test_a_connections_unknown_time_zone_setting_fails_the_job_once_the_same_way(env, sandbox):
    st = sandbox.stripe
    st.configure_account("acct_1Setting", time_zone="Europe/Paris", charges_per_day=3)
    conn = env.add(
        "org-1",
        "stripe",
        "acct_1Setting",
        st.issue_key("acct_1Setting"),
        settings='{"time_zone": "Europe/Parsi"}',
    )
    env.run("sync", conn, "--now")
    env.run("consume", "--max-seconds", "60")

    error = _failed_once(env, conn)
    assert error.startswith(f"stripe: connection {conn}: settings.time_zone 'Europe/Parsi' is not an IANA")
    assert st.requests_to(r"^/v1/charges") == []


def test_an_ad_accounts_zone_is_only_passed_through_so_the_job_syncs(env, sandbox):
    # metric_date is the platform's own day: clearlift computes nothing with an ad account's zone
    g = sandbox.google
    g.configure_account("1231231234", time_zone="Mars/Olympus_Mons", campaigns=2)
    access, refresh = g.tokens.issue(ttl=None)
    conn = env.add("org-1", "google", "123-123-1234", access, refresh)
    env.run("sync", conn, "--now")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn)
    assert job["status"] == "completed", job["error_message"]
    assert env.warehouse_rows("google_ads_daily_metrics", organization_id="org-1")
