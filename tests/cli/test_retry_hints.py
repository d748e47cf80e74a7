"""Issue 16: a platform's retry hint can neither spin a job nor park it (or a whole
platform) for ever; deferrals show in `status`, and an operator can lift a platform pause.
The command in-process against the Google sandbox over loopback, a SQLite store."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from tests.harness import queue_row, seed

DAY = 86_400.0  # the hint ceiling (errors.RETRY_HINT_CEILING_SECONDS)


# `env` (conftest) with the embedded SQLite warehouse.
pytestmark = pytest.mark.sqlite_warehouse


def quota_error(scope: str = "DEVELOPER", retry_delay: str | None = None) -> dict:
    """Google's 429 RESOURCE_EXHAUSTED body (PLATFORM_APIS.md), the delay in the body or not."""
    details = {"rateScope": scope, "rateName": "Number of operations for basic access"}
    if retry_delay is not None:
        details["retryDelay"] = retry_delay
    return {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "Resource has been exhausted",
            "details": [
                {
                    "@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
                    "errors": [
                        {
                            "errorCode": {"quotaError": "RESOURCE_EXHAUSTED"},
                            "message": "Too many requests.",
                            "details": {"quotaErrorDetails": details},
                        }
                    ],
                }
            ],
        }
    }


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("hint", ["0", "-5", "NaN"])
def test_a_zero_negative_or_nan_hint_defers_the_job_instead_of_spinning(env, sandbox, hint):
    cid = seed(env, "google", "1234567890")
    env.run("schedule")
    (job,) = env.jobs(cid)
    sandbox.google.faults.add(
        "status",
        path="googleAds",
        times=-1,
        status=429,
        headers={"Retry-After": hint},
        body=quota_error("ACCOUNT"),
    )
    t0 = time.time()
    out = json.loads(env.run("consume", "--json", "--max-seconds", "4").stdout)
    # One delivery: the hint (held at 1 s) is waited out in place twice, then the job leaves.
    assert (out["jobs"], out.get("deferred")) == (1, 1), out
    assert len(sandbox.google.requests_to("googleAds")) == 3
    row = queue_row(env, job["id"])
    assert (row["state"], row["attempts"]) == ("ready", 0)
    assert row["visible_at"] - t0 >= 30  # back no sooner than the deferral floor
    assert env.job(job["id"])["error_message"].startswith("Rate limited by google; deferred 30s")


@pytest.mark.parametrize("header, retry_delay", [("inf", None), ("1e12", None), (None, "1000000000000s")])
def test_an_endless_app_wide_hint_pauses_the_platform_for_a_day_at_most(env, sandbox, header, retry_delay):
    cids = [seed(env, "google", f"10000000{i:02d}", org=f"org-{i}") for i in range(3)]
    env.run("schedule")
    sandbox.google.faults.add(
        "status",
        path="googleAds",
        times=1,
        status=429,
        body=quota_error(retry_delay=retry_delay),
        headers={"Retry-After": header} if header else {},
    )
    t0 = time.time()
    out = json.loads(env.run("consume", "--json", "--concurrency", "1").stdout)
    assert (out["jobs"], out.get("deferred")) == (1, 1), out  # the others wait for the pause
    q = env.run_json("queue")
    assert t0 + DAY - 5 < epoch(q["paused_platforms"]["google"]) <= time.time() + DAY
    assert q["delayed"] == 1 and q["ready"]["high"] == 2

    # `status` says when each connection's job runs next, and why.
    rows = {r["connection_id"]: r for r in json.loads(env.run("status", "--json").stdout)}
    for cid in cids:
        deferred = rows[cid]["deferred"]
        assert t0 + DAY - 5 < epoch(deferred["until"]) <= time.time() + DAY, deferred
        assert "RESOURCE_EXHAUSTED" in deferred["reason"], deferred
    reasons = sorted(rows[c]["deferred"]["reason"].split(";")[0] for c in cids)
    assert reasons == ["Rate limited by google"] + ["platform google paused: Rate limited by google"] * 2
    table = env.run("status").stdout
    assert "next attempt" in table and "platform google paused" in table
    assert "next attempt:" in env.run("status", cids[0]).stdout

    # The operator lifts the pause: every job runs now.
    lifted = env.run("queue", "unpause", "google").stdout
    assert lifted.strip() == "google: pause lifted; 1 deferred job(s) claimable now"
    q = env.run_json("queue")
    assert q["paused_platforms"] == {} and q["delayed"] == 0
    assert all(r["deferred"] is None for r in json.loads(env.run("status", "--json").stdout))
    out = json.loads(env.run("consume", "--json").stdout)
    assert out.get("completed") == 3, out
    assert (
        env.run("queue", "unpause", "google").stdout.strip()
        == "google: was not paused; 0 deferred job(s) claimable now"
    )


def test_a_pause_written_far_in_the_future_is_shown_and_can_be_lifted(env, sandbox):
    # What an older clearlift (or another writer) left behind: a pause until the year 33715.
    cid = seed(env, "google", "1234567890")
    env.run("schedule")
    with env.store() as c:
        c.execute(
            "INSERT INTO clearlift_platform_pauses (platform, until, reason) VALUES ('google', 1e12, 'quota')"
        )
    assert env.run_json("queue")["paused_platforms"] == {"google": "9999-12-31T23:59:59.999Z"}
    text = env.run("queue").stdout
    assert "platform google paused by a rate limit until 9999-12-31" in text
    assert "clearlift queue unpause google" in text
    (row,) = json.loads(env.run("status", "--json").stdout)
    assert row["deferred"] == {"until": "9999-12-31T23:59:59.999Z", "reason": "platform google paused: quota"}
    assert json.loads(env.run("consume", "--json").stdout)["jobs"] == 0
    env.run("queue", "unpause", "google")
    assert json.loads(env.run("consume", "--json").stdout).get("completed") == 1
    assert env.jobs(cid)[0]["status"] == "completed"


def test_unpause_refuses_an_unknown_platform(env):
    proc = env.run("queue", "unpause", "myspace", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown platform 'myspace'")
