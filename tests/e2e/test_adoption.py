"""Many `clearlift schedule` processes at once adopt each pending row the API worker wrote,
and close each abandoned running row, exactly once; on a SQLite store file and on the
PostgreSQL control plane."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from clearlift_cli.timeutil import iso_z
from tests.helpers import (
    CLEARLIFT,
    cli_env,
    insert_api_trigger,
    insert_connections,
    new_store,
    query,
    raw,
)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    if request.param == "postgres":
        url = request.getfixturevalue("pg_schema_url")
    else:
        url = tmp_path / "clearlift.db"
    new_store(url).close()
    return url


def test_concurrent_schedulers_adopt_and_close_each_row_once(db, tmp_path):
    now = datetime.now(UTC)
    api = insert_connections(db, [{"account_id": f"a{i}", "last_synced_at": iso_z(now)} for i in range(40)])
    dead = insert_connections(db, [{"account_id": f"d{i}", "last_synced_at": None} for i in range(10)])
    pending = [insert_api_trigger(db, cid, now - timedelta(minutes=1)) for cid in api]
    c = raw(db)
    with c:
        for i, cid in enumerate(dead):
            c.execute(
                "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at) "
                "VALUES (?, 'org-1', ?, 'running', 'full', ?)",
                (f"gone-{i}", cid, iso_z(now - timedelta(hours=3))),
            )
    c.close()
    env = cli_env(tmp_path, CLEARLIFT_DB=str(db))
    procs = [
        subprocess.Popen(
            [CLEARLIFT, "schedule", "--json"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e for _, e in outs]
    summaries = [json.loads(o) for o, _ in outs]
    assert sum(s["adopted"] for s in summaries) == len(pending)
    assert sum(s["abandoned_closed"] for s in summaries) == len(dead)
    assert sum(s["enqueued"] for s in summaries) == len(dead)  # the closed ones' connections, once each
    per_job = Counter(r[0] for r in query(db, "SELECT job_id FROM sync_queue"))
    assert set(per_job.values()) == {1} and set(pending) <= set(per_job)
    assert query(db, "SELECT count(*) FROM sync_jobs WHERE status = 'failed'")[0][0] == len(dead)
    live = Counter(r[0] for r in query(db, "SELECT connection_id FROM sync_jobs WHERE status = 'pending'"))
    assert set(live) == set(api) | set(dead) and set(live.values()) == {1}
