"""Overlapping cron runs of `clearlift schedule` (three processes that read the same due
connections before any enqueues, on the PostgreSQL control plane): one enqueues, the others
count them as already queued, and none prints a line per connection."""

from __future__ import annotations

import json
import subprocess
import time

from tests.helpers import (
    CLEARLIFT,
    cli_env,
    insert_connections,
    query,
    run_cli,
)


def test_overlapping_schedule_runs_count_jobs_already_queued_and_print_nothing(tmp_path, pg_schema_url):
    """Three runs that all read the same due connections before any of them enqueues (as
    overlapping cron runs do): one enqueues, the others count the connections as already
    queued. Nothing on stderr (it used to be a line per connection), nothing at all with -q."""
    import psycopg

    env = cli_env(tmp_path, CLEARLIFT_DB=pg_schema_url)
    assert run_cli(["init", "--store-only"], env).returncode == 0
    due = insert_connections(
        pg_schema_url, [{"account_id": f"n{i}", "last_synced_at": None} for i in range(25)]
    )
    schema = pg_schema_url.rsplit("search_path%3D", 1)[1]
    # Every run reads clearlift_connection_state right after its candidates: holding that
    # table makes all three wait there, each with the same candidates in hand.
    holder = psycopg.connect(pg_schema_url, autocommit=False)
    holder.execute("LOCK TABLE clearlift_connection_state IN ACCESS EXCLUSIVE MODE")
    args = [["-q", "schedule"], ["schedule"], ["schedule", "--json"]]
    procs = [
        subprocess.Popen(
            [CLEARLIFT, *a],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a in args
    ]
    try:
        watcher = psycopg.connect(pg_schema_url, autocommit=True)
        deadline = time.monotonic() + 60
        while (
            watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                (f"{schema}.clearlift_connection_state",),
            ).fetchone()[0]
            < 3
        ):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (
                "runs never overlapped"
            )
            time.sleep(0.02)
        watcher.close()
    finally:
        holder.rollback()
        holder.close()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert [err for _, err in outs] == ["", "", ""]
    assert outs[0][0] == ""  # -q
    text, as_json = outs[1][0], json.loads(outs[2][0])
    assert as_json["enqueued"] + as_json["already_queued"] == len(due) and as_json["skipped"] == 0
    assert f"{len(due)} enqueued" in text or f"{len(due)} already queued" in text, text
    assert "0 skipped" in text
    assert sorted(r[0] for r in query(pg_schema_url, "SELECT connection_id FROM sync_jobs")) == sorted(due)
