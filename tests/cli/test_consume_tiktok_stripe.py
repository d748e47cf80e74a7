"""`clearlift` for TikTok Ads and Stripe, the command in-process: the sandboxes over
HTTP, a real SQLite store and a real PostgreSQL warehouse (issue 7)."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

from clearlift_cli.timeutil import iso_z
from tests.expected import micros, stored_ads, tiktok_expected
from tests.harness import (
    Env,
    coverage,
    make_visible,
    queue_row,
    store_bytes,
    store_text,
    without_synced_at,
)

UTC = UTC


def today() -> date:
    return datetime.now(UTC).date()


# --- TikTok ---------------------------------------------------------------------------------


def test_tiktok_pages_of_campaigns_and_reports_land_exactly_and_replay_changes_nothing(env, sandbox):
    tt = sandbox.tiktok
    adv = "7001002003004005006"
    tt.configure_account(adv, campaigns=9, currency="EUR", time_zone="Europe/Paris", page_size_cap=4)
    access, _ = tt.tokens.issue(ttl=None)
    conn = env.add("org-1", "tiktok", adv, access)
    env.run("schedule")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn)
    assert job["status"] == "completed", job["error_message"]
    since, until = env.window_days(job["id"])
    want = tiktok_expected(tt, adv, since, until)
    got = stored_ads(env, "tiktok", "org-1")
    assert got == want and len(want) > 40
    # Deleted campaigns' past delivery and the purchase values landed too.
    deleted = {
        c["campaign_id"] for c in tt.campaign_rows(adv) if c["secondary_status"] == "CAMPAIGN_STATUS_DELETE"
    }
    assert len(deleted) == 2 and deleted <= {cid for cid, _ in got}
    assert sum(v[4] for v in got.values()) > 0
    # Both wire spellings of a number were served and parsed.
    wire = tt.report_rows(adv, since, until)
    assert {type(r["metrics"]["spend"]) for r in wire} == {str, float}
    # 9 campaigns at 4 per page; report rows at 4 per page.
    assert len(tt.requests_to("campaign/get")) == 3
    assert len(tt.requests_to("report/integrated")) == -(-len(want) // 4)

    campaigns = {
        c["campaign_id"]: (c["campaign_name"], c["status"], c["objective"], c["budget_micros"], c["currency"])
        for c in env.warehouse_rows("tiktok_ads_campaigns", organization_id="org-1")
    }
    assert campaigns == {
        w["campaign_id"]: (
            w["campaign_name"],
            "DELETE" if w["campaign_id"] in deleted else w["operation_status"],
            w["objective_type"],
            micros(w["budget"]),
            "EUR",
        )
        for w in tt.campaign_rows(adv)
    }
    assert len(campaigns) == 9
    assert job["records_synced"] == len(want) + 9

    before = [
        without_synced_at(env.warehouse_rows(t, organization_id="org-1"))
        for t in ("tiktok_ads_daily_metrics", "tiktok_ads_campaigns")
    ]
    env.run("sync", conn, "--now", "--since", since.isoformat(), "--until", until.isoformat())
    env.run("consume", "--max-seconds", "60")
    assert [j["status"] for j in env.jobs(conn)] == ["completed", "completed"]
    assert [
        without_synced_at(env.warehouse_rows(t, organization_id="org-1"))
        for t in ("tiktok_ads_daily_metrics", "tiktok_ads_campaigns")
    ] == before


def test_tiktok_45_day_backfill_is_two_report_requests(env, sandbox):
    tt = sandbox.tiktok
    adv = "7009008007006005004"
    tt.configure_account(adv, campaigns=3)
    access, _ = tt.tokens.issue(ttl=None)
    conn = env.add("org-1", "tiktok", adv, access)
    until = today() - timedelta(days=1)
    since = until - timedelta(days=44)
    env.run("sync", conn, "--now", "--since", since.isoformat(), "--until", until.isoformat())
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn)
    assert job["status"] == "completed", job["error_message"]
    want = tiktok_expected(tt, adv, since, until)
    assert stored_ads(env, "tiktok", "org-1") == want and len(want) > 90
    reports = tt.requests_to("report/integrated")
    split = since + timedelta(days=29)
    assert [(r.query["start_date"], r.query["end_date"]) for r in reports] == [
        (since.isoformat(), split.isoformat()),
        ((split + timedelta(days=1)).isoformat(), until.isoformat()),
    ]
    assert [(s, e) for s, e, _ in coverage(env, job["id"])] == [
        (since.isoformat(), split.isoformat()),
        ((split + timedelta(days=1)).isoformat(), until.isoformat()),
    ]


def test_tiktok_http_200_error_codes_are_classified_end_to_end(env, sandbox):
    tt = sandbox.tiktok
    advertisers = {
        "revoked": "7100000000000000001",
        "invalid": "7100000000000000002",
        "system": "7100000000000000003",
        "limited": "7100000000000000004",
    }
    conns = {}
    for kind, adv in advertisers.items():
        tt.configure_account(adv, campaigns=2)
        conns[kind] = env.add("org-1", "tiktok", adv, tt.tokens.issue(ttl=None)[0])
        env.run("sync", conns[kind], "--now")  # claimed in this order
    # Faults answer requests in order: one job after the other with --concurrency 1.
    tt.fail_next(40105)
    tt.fail_next(40002)
    tt.fail_next(50000, times=3)  # the client's in-place retries all fail too
    tt.fail_next(40100)
    env.run("consume", "--concurrency", "1", "--max-seconds", "60")
    jobs = {kind: env.jobs(conn)[0] for kind, conn in conns.items()}
    queue = {kind: queue_row(env, job["id"]) for kind, job in jobs.items()}
    now = time.time()

    # 40105: the token is dead: failed at once, flagged for re-auth, no retry.
    assert jobs["revoked"]["status"] == "failed" and "40105" in jobs["revoked"]["error_message"]
    assert "re-authorised" in jobs["revoked"]["error_message"]
    assert env.connection(conns["revoked"])["needs_reauth"] == 1
    assert (queue["revoked"]["state"], queue["revoked"]["attempts"]) == ("dead", 1)
    # 40002: a bad request is permanent, but the token is fine.
    assert jobs["invalid"]["status"] == "failed" and "40002" in jobs["invalid"]["error_message"]
    assert env.connection(conns["invalid"])["needs_reauth"] == 0
    assert env.connection(conns["invalid"])["sync_status"] == "failed"
    assert (queue["invalid"]["state"], queue["invalid"]["attempts"]) == ("dead", 1)
    # 50000: transient: retried later with backoff, the delivery counted as an attempt.
    assert jobs["system"]["status"] == "pending" and "50000" in jobs["system"]["error_message"]
    assert (queue["system"]["state"], queue["system"]["attempts"]) == ("ready", 1)
    assert queue["system"]["visible_at"] > now
    # 40100: rate limited: deferred without using an attempt, TikTok paused app-wide.
    assert jobs["limited"]["status"] == "pending" and "Rate limited" in jobs["limited"]["error_message"]
    assert (queue["limited"]["state"], queue["limited"]["attempts"]) == ("ready", 0)
    assert 30 < queue["limited"]["visible_at"] - now <= 61
    assert "tiktok" in env.run_json("queue")["paused_platforms"]
    # One request each for the permanent and deferred jobs, three (in place) for the transient one.
    assert len(tt.requests) == 6

    # When their waits are over the retried and the deferred job both land exactly.
    make_visible(env, clear_pauses=True)
    env.run("consume", "--max-seconds", "60")
    for kind in ("system", "limited"):
        (job,) = env.jobs(conns[kind])
        assert job["status"] == "completed", job["error_message"]
        since, until = env.window_days(job["id"])
        assert stored_ads(env, "tiktok", "org-1", advertisers[kind]) == tiktok_expected(
            tt, advertisers[kind], since, until
        )
    assert [env.jobs(conns[k])[0]["status"] for k in ("revoked", "invalid")] == ["failed", "failed"]


def test_tiktok_endless_total_page_fails_the_job_at_once(env, sandbox):
    tt = sandbox.tiktok
    adv = "7009008007006005999"
    tt.configure_account(adv, campaigns=5, page_size_cap=2, endless_pages=True)
    conn = env.add("org-1", "tiktok", adv, tt.tokens.issue(ttl=None)[0])
    env.run("sync", conn, "--now")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn)
    assert job["status"] == "failed"
    assert "endless pagination while reading campaigns" in job["error_message"]
    assert "repeats the 2 rows" in job["error_message"]
    assert queue_row(env, job["id"])["state"] == "dead"
    assert len(tt.requests_to("campaign/get")) == 2


# --- Stripe ---------------------------------------------------------------------------------


def charge_expected(wire: list[dict], tz: str) -> dict:
    zone = ZoneInfo(tz)
    out = {}
    for ch in wire:
        created = datetime.fromtimestamp(ch["created"], UTC)
        out[ch["id"]] = (
            ch["amount"],
            ch["amount_refunded"],
            ch["currency"].upper(),
            ch["status"],
            ch["paid"],
            ch["customer"],
            created,
            created.astimezone(zone).date(),
            ch["amount_captured"],
            ch["captured"],
        )
    return out


def charge_stored(env: Env, org: str, account: str) -> dict:
    return {
        r["charge_id"]: (
            r["amount_minor"],
            r["amount_refunded_minor"],
            r["currency"],
            r["status"],
            r["paid"],
            r["customer_id"],
            r["created_at"],
            r["charge_date"],
            r["amount_captured_minor"],
            r["captured"],
        )
        for r in env.warehouse_rows("stripe_charges", organization_id=org, account_id=account)
    }


def revenue_expected(wire: list[dict], tz: str) -> dict:
    """Per local day and currency: what paid, succeeded charges captured (an authorisation
    never captured is no revenue), what was refunded of it, net, and their count."""
    zone = ZoneInfo(tz)
    acc = defaultdict(lambda: [0, 0, 0])
    for ch in wire:
        if ch["paid"] and ch["status"] == "succeeded" and ch["captured"]:
            day = datetime.fromtimestamp(ch["created"], UTC).astimezone(zone).date()
            a = acc[(day, ch["currency"].upper())]
            a[0] += ch["amount_captured"]
            a[1] += ch["amount_refunded"]
            a[2] += 1
    return {k: (g, r, g - r, n) for k, (g, r, n) in acc.items()}


def local_window(start: datetime, end: datetime, tz: str) -> tuple[date, date, datetime, datetime]:
    """The whole local days a job over [start, end) reads: first and last day, UTC bounds."""
    zone = ZoneInfo(tz)
    first_day = start.astimezone(zone).date()
    last_day = (end - timedelta(microseconds=1)).astimezone(zone).date()
    return (
        first_day,
        last_day,
        datetime.combine(first_day, dtime.min, zone).astimezone(UTC),
        datetime.combine(last_day + timedelta(days=1), dtime.min, zone).astimezone(UTC),
    )


def revenue_stored(env: Env, org: str, account: str) -> dict:
    return {
        (r["revenue_date"], r["currency"]): (
            r["gross_minor"],
            r["refunded_minor"],
            r["net_minor"],
            r["charge_count"],
        )
        for r in env.warehouse_rows("stripe_daily_revenue", organization_id=org, account_id=account)
    }


def test_stripe_pages_of_charges_and_daily_revenue_land_exactly_including_jpy(env, sandbox):
    st = sandbox.stripe
    accounts = {
        "acct_1ClearliftUsd": ("usd", "America/New_York", 25),
        "acct_1ClearliftJpy": ("jpy", "Asia/Tokyo", 6),
    }
    until = today() - timedelta(days=1)
    since = until - timedelta(days=5)
    start = datetime.combine(since, dtime.min, UTC)
    end = datetime.combine(until + timedelta(days=1), dtime.min, UTC)
    keys, conns = {}, {}
    for acct, (currency, tz, per_day) in accounts.items():
        st.configure_account(acct, currency=currency, time_zone=tz, charges_per_day=per_day)
        keys[acct] = st.issue_key(acct)
        conns[acct] = env.add("org-1", "stripe", acct, keys[acct])
        env.run("sync", conns[acct], "--now", "--since", since.isoformat(), "--until", until.isoformat())
    env.run("consume", "--max-seconds", "60")

    wires = {}
    for acct, (currency, tz, _) in accounts.items():
        (job,) = env.jobs(conns[acct])
        assert job["status"] == "completed", job["error_message"]
        # Charges are fetched for whole days of the account's time zone, so that every
        # revenue row sums its entire local day (the edge days too).
        zone = ZoneInfo(tz)
        first_day = start.astimezone(zone).date()
        last_day = (end - timedelta(microseconds=1)).astimezone(zone).date()
        lstart = datetime.combine(first_day, dtime.min, zone).astimezone(UTC)
        lend = datetime.combine(last_day + timedelta(days=1), dtime.min, zone).astimezone(UTC)
        wire = wires[acct] = st.charges_between(acct, lstart, lend)
        assert charge_stored(env, "org-1", acct) == charge_expected(wire, tz)
        revenue = revenue_stored(env, "org-1", acct)
        assert revenue == revenue_expected(wire, tz)
        assert job["records_synced"] == len(wire) + len(revenue)
        # The data exercises what the aggregate leaves out and subtracts.
        assert any(not ch["paid"] for ch in wire) and any(0 < ch["amount_refunded"] for ch in wire)
        assert {c for _, c in revenue} == {currency.upper()}
        requests = [
            r
            for r in st.requests_to("/v1/charges$")
            if r.headers.get("authorization") == f"Bearer {keys[acct]}"
        ]
        assert len(requests) == -(-len(wire) // 100)

    usd = st.charges_between("acct_1ClearliftUsd", start, end)
    assert len(usd) == 150  # two pages of charges in the UTC window alone
    # Local days: New York's evening before `since` already holds charges of `since` UTC.
    assert min(revenue_stored(env, "org-1", "acct_1ClearliftUsd"))[0] == since - timedelta(days=1)
    # Yen have no minor unit: 1980 yen is stored as 1980, not 19 or 198000.
    jpy_wire = wires["acct_1ClearliftJpy"]
    jpy_rows = env.warehouse_rows("stripe_charges", organization_id="org-1", account_id="acct_1ClearliftJpy")
    assert {r["amount_minor"] for r in jpy_rows} <= {500, 800, 1200, 1980, 3000, 4800, 9800, 12000}
    assert sum(r["amount_minor"] for r in jpy_rows) == sum(ch["amount"] for ch in jpy_wire)
    assert {r["currency"] for r in jpy_rows} == {"JPY"}

    tables = ("stripe_charges", "stripe_daily_revenue")
    before = [without_synced_at(env.warehouse_rows(t, organization_id="org-1")) for t in tables]
    for conn in conns.values():
        env.run("sync", conn, "--now", "--since", since.isoformat(), "--until", until.isoformat())
    env.run("consume", "--max-seconds", "60")
    assert all([j["status"] for j in env.jobs(c)] == ["completed", "completed"] for c in conns.values())
    assert [without_synced_at(env.warehouse_rows(t, organization_id="org-1")) for t in tables] == before


def test_stripe_401_fails_for_reauth_without_storing_the_key_and_429_defers(env, sandbox):
    st = sandbox.stripe
    limited_key = st.issue_key("acct_1Limited")
    dead_key = st.issue_key("acct_1Revoked")
    st.tokens.revoke(dead_key)  # Stripe echoes it masked: "Expired API Key provided: sk_test_****abcd"
    limited = env.add("org-1", "stripe", "acct_1Limited", limited_key)
    dead = env.add("org-1", "stripe", "acct_1Revoked", dead_key)
    env.run("sync", limited, "--now")  # claimed first: it meets the 429
    env.run("sync", dead, "--now")
    st.rate_limit_next(times=1, retry_after=120)
    env.run("consume", "--concurrency", "1", "--max-seconds", "60")

    (job,) = env.jobs(dead)
    assert job["status"] == "failed" and "401" in job["error_message"]
    assert "re-authorised" in job["error_message"]
    conn = env.connection(dead)
    assert conn["needs_reauth"] == 1 and conn["sync_status"] == "failed"
    q = queue_row(env, job["id"])
    assert (q["state"], q["attempts"]) == ("dead", 1)
    dead_requests = [r for r in st.requests if r.headers.get("authorization") == f"Bearer {dead_key}"]
    assert len(dead_requests) == 1  # a dead key is not retried
    errors = [
        job["error_message"],
        conn["sync_error"],
        conn["reauth_reason"],
        q["last_error"],
        env.run("status", dead).stdout,
        env.run("queue", "dead").stdout,
    ]
    assert "***" in job["error_message"]  # the echoed key was there and is masked
    for text in errors:
        assert dead_key not in (text or "") and "*" + dead_key[-4:] not in (text or "")
    for key in (dead_key, limited_key):
        assert key not in store_text(env) and key.encode() not in store_bytes(env)

    (job,) = env.jobs(limited)
    assert job["status"] == "pending" and "Rate limited" in job["error_message"]
    q = queue_row(env, job["id"])
    assert (q["state"], q["attempts"]) == ("ready", 0)
    assert 90 < q["visible_at"] - time.time() <= 121
    assert env.run_json("queue")["paused_platforms"] == {}


def test_stripe_authorisations_never_captured_are_no_revenue_and_partial_captures_count_in_part(env, sandbox):
    st = sandbox.stripe
    acct, tz = "acct_1Captures", "Etc/UTC"
    st.configure_account(acct, currency="usd", time_zone=tz, charges_per_day=10)
    conn = env.add("org-1", "stripe", acct, st.issue_key(acct))
    env.run("sync", conn, "--now", "--since", "2024-01-01", "--until", "2024-01-31")
    env.run("consume", "--max-seconds", "60")

    assert env.jobs(conn)[0]["status"] == "completed", env.jobs(conn)[0]["error_message"]
    wire = st.charges_between(acct, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))
    held = [ch for ch in wire if ch["paid"] and ch["status"] == "succeeded" and not ch["captured"]]
    partial = [ch for ch in wire if ch["captured"] and ch["amount_captured"] < ch["amount"]]
    assert held and partial  # authorised only (paid, succeeded all the same); captured in part
    assert charge_stored(env, "org-1", acct) == charge_expected(wire, tz)
    revenue = revenue_stored(env, "org-1", acct)
    assert revenue == revenue_expected(wire, tz)
    day = datetime.fromtimestamp(held[0]["created"], UTC).date()
    counted = [
        ch
        for ch in wire
        if ch["paid"]
        and ch["status"] == "succeeded"
        and ch["captured"]
        and datetime.fromtimestamp(ch["created"], UTC).date() == day
    ]
    assert revenue[(day, "USD")][0] == sum(ch["amount_captured"] for ch in counted)
    assert revenue[(day, "USD")][3] == len(counted)


def test_stripe_restricted_key_syncs_in_utc_days_or_the_configured_time_zone(env, sandbox):
    st = sandbox.stripe
    until = today() - timedelta(days=1)
    since = until - timedelta(days=2)
    start, end = (
        datetime.combine(since, dtime.min, UTC),
        datetime.combine(until + timedelta(days=1), dtime.min, UTC),
    )
    cases = {
        "acct_1RakUtc": (None, "Etc/UTC"),
        "acct_1RakNewYork": ('{"time_zone": "America/New_York"}', "America/New_York"),
    }
    keys, conns = {}, {}
    for acct, (settings, _) in cases.items():
        # The account's own time zone is Tokyo, but a read-only key cannot read the account.
        st.configure_account(acct, currency="gbp", time_zone="Asia/Tokyo", charges_per_day=9)
        keys[acct] = st.issue_key(acct, restricted=True)
        conns[acct] = env.add("org-1", "stripe", acct, keys[acct], settings=settings)
        env.run("sync", conns[acct], "--now", "--since", since.isoformat(), "--until", until.isoformat())
    env.run("consume", "--max-seconds", "60")

    for acct, (_, tz) in cases.items():
        (job,) = env.jobs(conns[acct])
        assert job["status"] == "completed", job["error_message"]
        _, _, lstart, lend = local_window(start, end, tz)
        wire = st.charges_between(acct, lstart, lend)
        assert charge_stored(env, "org-1", acct) == charge_expected(wire, tz)
        assert revenue_stored(env, "org-1", acct) == revenue_expected(wire, tz)
        assert {c for _, c in revenue_stored(env, "org-1", acct)} == {"GBP"}  # each charge's own currency
        account_calls = [
            r
            for r in st.requests_to(r"^/v1/account$")
            if r.headers.get("authorization") == f"Bearer {keys[acct]}"
        ]
        assert account_calls  # asked, was refused (403), and went on
    utc_days = {d for d, _ in revenue_stored(env, "org-1", "acct_1RakUtc")}
    assert utc_days == {since + timedelta(days=i) for i in range(3)}  # whole UTC days, no more


def test_stripe_refund_on_a_charge_from_60_days_ago_reaches_net_revenue_at_the_next_incremental_sync(
    env, sandbox
):
    st = sandbox.stripe
    acct, tz = "acct_1LateRefund", "America/New_York"
    st.configure_account(acct, currency="usd", time_zone=tz, charges_per_day=5)
    conn = env.add("org-1", "stripe", acct, st.issue_key(acct))
    env.run("sync", conn, "--now", "--since", (today() - timedelta(days=65)).isoformat())
    env.run("consume", "--max-seconds", "60")
    assert env.jobs(conn)[0]["status"] == "completed", env.jobs(conn)[0]["error_message"]

    day = today() - timedelta(days=60)  # a day of the account's (New York) calendar
    zone = ZoneInfo(tz)
    lstart = datetime.combine(day, dtime.min, zone).astimezone(UTC)
    lend = datetime.combine(day + timedelta(days=1), dtime.min, zone).astimezone(UTC)
    wire = st.charges_between(acct, lstart, lend)
    sale = next(ch for ch in wire if ch["paid"] and ch["captured"] and ch["amount_refunded"] == 0)
    before = revenue_stored(env, "org-1", acct)[(day, "USD")]
    assert before == revenue_expected(wire, tz)[(day, "USD")]
    others = {k: v for k, v in revenue_stored(env, "org-1", acct).items() if k[0] != day}

    st.refund(sale["id"], 250)  # today: two months after the sale, far outside any lookback
    with env.store() as c:  # the connection is due again: its last sync was two hours ago
        c.execute(
            "UPDATE platform_connections SET last_synced_at = ? WHERE id = ?",
            (iso_z(datetime.now(UTC) - timedelta(hours=2)), conn),
        )
    env.run("schedule")
    env.run("consume", "--max-seconds", "60")

    latest = env.jobs(conn)[-1]
    assert latest["job_type"] == "incremental" and latest["status"] == "completed", latest["error_message"]
    assert env.window_days(latest["id"])[0] >= today() - timedelta(days=4)  # the charge is far outside it
    after = revenue_stored(env, "org-1", acct)[(day, "USD")]
    assert after == revenue_expected(st.charges_between(acct, lstart, lend), tz)[(day, "USD")]
    assert (after[0], after[1], after[2], after[3]) == (
        before[0],
        before[1] + 250,
        before[2] - 250,
        before[3],
    )
    (stored,) = [
        r
        for r in env.warehouse_rows("stripe_charges", organization_id="org-1", account_id=acct)
        if r["charge_id"] == sale["id"]
    ]
    assert stored["amount_refunded_minor"] == 250
    # Days with no late refund keep their rows (the recent ones were re-read, same values).
    now_rows = revenue_stored(env, "org-1", acct)
    assert {k: v for k, v in now_rows.items() if k in others and k[0] < today() - timedelta(days=5)} == {
        k: v for k, v in others.items() if k[0] < today() - timedelta(days=5)
    }


def test_stripe_endless_pagination_fails_the_job_once_with_a_clear_message(env, sandbox):
    st = sandbox.stripe
    st.configure_account("acct_1Loop", charges_per_day=60)
    st.pagination = "repeat"  # has_more forever and starting_after ignored: the same page again
    conn = env.add("org-1", "stripe", "acct_1Loop", st.issue_key("acct_1Loop"))
    env.run("sync", conn, "--now")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(conn)
    assert job["status"] == "failed" and "pagination repeats itself" in job["error_message"]
    q = queue_row(env, job["id"])
    assert (q["state"], q["attempts"]) == ("dead", 1)
    assert len(st.requests_to(r"^/v1/charges$")) == 2
