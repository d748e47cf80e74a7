"""What the warehouse must hold after a sync, computed independently of clearlift: from the
sandboxes' raw wire rows, with the test's own ``Decimal`` arithmetic. Shared by the
consume tests of each platform and the reliability and stopping scenarios.
Plus the stopping scenarios' slow job and what must follow its release."""

from __future__ import annotations

import json
import time
from datetime import date
from decimal import Decimal

from tests.harness import Env, coverage, queue_row, seed

METRICS = {p: f"{p}_ads_daily_metrics" for p in ("google", "facebook", "tiktok")}
CAMPAIGNS = {p: f"{p}_ads_campaigns" for p in ("google", "facebook", "tiktok")}
FACEBOOK_PURCHASE = ("purchase",)


def micros(value) -> int:
    """Independent conversion of a wire decimal to micros (the test's own arithmetic)."""
    return int(Decimal(str(value)) * 1_000_000)


def google_expected(app, cid: str, since: date, until: date) -> dict:
    """Google Ads: per (campaign, day) the metrics of the sandbox's GAQL rows."""
    out = {}
    for row in app.metric_rows(cid, since, until):
        m = row.get("metrics", {})
        out[(row["campaign"]["id"], row["segments"]["date"])] = (
            int(m.get("impressions", "0")),
            int(m.get("clicks", "0")),
            int(m.get("costMicros", "0")),
            Decimal(str(m.get("conversions", 0))),
            micros(m.get("conversionsValue", 0)),
        )
    return out


def facebook_expected(app, account: str, since: date, until: date, action_types=FACEBOOK_PURCHASE) -> dict:
    """Meta: per (campaign, day) the insight rows, conversions and their value summed over
    ``action_types``."""
    out = {}
    for row in app.insight_rows(account, since, until):
        key = (row["campaign_id"], row["date_start"])
        assert key not in out  # the sandbox serves one row per campaign-day
        out[key] = (
            int(row["impressions"]),
            int(row["clicks"]),
            micros(row["spend"]),
            sum(
                (Decimal(a["value"]) for a in row.get("actions", []) if a["action_type"] in action_types),
                Decimal(0),
            ),
            sum(micros(a["value"]) for a in row.get("action_values", []) if a["action_type"] in action_types),
        )
    return out


def tiktok_expected(app, advertiser: str, since: date, until: date) -> dict:
    """TikTok: values computed from the raw report rows (strings or JSON numbers), deleted
    campaigns included; the value is web complete payments plus in-app purchases."""
    out = {}
    for row in app.report_rows(advertiser, since, until):
        m, dims = row["metrics"], row["dimensions"]
        key = (dims["campaign_id"], dims["stat_time_day"][:10])
        assert key not in out
        out[key] = (
            int(m["impressions"]),
            int(m["clicks"]),
            micros(m["spend"]),
            Decimal(str(m["conversion"])),
            micros(m["total_complete_payment_rate"]) + micros(m["total_purchase_value"]),
        )
    return out


def metric_values(rows: list[dict]) -> dict:
    """Daily metric rows keyed by (campaign, day), in the shape the ``*_expected`` functions
    return."""
    return {
        (r["campaign_id"], r["metric_date"].isoformat()): (
            r["impressions"],
            r["clicks"],
            r["spend_micros"],
            r["conversions"],
            r["conversion_value_micros"],
        )
        for r in rows
    }


def stored_ads(env: Env, platform: str, org: str, account: str | None = None) -> dict:
    """The warehouse's ads rows in the shape the ``*_expected`` functions return."""
    rows = env.warehouse_rows(METRICS[platform], organization_id=org, account_id=account)
    got = metric_values(rows)
    assert len(got) == len(rows)  # one row per campaign-day
    return got


def expected_ads(env: Env, platform: str, account: str, since: date, until: date) -> dict:
    app = env.sandbox.app(platform)
    if platform == "google":
        return google_expected(app, account.replace("-", ""), since, until)
    if platform == "facebook":
        return facebook_expected(app, account, since, until)
    return tiktok_expected(app, account, since, until)


def assert_job_landed_exactly(env: Env, platform: str, cid: str, job_id: str) -> None:
    """The job's window is in the warehouse exactly once, and records_synced says so."""
    job = env.job(job_id)
    conn = env.connection(cid)
    assert job["status"] == "completed", job["error_message"]
    since, until = env.window_days(job_id)
    got = stored_ads(env, platform, conn["organization_id"], conn["account_id"])
    want = expected_ads(env, platform, conn["account_id"], since, until)
    assert got == want and want
    campaigns = env.warehouse_rows(
        CAMPAIGNS[platform], organization_id=conn["organization_id"], account_id=conn["account_id"]
    )
    assert job["records_synced"] == len(want) + len(campaigns)
    assert json.loads(job["metadata"])["records_synced"] == job["records_synced"]
    slices = coverage(env, job_id)
    assert sum(n for _, _, n in slices) == job["records_synced"]


# --- a consumer stopping while a request is in flight -------------------------------------------


def slow_google_job(env: Env, sandbox) -> tuple[str, str]:
    """A Google job whose data answer comes one byte per second (~10 minutes)."""
    cid = seed(env, "google", "1234567890")
    env.run("schedule")
    (job,) = env.jobs(cid)
    sandbox.google.faults.add("slow_body", path="googleAds", times=-1, seconds=1.0)
    return cid, job["id"]


def assert_released_then_completes(env: Env, sandbox, cid: str, job_id: str, summary: dict) -> None:
    assert summary["jobs"] == 1 and summary.get("released") == 1, summary
    row = queue_row(env, job_id)
    assert (row["state"], row["attempts"], row["lease_token"]) == ("ready", 0, None)
    assert row["visible_at"] <= time.time()  # claimable again at once
    job = env.job(job_id)
    assert job["status"] == "pending" and "consumer is stopping" in job["error_message"]
    sandbox.google.faults.clear()
    assert json.loads(env.run("consume", "--json").stdout).get("completed") == 1
    assert queue_row(env, job_id)["attempts"] == 1
    assert_job_landed_exactly(env, "google", cid, job_id)
