"""Several real processes on one store file: overlapping `clearlift schedule` runs and
competing consumers. Nothing is faked here, not even the clock."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta

from clearlift_cli.timeutil import iso_z
from tests.e2e.children import fill_queue, run_consumers
from tests.helpers import CLEARLIFT, cli_env, home_db, insert_connections, new_store, query

UTC = UTC


def test_eight_overlapping_schedule_runs_create_one_job_per_due_connection(tmp_path):
    env = cli_env(tmp_path)
    db = home_db(tmp_path)
    new_store(db).close()
    now = datetime.now(UTC)
    two_hours_ago = now - timedelta(hours=2)
    due = insert_connections(
        db,
        [{"account_id": f"n{i}", "last_synced_at": None} for i in range(80)]
        + [
            {"account_id": f"s{i}", "last_synced_at": two_hours_ago.strftime("%Y-%m-%d %H:%M:%S")}
            for i in range(60)
        ]
        + [
            {"account_id": f"j{i}", "platform": "tiktok", "last_synced_at": iso_z(two_hours_ago)}
            for i in range(60)
        ],
    )
    not_due = insert_connections(
        db,
        [{"account_id": f"r{i}", "last_synced_at": iso_z(now - timedelta(minutes=5))} for i in range(20)]
        + [{"account_id": f"p{i}", "last_synced_at": None, "is_active": 0} for i in range(5)],
    )
    assert len(due) == 200

    procs = [
        subprocess.Popen(
            [CLEARLIFT, "schedule", "--json"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]

    enqueued = 0
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "locked" not in err.lower() and "Traceback" not in err, err
        enqueued += json.loads(out)["enqueued"]
    assert enqueued == 200  # the runs together enqueued each due connection once

    jobs = query(db, "SELECT id, connection_id, status FROM sync_jobs")
    per_connection = Counter(r["connection_id"] for r in jobs)
    assert set(per_connection) == set(due)
    assert set(per_connection.values()) == {1}
    assert not set(per_connection) & set(not_due)
    messages = query(db, "SELECT job_id, connection_id, state FROM sync_queue")
    assert sorted((m["job_id"], m["connection_id"]) for m in messages) == sorted(
        (j["id"], j["connection_id"]) for j in jobs
    )
    assert {m["state"] for m in messages} == {"ready"}


# -- competing consumers ----------------------------------------------------------------


def test_four_consumers_process_each_of_2000_messages_exactly_once(tmp_path):
    db = tmp_path / "clearlift.db"
    job_ids = fill_queue(db, 2000)

    results = run_consumers(tmp_path, db, processes=4, batch=20, lease=300.0, work_s=0.0)

    acked = [job for r in results for job in r["acked"]]
    assert len(acked) == 2000 and set(acked) == set(job_ids)  # all, and none twice
    assert all(r["stale"] == [] for r in results)  # long leases: nothing was re-delivered
    assert sum(1 for r in results if r["acked"]) >= 2, [len(r["acked"]) for r in results]
    rows = query(db, "SELECT state, attempts, count(*) AS n FROM sync_queue GROUP BY state, attempts")
    assert [tuple(r) for r in rows] == [("done", 1, 2000)]
    assert query(db, "SELECT count(*) FROM sync_jobs WHERE status = 'completed'")[0][0] == 2000


def test_expired_leases_under_contention_still_ack_each_message_once(tmp_path):
    # Leases shorter than a batch takes: messages are re-delivered to other processes while
    # the first holder still works on them; fencing lets exactly one delivery ack each.
    db = tmp_path / "clearlift.db"
    job_ids = fill_queue(db, 300, max_attempts=1000)

    results = run_consumers(tmp_path, db, processes=3, batch=10, lease=0.05, work_s=0.008)

    acked = Counter(job for r in results for job in r["acked"])
    assert set(acked) == set(job_ids)
    assert set(acked.values()) == {1}
    stale = [job for r in results for job in r["stale"]]
    assert set(stale) <= set(job_ids)
    assert query(db, "SELECT DISTINCT state FROM sync_queue")[0][0] == "done"
    assert query(db, "SELECT count(*) FROM sync_queue WHERE state != 'done'")[0][0] == 0
