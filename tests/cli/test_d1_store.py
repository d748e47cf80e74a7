"""The live D1 as the store (``CLEARLIFT_DB=d1://…``): the command in-process against the
sandbox D1 (Cloudflare's REST API over a SQLite file) and the platform sandboxes, over
loopback, with clearlift's own tables in the local control database."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.harness import add_with_token, control_rows, d1_rows

pytestmark = pytest.mark.sqlite_warehouse


def test_init_on_d1_adds_only_the_later_columns_and_keeps_clearlifts_tables_local(d1env, live_d1):
    app, _ = live_d1
    names = {r["name"] for r in d1_rows(app, "SELECT name FROM sqlite_master")}
    assert not {n for n in names if n.startswith(("clearlift", "sync_queue"))}, names
    # nothing but ClearLift's three tables and their automatic unique indexes
    assert {r["name"] for r in d1_rows(app, "SELECT name FROM sqlite_master WHERE type = 'table'")} == {
        "platform_connections",
        "sync_jobs",
        "onboarding_progress",
    }
    cols = {r["name"] for r in d1_rows(app, "PRAGMA table_info(platform_connections)")}
    assert {"needs_reauth", "consecutive_auth_failures"} <= cols
    local = {r["name"] for r in control_rows(d1env, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"sync_queue", "clearlift_coverage", "clearlift_meta"} <= local
    assert not local & {"platform_connections", "sync_jobs"}
    assert "added column" not in d1env.run("init").stdout  # idempotent: nothing more to add
    assert {r["name"] for r in d1_rows(app, "PRAGMA table_info(sync_jobs)")} >= {"progress_percentage"}


def test_schedule_consume_status_through_d1_with_429_and_503_loses_and_doubles_nothing(
    d1env, sandbox, live_d1
):
    app, _ = live_d1
    ids = [
        add_with_token(d1env, sandbox, "google", "123-456-7890"),
        add_with_token(d1env, sandbox, "tiktok", "7012345678901234567"),
        add_with_token(d1env, sandbox, "stripe", "acct_1D1Shop"),
    ]
    before = len(app.requests)
    app.rate_limit_next(1, retry_after=1)
    app.overload_next(1)
    summary = d1env.run_json("schedule")
    assert summary["enqueued"] == 3
    schedule_requests = len(app.requests) - before
    app.overload_next(1, status=503)
    app.rate_limit_next(1, retry_after=1)
    before = len(app.requests)
    out = d1env.run_json("consume", "--concurrency", "2")
    assert out.get("completed") == 3, out
    consume_requests = len(app.requests) - before
    jobs = d1_rows(app, "SELECT connection_id, status, records_synced FROM sync_jobs")
    assert sorted(r["connection_id"] for r in jobs) == sorted(ids)  # one job each, none doubled
    assert {r["status"] for r in jobs} == {"completed"} and all(r["records_synced"] > 0 for r in jobs)
    conns = d1_rows(app, "SELECT sync_status, last_synced_at FROM platform_connections")
    assert {r["sync_status"] for r in conns} == {"completed"} and all(r["last_synced_at"] for r in conns)
    assert {r["state"] for r in control_rows(d1env, "SELECT state FROM sync_queue")} == {"done"}
    # few requests: schedule reads and writes in a handful, a job in a handful (retries included)
    assert schedule_requests <= 10, schedule_requests
    assert consume_requests <= 3 * 8, consume_requests
    status = d1env.run_json("status")  # a list, one entry per connection, read from D1
    assert {c["connection_id"] for c in status} == set(ids)
    assert {c["connection"]["sync_status"] for c in status} == {"completed"}, status
    assert all(c["latest_sync"]["records_synced"] > 0 for c in status)
    # a second schedule finds nothing due and creates nothing
    assert d1env.run_json("schedule")["enqueued"] == 0


def test_a_crash_after_the_d1_write_and_before_the_ack_runs_nothing_twice(d1env, sandbox, live_d1):
    """The sequence's gap: D1 says completed, the local message is still leased (the process
    died before its local commit). The redelivery is acked without running again."""
    from clearlift_cli import commands
    from clearlift_cli.settings import resolve
    from clearlift_cli.store.queue import Queue

    app, _ = live_d1
    add_with_token(d1env, sandbox, "tiktok", "7012345678901234567")
    assert d1env.run_json("schedule")["enqueued"] == 1
    settings = resolve(environ=d1env.environ(), read_config=False)
    store = commands.store_for(settings)
    try:
        queue = Queue(store)
        (claimed,) = queue.claim("crashing-host", limit=1, lease_seconds=1)
        conn = store.get_connection(claimed.message.connection_id)
        assert store.start_job(claimed.message.job_id, conn.id)
        # the first half of Store.complete_job's D1 sequence, then the "crash": no ack
        store.tables.run(
            None, store._completion(claimed.message.job_id, conn, 5, "?", ('{"records_synced": 5}',))
        )
    finally:
        store.close()
    time.sleep(1.1)  # the lease expires
    requests_before = len(sandbox.tiktok.requests)
    out = d1env.run_json("consume")
    assert out.get("stale") == 1 and not out.get("completed"), out
    assert len(sandbox.tiktok.requests) == requests_before  # nothing fetched again
    (job,) = d1_rows(app, "SELECT status, records_synced FROM sync_jobs")
    assert job["status"] == "completed" and job["records_synced"] == 5
    assert [r["state"] for r in control_rows(d1env, "SELECT state FROM sync_queue")] == ["done"]


def test_the_api_workers_pending_row_in_d1_is_adopted_under_its_own_id(d1env, sandbox, live_d1):
    app, _ = live_d1
    cid = add_with_token(d1env, sandbox, "tiktok", "7012345678901234567")
    # the API worker's manual trigger, as its SQL writes it
    with app.connect() as c:
        c.execute(
            "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type) "
            "VALUES ('api-job-1', 'org-1', ?, 'pending', 'full')",
            (cid,),
        )
    out = d1env.run_json("schedule")
    assert out["adopted"] == 1 and out["enqueued"] == 0
    assert d1env.run_json("consume").get("completed") == 1
    (job,) = d1_rows(app, "SELECT id, status, metadata FROM sync_jobs")
    assert job["id"] == "api-job-1" and job["status"] == "completed"
    assert json.loads(job["metadata"])["adopted"]["by"] == "clearlift schedule"


def test_the_cloudflare_token_never_appears_in_output_errors_status_or_d1(d1env, sandbox, live_d1, tmp_path):
    app, _ = live_d1
    token = app.token
    cid = add_with_token(d1env, sandbox, "google", "123-456-7890")
    outputs = [
        d1env.run("-v", "-v", "schedule"),
        d1env.run("-v", "-v", "consume"),
        d1env.run("status", cid),
        d1env.run("status", "--json"),
        d1env.run("doctor", check=False),
    ]
    wrong = d1env.run("status", check=False, CLOUDFLARE_API_TOKEN="cf-wrong-token-abcdefghijklmnop")
    assert wrong.returncode == 3, (wrong.stdout, wrong.stderr)
    assert "CLOUDFLARE_API_TOKEN" in wrong.stderr and "cf-wrong-token" not in wrong.stderr + wrong.stdout
    for proc in outputs:
        assert token not in proc.stdout + proc.stderr
    dump = "\n".join(
        str(tuple(r))
        for t in ("platform_connections", "sync_jobs")
        for r in d1_rows(app, f"SELECT * FROM {t}")
    )
    assert token not in dump
    assert token.encode() not in Path(d1env.home / "control.db").read_bytes()


def test_refresh_tokens_writes_the_new_token_back_to_d1_compare_and_set(d1env, sandbox, live_d1):
    from datetime import UTC, datetime, timedelta

    app, _ = live_d1
    access, refresh = sandbox.issue_token("google", ttl=60)
    soon = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    cid = d1env.add("org-1", "google", "123-456-7890", access, refresh, expires_at=soon)
    (before,) = d1_rows(app, "SELECT credentials_encrypted, expires_at FROM platform_connections")
    out = d1env.run_json("refresh-tokens")
    assert out["refreshed"] == 1, out
    (after,) = d1_rows(
        app, "SELECT credentials_encrypted, expires_at FROM platform_connections WHERE id = ?", (cid,)
    )
    assert after["credentials_encrypted"] != before["credentials_encrypted"]
    assert after["expires_at"] > before["expires_at"]
    # the statement that wrote it was guarded by the old ciphertext (compare-and-set)
    swaps = [r for r in app.requests if "coalesce(credentials_encrypted, '')" in r.body.decode()]
    assert swaps and before["credentials_encrypted"] in swaps[-1].body.decode()
