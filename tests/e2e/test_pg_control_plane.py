"""The control plane on PostgreSQL (CLEARLIFT_DB=postgresql://…) under concurrency, with real
processes: eight `clearlift schedule` runs at once make one job per due connection, eight
consumer processes on 5,000 jobs (and on SQLite) effect each once, two `refresh-tokens`
runs keep a valid newest token."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.children import fill_queue, run_consumers
from tests.harness import CLEARLIFT
from tests.helpers import insert_connections, query


def test_eight_schedulers_at_once_make_one_job_per_due_connection(pg_control_env, pg_schema_url):
    now = datetime.now(UTC)
    due = insert_connections(
        pg_schema_url,
        [{"account_id": f"n{i}", "last_synced_at": None} for i in range(60)]
        + [
            {
                "account_id": f"s{i}",
                "last_synced_at": (now - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S"),
            }
            for i in range(60)
        ],
    )
    insert_connections(
        pg_schema_url,
        [{"account_id": f"r{i}", "last_synced_at": "2999-01-01T00:00:00.000Z"} for i in range(10)],
    )
    procs = [
        subprocess.Popen(
            [CLEARLIFT, "schedule", "--json"],
            env=pg_control_env.environ(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [e for _, e in outs]
    assert sum(json.loads(o)["enqueued"] for o, _ in outs) == len(due)
    per_conn = Counter(r[0] for r in query(pg_schema_url, "SELECT connection_id FROM sync_jobs"))
    assert set(per_conn) == set(due) and set(per_conn.values()) == {1}
    assert query(pg_schema_url, "SELECT count(*) FROM sync_queue WHERE state = 'ready'")[0][0] == len(due)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_eight_consumers_on_5000_jobs_each_effect_once(tmp_path, request, backend):
    db = request.getfixturevalue("pg_schema_url") if backend == "postgres" else tmp_path / "clearlift.db"
    job_ids = fill_queue(db, 5000)
    results = run_consumers(tmp_path, db, processes=8, batch=25, lease=300.0, work_s=0.0)
    acked = Counter(job for r in results for job in r["acked"])
    assert set(acked) == set(job_ids) and set(acked.values()) == {1}
    assert query(db, "SELECT count(*) FROM sync_jobs WHERE status = 'completed'")[0][0] == 5000
    assert [
        tuple(r)
        for r in query(db, "SELECT state, attempts, count(*) FROM sync_queue GROUP BY state, attempts")
    ] == [("done", 1, 5000)]


def test_two_refresh_runs_keep_a_valid_newest_token(pg_control_env, sandbox, pg_schema_url):
    access, refresh = sandbox.google.tokens.issue(ttl=60)
    cid = pg_control_env.add(
        "org-1",
        "google",
        "1234567890",
        access,
        refresh,
        expires_at=(datetime.now(UTC) + timedelta(seconds=60)).isoformat(),
    )
    procs = [
        subprocess.Popen(
            [CLEARLIFT, "refresh-tokens", "--json"],
            env=pg_control_env.environ(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    from clearlift_cli.crypto import FieldCipher
    from clearlift_cli.settings import decode_key

    row = query(
        pg_schema_url,
        "SELECT credentials_encrypted, expires_at FROM platform_connections WHERE id = ?",
        (cid,),
    )[0]
    token = FieldCipher(decode_key(pg_control_env.key)).decrypt(row["credentials_encrypted"])
    assert token != access and sandbox.google.tokens.check(token) == "ok"
    assert sum(json.loads(o)["refreshed"] for o, _ in outs) >= 1
