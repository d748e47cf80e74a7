"""The operator's commands, in-process: status shapes and exit codes, queue inspection and
dead-letter retry, `sync --now --wait`. (Quiet cron runs and `python -m`:
tests/e2e/test_entry_point.py; SIGTERM: tests/e2e/test_stopping.py; the demo:
tests/cli/test_demo.py.)"""

from __future__ import annotations

import json
from datetime import date

import pytest

# `env` (conftest) with the embedded SQLite warehouse.
pytestmark = pytest.mark.sqlite_warehouse


def test_status_json_is_exactly_the_api_shape(env):
    access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
    cid = env.add("org-1", "google", "1234567890", access, refresh)
    shape = env.run_json("status", cid)
    assert shape == {
        "connection": {
            "platform": "google",
            "account_name": "google 1234567890",
            "is_active": True,
            "last_synced_at": None,
            "sync_status": "pending",
        },
        "latest_sync": None,
    }
    env.run("schedule")
    env.run("consume")
    shape = env.run_json("status", cid)
    assert list(shape) == ["connection", "latest_sync"]
    assert list(shape["connection"]) == [
        "platform",
        "account_name",
        "is_active",
        "last_synced_at",
        "sync_status",
    ]
    assert list(shape["latest_sync"]) == ["status", "type", "completed_at", "records_synced", "error"]
    assert shape["latest_sync"]["status"] == "completed" and shape["latest_sync"]["records_synced"] > 0
    assert shape["connection"]["sync_status"] == "completed"


def test_unknown_connection_is_a_clear_error_with_exit_1(env):
    proc = env.run("status", "org-9-google-1", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: no connection 'org-9-google-1'")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_status_all_exits_non_zero_when_an_active_connection_fails(env):
    good, good_rt = env.sandbox.google.tokens.issue(ttl=3600)
    bad, bad_rt = env.sandbox.google.tokens.issue(ttl=3600)
    env.sandbox.google.tokens.revoke(bad)
    env.sandbox.google.tokens.revoke(bad_rt)
    ok_id = env.add("org-1", "google", "1111111111", good, good_rt)
    bad_id = env.add("org-2", "google", "2222222222", bad, bad_rt)
    env.run("schedule")
    env.run("consume")
    assert env.run("status", check=False).returncode == 1
    rows = json.loads(env.run("status", "--json", check=False).stdout)
    assert {r["connection_id"] for r in rows} == {ok_id, bad_id}
    failing = json.loads(env.run("status", "--failing", "--json", check=False).stdout)
    assert [r["connection_id"] for r in failing] == [bad_id]
    assert env.run("status", "--org", "org-1").returncode == 0
    panel = env.run("status", bad_id).stdout
    assert "needs re-authorisation" in panel and "reconnect" in panel
    # Pausing the failing connection: nothing active fails any more.
    env.run("connections", "pause", bad_id)
    assert env.run("status").returncode == 0


def test_queue_inspection_and_dead_letter_retry(env):
    access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
    cid = env.add("org-1", "google", "1234567890", access, refresh)
    env.run("schedule")
    q = env.run_json("queue")
    assert (
        q["ready"] == {"high": 1, "normal": 0}
        and q["dead"] == 0
        and q["oldest_ready_age_seconds"] is not None
    )
    env.sandbox.google.faults.add(
        "status",
        path="googleAds",
        times=1,
        status=400,
        body={"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad query"}},
    )
    env.run("consume")
    dead = env.run_json("queue", "dead")
    assert len(dead) == 1 and dead[0]["connection_id"] == cid and "bad query" in dead[0]["last_error"]
    assert env.run("queue", "retry", check=False).returncode == 2  # neither id nor --all
    assert env.run("queue", "retry", "999999", check=False).returncode == 1
    assert "re-queued 1" in env.run("queue", "retry", str(dead[0]["id"])).stdout
    env.run("consume")
    assert env.run_json("status", cid)["latest_sync"]["status"] == "completed"
    assert env.run_json("queue")["dead"] == 0


def test_sync_now_wait_runs_the_job_here(env):
    access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
    cid = env.add("org-1", "google", "1234567890", access, refresh)
    proc = env.run("sync", cid, "--now", "--since", "2025-01-01", "--until", "2025-01-31", "--wait")
    assert "enqueued full job" in proc.stdout and ": completed," in proc.stdout
    job = env.jobs(cid)[0]
    assert job["status"] == "completed" and job["records_synced"] > 31
    assert env.window_days(job["id"]) == (date(2025, 1, 1), date(2025, 1, 31))


def test_sync_wait_exits_non_zero_when_the_job_fails(env):
    access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
    env.sandbox.google.tokens.revoke(access)
    env.sandbox.google.tokens.revoke(refresh)
    cid = env.add("org-1", "google", "1234567890", access, refresh)
    proc = env.run("sync", cid, "--now", "--wait", check=False)
    assert proc.returncode == 1 and ": failed," in proc.stdout
