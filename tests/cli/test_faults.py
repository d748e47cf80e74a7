"""Reliability (issue 9) without a process to kill, the command in-process: platform faults
(5xx, timeouts, resets, malformed, truncated and HTML answers) end in a retry with backoff
and a single one is absorbed; a 5xx storm ends in dead letters; a 429 defers by its hint
without using an attempt; an unreachable PostgreSQL warehouse retries the job and the run
exits cleanly. The sandboxes over loopback, real stores and warehouses."""

from __future__ import annotations

import json
import time

import pytest

from tests.expected import METRICS, assert_job_landed_exactly
from tests.harness import Env, closed_port, consume_json, make_visible, queue_row, seed

ACCOUNTS = {
    "google": "1234567890",
    "facebook": "1029384756",
    "tiktok": "7001002003004005006",
    "stripe": "acct_1Faults",
}


FAULTS = {
    # kind: (FaultPlan.add arguments, what each job's stored error says)
    "5xx": ({"kind": "status", "status": 503}, "503"),
    "timeout": ({"kind": "timeout", "seconds": 3}, "timed out after 1s"),
    "reset": ({"kind": "reset"}, "connection failed"),
    "malformed": ({"kind": "malformed"}, "malformed or truncated JSON"),
    "truncated": ({"kind": "truncate"}, "malformed or truncated JSON"),
    "html": ({"kind": "html", "status": 502}, "502"),
}


@pytest.fixture
def fault_env(tmp_path, sandbox):
    """One connection per platform, a 1 s HTTP timeout."""
    e = Env(
        home=tmp_path / "home",
        warehouse_url=f"sqlite:///{tmp_path}/warehouse.db",
        sandbox=sandbox,
        extra={"CLEARLIFT_HTTP_TIMEOUT": "1"},
    )
    e.run("init")
    e.conns = {seed(e, p, a, org=f"org-{p}"): p for p, a in ACCOUNTS.items()}
    return e


def jobs_by_platform(env: Env) -> dict[str, dict]:
    with env.store() as c:
        rows = c.execute(
            "SELECT q.platform, q.state, q.attempts, q.visible_at, j.status, j.error_message "
            "FROM sync_queue q JOIN sync_jobs j ON j.id = q.job_id ORDER BY q.id"
        ).fetchall()
    return {r["platform"]: dict(r) for r in rows}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_platform_faults_end_in_a_retry_and_a_single_fault_is_absorbed(fault_env, sandbox, fault):
    env = fault_env
    spec, message = FAULTS[fault]
    env.run("schedule")
    for platform in ACCOUNTS:
        sandbox.app(platform).faults.add(times=-1, **spec)
    t0 = time.monotonic()
    summary = consume_json(env)
    assert time.monotonic() - t0 < 30  # bounded: no endless retrying inside one run
    assert (summary["jobs"], summary.get("retry")) == (4, 4)
    now = time.time()
    for platform, job in jobs_by_platform(env).items():
        assert (job["status"], job["state"], job["attempts"]) == ("pending", "ready", 1), platform
        assert job["error_message"].startswith(f"{platform}: ") and message in job["error_message"], job
        assert job["visible_at"] > now + 10  # delayed by backoff, not retried at once
        assert len(sandbox.app(platform).requests) == 3  # HttpClient's three tries, then give up
    assert env.run_json("queue")["delayed"] == 4

    # One fault of the same kind is retried in place and the job completes.
    for platform in ACCOUNTS:
        sandbox.app(platform).faults.clear()
        sandbox.app(platform).faults.add(times=1, **spec)
    make_visible(env)
    summary = consume_json(env)
    assert (summary["jobs"], summary.get("completed")) == (4, 4)
    for platform in ACCOUNTS:
        assert sandbox.app(platform).faults.take(".*") is None  # the fault was met
    for cid, platform in env.conns.items():
        if platform != "stripe":
            assert_job_landed_exactly(env, platform, cid, env.jobs(cid)[0]["id"])
    assert env.jobs([c for c, p in env.conns.items() if p == "stripe"][0])[0]["records_synced"] > 0


@pytest.mark.slow
def test_a_5xx_storm_ends_in_dead_letters_with_the_last_error_on_the_last_attempt(fault_env, sandbox):
    env = fault_env
    env.run("schedule")
    for platform in ACCOUNTS:
        sandbox.app(platform).faults.add("status", times=-1, status=503)
    assert consume_json(env).get("retry") == 4
    with env.store() as c:  # attempts 2 and 3 go the same way (the queue's own tests count them)
        c.execute("UPDATE sync_queue SET attempts = 3, visible_at = 0 WHERE attempts = 1")
    assert consume_json(env).get("failed") == 4
    assert consume_json(env)["jobs"] == 0  # nothing left to loop on
    for platform, job in jobs_by_platform(env).items():
        assert (job["status"], job["state"], job["attempts"]) == ("failed", "dead", 4), platform
        assert "503" in job["error_message"] and "gave up after 4 attempts" in job["error_message"]
    dead = env.run_json("queue", "dead")
    assert sorted(d["platform"] for d in dead) == sorted(ACCOUNTS)
    assert all("503" in d["last_error"] for d in dead)


def test_a_429_with_retry_after_defers_each_platform_by_the_hint_without_using_an_attempt(fault_env, sandbox):
    env = fault_env
    env.run("schedule")
    for platform in ACCOUNTS:
        sandbox.app(platform).faults.add(
            "status", times=-1, status=429, headers={"Retry-After": "120"}, body="Too Many Requests"
        )
    t0 = time.monotonic()
    summary = consume_json(env)
    assert time.monotonic() - t0 < 20
    assert (summary["jobs"], summary.get("deferred")) == (4, 4)
    now = time.time()
    for platform, job in jobs_by_platform(env).items():
        assert (job["status"], job["state"], job["attempts"]) == ("pending", "ready", 0), platform
        assert job["error_message"].startswith(f"Rate limited by {platform}; deferred 120s"), job
        assert 110 < job["visible_at"] - now <= 121, (platform, job["visible_at"] - now)
        assert len(sandbox.app(platform).requests) == 1  # a long wait is not slept in place
    assert consume_json(env)["jobs"] == 0  # deferred, not spinning


def test_unreachable_warehouse_retries_the_job_and_the_run_exits_cleanly(env, sandbox):
    # `env` (conftest): the warehouse in PostgreSQL
    cid = seed(env, "google", "1234567890")
    env.run("schedule")
    (job,) = env.jobs(cid)
    port = closed_port()
    proc = env.run(
        "consume", "--json", CLEARLIFT_WAREHOUSE_URL=f"postgresql://postgres@127.0.0.1:{port}/test"
    )
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout).get("retry") == 1
    job = env.job(job["id"])
    assert job["status"] == "pending" and "connecting failed" in job["error_message"], job["error_message"]
    assert f"127.0.0.1:{port}/test" in job["error_message"]
    row = queue_row(env, job["id"])
    assert (row["state"], row["attempts"]) == ("ready", 1)
    assert env.run_json("queue")["delayed"] == 1
    assert env.warehouse_rows(METRICS["google"]) == []

    make_visible(env)
    assert consume_json(env).get("completed") == 1
    assert_job_landed_exactly(env, "google", cid, job["id"])
