"""Issue 16, the installed command: SIGTERM holds a consumer for a request in flight (one
signal: the grace, a second: none), and a SIGTERMed consumer finishes its running job and
claims no more. The same without signals: tests/cli/test_stopping.py and
tests/integration/test_stopping.py."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.expected import assert_released_then_completes, slow_google_job
from tests.harness import popen, wait_for

# `env` (conftest) with the embedded SQLite warehouse.
pytestmark = pytest.mark.sqlite_warehouse


@pytest.mark.parametrize("signals, grace", [(1, "1"), (2, "600")])
def test_sigterm_holds_for_a_request_in_flight(env, sandbox, signals, grace):
    cid, job_id = slow_google_job(env, sandbox)
    proc = popen(env, "consume", "--json", "--stop-grace", grace, CLEARLIFT_HTTP_TIMEOUT="600")
    try:
        wait_for(lambda: sandbox.google.requests_to("googleAds"), 30, "the job's first request")
        time.sleep(0.3)
        t0 = time.monotonic()
        for _ in range(signals):  # a second SIGTERM: no more grace
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert took < 1 + 3, took
    summary = json.loads(out)
    assert summary["stopped_by"] == "signal"
    assert_released_then_completes(env, sandbox, cid, job_id, summary)


def test_sigterm_finishes_the_running_job_and_claims_no_more(env):
    import signal
    import time

    ids = []
    for acct in ("1111111111", "2222222222"):
        access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
        ids.append(env.add("org-1", "google", acct, access, refresh))
    env.run("schedule")
    env.sandbox.google.faults.latency_seconds = 0.7  # a job takes ~2 s: three requests
    proc = popen(env, "consume", "--concurrency", "1")
    deadline = time.monotonic() + 30
    while not env.sandbox.google.requests_to("googleAds") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped: signal" in out and "1 completed" in out
    statuses = sorted(env.jobs(i)[0]["status"] for i in ids)
    assert statuses == ["completed", "pending"]
    q = env.run_json("queue")
    assert q["leased"] == 0 and q["ready"]["high"] == 1  # the other job was never claimed
    env.sandbox.google.faults.latency_seconds = 0
    env.run("consume")
    assert [env.jobs(i)[0]["status"] for i in ids] == ["completed", "completed"]
