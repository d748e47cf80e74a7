"""The operator's commands, run as cron runs them: status shapes and exit codes, queue
inspection, quiet and JSON logging, and the offline demo."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import date

import pytest

from tests.harness import CLEARLIFT

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


def test_quiet_cron_runs_print_nothing_and_json_logs_parse(env):
    access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
    env.add("org-1", "google", "1234567890", access, refresh)
    proc = env.run("-q", "schedule")
    assert proc.stdout == "" and proc.stderr == ""
    proc = env.run("--log-format", "json", "consume")
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert any("completed" in line["message"] for line in lines)
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert access not in proc.stderr and refresh not in proc.stderr


def test_demo_runs_offline_on_a_fresh_machine(tmp_path):
    home = tmp_path / "demo"
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLEARLIFT_", "GOOGLE_", "FACEBOOK_", "TIKTOK_", "ENCRYPTION_"))
    }
    clean["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [CLEARLIFT, "demo", "--home", str(home)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stripe_daily_revenue" in proc.stdout
    assert "API versions: Google Ads v26, Meta Marketing v27.0" in proc.stdout
    # The manager connection synced both its client accounts, each under its own id.
    per_client = dict(
        pair.split()
        for pair in proc.stdout.split("daily rows per client account ")[1].splitlines()[0].split(", ")
    )
    assert set(per_client) == {"3010000001", "3010000002"} and all(int(n) > 0 for n in per_client.values())
    status = subprocess.run(
        [CLEARLIFT, "status", "--json"],
        env={**clean, "CLEARLIFT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = json.loads(status.stdout)
    assert status.returncode == 1  # the demo's revoked connection is failing, by design
    by_platform = {}
    for r in rows:
        by_platform.setdefault(r["connection"]["platform"], []).append(r["latest_sync"]["status"])
    assert set(by_platform) == {"google", "facebook", "tiktok", "stripe"}
    assert sorted(by_platform["google"]) == ["completed", "completed", "completed", "failed"]
    assert all(s == ["completed"] for p, s in by_platform.items() if p != "google")


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


def test_python_dash_m_and_sandbox_serve(tmp_path):
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "clearlift_cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "schedule" in proc.stdout
    serve = subprocess.Popen(
        [CLEARLIFT, "sandbox", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        lines = []
        while not lines or not lines[-1].startswith("# Ctrl-C"):
            lines.append(serve.stdout.readline().rstrip("\n"))
            assert len(lines) < 50, lines
        env = dict(line[len("export ") :].split("=", 1) for line in lines if line.startswith("export "))
        google_access = next(line.split()[2] for line in lines if line.startswith("# google:"))
        import requests

        url = f"{env['CLEARLIFT_GOOGLE_ADS_URL']}/v26/customers/1234567890/googleAds:searchStream"
        ok = requests.post(
            url,
            json={"query": "SELECT customer.id FROM customer"},
            timeout=10,
            headers={
                "Authorization": f"Bearer {google_access}",
                "developer-token": env["GOOGLE_ADS_DEVELOPER_TOKEN"],
            },
        )
        assert ok.status_code == 200 and ok.json()[0]["results"][0]["customer"]["id"] == "1234567890"
        bad = requests.post(
            url,
            json={"query": "SELECT customer.id FROM customer"},
            timeout=10,
            headers={"Authorization": "Bearer nope", "developer-token": env["GOOGLE_ADS_DEVELOPER_TOKEN"]},
        )
        assert bad.status_code == 401
    finally:
        serve.terminate()
        serve.wait(timeout=10)
    assert serve.returncode == 0


def test_sigterm_finishes_the_running_job_and_claims_no_more(env):
    import signal
    import time

    ids = []
    for acct in ("1111111111", "2222222222"):
        access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
        ids.append(env.add("org-1", "google", acct, access, refresh))
    env.run("schedule")
    env.sandbox.google.faults.latency_seconds = 0.7  # a job takes ~2 s: three requests
    proc = subprocess.Popen(
        [CLEARLIFT, "consume", "--concurrency", "1"],
        env=env.environ(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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
