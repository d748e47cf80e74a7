"""Issue 16, the command in-process: with a short lock timeout, `consume` retries a job whose
warehouse table is locked and `queue` fails fast (exit 4) on a locked store, each naming the
lock timeout. The connections' limits themselves: tests/integration/test_pg_limits.py."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from tests.harness import Env, seed


@pytest.fixture
def pg_env(tmp_path, sandbox, pg_schema_url):
    e = Env(
        home=tmp_path / "home",
        warehouse_url=pg_schema_url,
        sandbox=sandbox,
        extra={"CLEARLIFT_DB": pg_schema_url, "CLEARLIFT_PG_LOCK_TIMEOUT": "0.5"},
    )
    e.run("init", CLEARLIFT_PG_LOCK_TIMEOUT="60")  # set up without racing other tests' DDL
    return e


def test_the_command_fails_a_locked_store_or_warehouse_quickly(pg_env, pg_schema_url):
    cid = seed(pg_env, "google", "1234567890")
    pg_env.run("schedule")
    holder = psycopg.connect(pg_schema_url)
    try:
        holder.execute("LOCK TABLE google_ads_campaigns IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        out = json.loads(pg_env.run("consume", "--json").stdout)
        assert out.get("retry") == 1 and time.monotonic() - t0 < 20, out
        holder.execute("LOCK TABLE sync_queue IN ACCESS EXCLUSIVE MODE")
        proc = pg_env.run("queue", "--json", check=False)
    finally:
        holder.rollback()
        holder.close()
    assert proc.returncode == 4 and "lock timeout" in proc.stderr, proc.stderr
    rows = json.loads(pg_env.run("status", "--json").stdout)
    (job,) = [r for r in rows if r["connection_id"] == cid]
    assert "lock timeout" in job["latest_sync"]["error"]
