"""The live D1 as the store (``CLEARLIFT_DB=d1://…``), the installed command: a consumer killed
(SIGKILL) mid-job leaves its job running in D1 and leased locally; after the lease the job
runs once."""

from __future__ import annotations

import signal
import time

import pytest

from tests.harness import add_with_token, control_rows, d1_rows, popen, wait_for

pytestmark = pytest.mark.sqlite_warehouse


def test_a_consumer_killed_mid_job_leaves_nothing_running_and_the_job_runs_once(d1env, sandbox, live_d1):
    app, _ = live_d1
    cid = add_with_token(d1env, sandbox, "google", "123-456-7890")
    assert d1env.run_json("schedule")["enqueued"] == 1
    sandbox.google.faults.latency_seconds = 0.5  # a slow platform: the job is mid-flight for seconds
    proc = popen(d1env, "consume", "--lease-seconds", "5")
    wait_for(
        lambda: d1_rows(app, "SELECT 1 FROM sync_jobs WHERE status = 'running'"),
        60,
        "the job to start in D1",
        0.05,
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    (job,) = d1_rows(app, "SELECT id, status FROM sync_jobs")
    job_id = job["id"]
    assert job["status"] == "running"
    sandbox.google.faults.latency_seconds = 0.0
    (msg,) = control_rows(d1env, "SELECT state, visible_at FROM sync_queue WHERE job_id = ?", (job_id,))
    assert msg["state"] == "leased"
    wait_for(lambda: time.time() > msg["visible_at"] + 0.05, 30, "the lease to expire", 0.1)
    out = d1env.run_json("consume")
    assert out.get("completed") == 1, out
    (job,) = d1_rows(app, "SELECT id, status, records_synced FROM sync_jobs")
    assert job["id"] == job_id and job["status"] == "completed" and job["records_synced"] > 0
    assert (
        d1_rows(app, "SELECT sync_status FROM platform_connections WHERE id = ?", (cid,))[0][0] == "completed"
    )
    assert [r["state"] for r in control_rows(d1env, "SELECT state FROM sync_queue")] == ["done"]
