"""A new user's "sync now" (the API worker's pending row) is adopted by `clearlift schedule`
under the id the API returned, runs and completes; the command in-process, on a SQLite
store and on the PostgreSQL control plane."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from clearlift_cli.timeutil import parse_ts
from tests.harness import Env
from tests.helpers import (
    insert_api_trigger,
    query,
)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_new_user_api_trigger_runs_and_completes_under_its_own_id(tmp_path, sandbox, request, backend):
    extra = {"CLEARLIFT_DB": request.getfixturevalue("pg_schema_url")} if backend == "postgres" else {}
    e = Env(home=tmp_path / "home", warehouse_url=f"sqlite:///{tmp_path}/wh.db", sandbox=sandbox, extra=extra)
    e.run("init")
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    cid = e.add("org-1", "google", "1234567890", access, refresh)  # the OAuth callback's row
    store = extra.get("CLEARLIFT_DB", e.db)
    job_id = insert_api_trigger(store, cid, datetime.now(UTC))  # the user presses "sync now"

    assert "0 enqueued" in (out := e.run("schedule").stdout) and "1 adopted" in out, out
    assert e.run_json("queue")["ready"] == {"high": 1, "normal": 0}
    pending = e.run_json("status", cid)["latest_sync"]
    assert (pending["status"], pending["type"]) == ("pending", "full")

    e.run("consume")
    shape = e.run_json("status", cid)
    assert shape["latest_sync"]["status"] == "completed" and shape["latest_sync"]["records_synced"] > 0
    assert shape["connection"]["sync_status"] == "completed"
    rows = query(store, "SELECT id, status, metadata FROM sync_jobs")
    assert [(r["id"], r["status"]) for r in rows] == [(job_id, "completed")]  # the id the API returned
    meta = json.loads(rows[0]["metadata"])
    assert meta["triggered_by"] == "user-7" and "adopted" in meta
    assert meta["records_synced"] == shape["latest_sync"]["records_synced"]
    start = parse_ts(meta["adopted"]["sync_window"]["start"])
    assert timedelta(days=7) - timedelta(minutes=5) < datetime.now(UTC) - start < timedelta(days=7, minutes=5)
