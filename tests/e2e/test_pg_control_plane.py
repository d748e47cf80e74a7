"""The control plane on PostgreSQL (CLEARLIFT_DB=postgresql://…): the installed command end
to end, the concurrency cases with real processes, and `migrate-store` from SQLite."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.children import fill_queue, run_consumers
from tests.harness import CLEARLIFT, Env
from tests.helpers import insert_connections, query, raw

UTC = UTC


@pytest.fixture
def pg_env(tmp_path, sandbox, pg_schema_url):
    """The installed command with both the control plane and the warehouse in PostgreSQL
    (one schema: the store's tables and the warehouse's do not collide)."""
    e = Env(
        home=tmp_path / "home",
        warehouse_url=pg_schema_url,
        sandbox=sandbox,
        extra={"CLEARLIFT_DB": pg_schema_url},
    )
    e.run("init")
    return e


def test_end_to_end_with_the_control_plane_in_postgres(pg_env, sandbox, pg_schema_url):
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    cid = pg_env.add("org-1", "google", "1234567890", access, refresh)
    assert not pg_env.db.exists()  # nothing went to a local SQLite file
    assert "1 enqueued" in pg_env.run("schedule").stdout
    assert "0 enqueued" in pg_env.run("schedule").stdout
    pg_env.run("consume")
    shape = pg_env.run_json("status", cid)
    assert shape["latest_sync"]["status"] == "completed" and shape["latest_sync"]["records_synced"] > 0
    assert shape["connection"]["sync_status"] == "completed"
    rows = pg_env.warehouse_rows("google_ads_daily_metrics", organization_id="org-1")
    assert shape["latest_sync"]["records_synced"] == len(rows) + len(
        pg_env.warehouse_rows("google_ads_campaigns", organization_id="org-1")
    )
    jobs = query(pg_schema_url, "SELECT status, records_synced, metadata FROM sync_jobs")
    assert len(jobs) == 1 and json.loads(jobs[0]["metadata"])["records_synced"] == jobs[0]["records_synced"]
    assert pg_env.run_json("queue")["done"] == 1


def test_eight_schedulers_at_once_make_one_job_per_due_connection(pg_env, pg_schema_url):
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
            env=pg_env.environ(),
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


def test_two_refresh_runs_keep_a_valid_newest_token(pg_env, sandbox, pg_schema_url):
    access, refresh = sandbox.google.tokens.issue(ttl=60)
    cid = pg_env.add(
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
            env=pg_env.environ(),
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
    token = FieldCipher(decode_key(pg_env.key)).decrypt(row["credentials_encrypted"])
    assert token != access and sandbox.google.tokens.check(token) == "ok"
    assert sum(json.loads(o)["refreshed"] for o, _ in outs) >= 1


def test_migrate_store_copies_everything_once(tmp_path, sandbox, pg_schema_url):
    src = Env(home=tmp_path / "home", warehouse_url=f"sqlite:///{tmp_path}/wh.db", sandbox=sandbox)
    src.run("init")
    good, good_rt = sandbox.google.tokens.issue(ttl=3600)
    src.add("org-1", "google", "1111111111", good, good_rt)
    bad, bad_rt = sandbox.google.tokens.issue(ttl=3600)
    sandbox.google.tokens.revoke(bad)
    sandbox.google.tokens.revoke(bad_rt)
    src.add("org-2", "google", "2222222222", bad, bad_rt)
    src.add("org-3", "tiktok", "333", "tt-token-never-synced-xyz")
    src.run("schedule")
    src.run("consume", "--max-jobs", "2", "--concurrency", "1")  # leaves one job queued
    before = {
        t: query(src.db, f"SELECT count(*) FROM {t}")[0][0]
        for t in ("platform_connections", "sync_jobs", "sync_queue", "clearlift_coverage")
    }
    assert query(src.db, "SELECT count(*) FROM sync_queue WHERE state = 'dead'")[0][0] == 1

    copied = json.loads(src.run("migrate-store", "--to", pg_schema_url, "--json").stdout)
    assert {t: copied["copied"][t] for t in before} == before
    assert copied["not_copied"] == [] and copied["renumbered"] == {}
    again = json.loads(src.run("migrate-store", "--to", pg_schema_url, "--json").stdout)
    assert set(again["copied"].values()) == {0}  # once: nothing copied twice
    assert {t: again["already_there"][t] for t in before} == before and again["not_copied"] == []

    for table, n in before.items():
        assert query(pg_schema_url, f"SELECT count(*) FROM {table}")[0][0] == n
    src_rows = [tuple(r) for r in query(src.db, "SELECT * FROM platform_connections ORDER BY id")]
    dst_rows = [tuple(r) for r in query(pg_schema_url, "SELECT * FROM platform_connections ORDER BY id")]
    assert src_rows == dst_rows  # byte for byte, tokens still decryptable with the same key

    # The PostgreSQL control plane carries on: dead letter listed, queued job consumed.
    dst = Env(
        home=tmp_path / "home2",
        warehouse_url=f"sqlite:///{tmp_path}/wh.db",
        sandbox=sandbox,
        key=src.key,
        extra={"CLEARLIFT_DB": pg_schema_url},
    )
    assert len(dst.run_json("queue", "dead")) == 1
    dst.run("consume")
    q = dst.run_json("queue")
    assert q["ready"] == {"high": 0, "normal": 0} and q["leased"] == 0
    new_id = query(pg_schema_url, "SELECT max(id) FROM sync_queue")[0][0]
    dst.run("sync", "org-1-google-1111111111", "--now")
    assert query(pg_schema_url, "SELECT max(id) FROM sync_queue")[0][0] == new_id + 1  # sequence moved on


def test_migrate_store_into_a_control_plane_in_use_drops_no_message(tmp_path, sandbox, pg_schema_url):
    """Queue ids collide with the destination's own: every message is copied (under a new
    id), and the one that cannot be (its connection already has a live message there) is
    named, with exit 1; its job is adopted once that message ends."""
    dst = Env(
        home=tmp_path / "dst",
        warehouse_url=f"sqlite:///{tmp_path}/wh.db",
        sandbox=sandbox,
        extra={"CLEARLIFT_DB": pg_schema_url},
    )
    dst.run("init")
    for account in ("9000000001", "9000000002", "9000000003", "5555555555"):
        dst.add("org-1", "google", account, "dst-token-" + account)
    dst.run("schedule")  # queue ids 1..4 in use
    src = Env(
        home=tmp_path / "src", warehouse_url=f"sqlite:///{tmp_path}/wh.db", sandbox=sandbox, key=dst.key
    )
    src.run("init")
    for account in ("1111111111", "2222222222", "5555555555"):  # the last one is in both
        src.add("org-1", "google", account, "src-token-" + account)
    src.run("schedule")
    src_msgs = {r["job_id"]: r for r in query(src.db, "SELECT * FROM sync_queue")}
    assert sorted(r["id"] for r in src_msgs.values()) == [1, 2, 3]
    shared = next(j for j, r in src_msgs.items() if r["connection_id"] == "org-1-google-5555555555")

    proc = src.run("migrate-store", "--to", pg_schema_url, "--json", check=False)
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["copied"]["sync_queue"] == 2 and out["renumbered"] == {"sync_queue": 2}
    assert out["not_copied"] == [
        {"table": "sync_queue", "row": shared, "reason": out["not_copied"][0]["reason"]}
    ]
    assert "org-1-google-5555555555 already has a queued or running message" in out["not_copied"][0]["reason"]
    assert f"not copied: sync_queue {shared}:" in proc.stderr
    assert out["already_there"]["platform_connections"] == 1 and out["copied"]["sync_jobs"] == 3
    dst_bodies = {r["job_id"]: r["body"] for r in query(pg_schema_url, "SELECT job_id, body FROM sync_queue")}
    assert len(dst_bodies) == 6
    for job_id, row in src_msgs.items():  # every other message arrived whole
        assert job_id == shared or dst_bodies[job_id] == row["body"]

    # The destination's own job for the shared connection ends: its copied job is adopted.
    query_db = raw(pg_schema_url)
    query_db.execute("UPDATE sync_queue SET state = 'done' WHERE connection_id = 'org-1-google-5555555555'")
    query_db.execute(
        "UPDATE sync_jobs SET status = 'completed' WHERE connection_id = 'org-1-google-5555555555' "
        "AND id <> ?",
        (shared,),
    )
    query_db.close()
    assert "1 adopted" in dst.run("schedule").stdout
    assert (
        json.loads(query(pg_schema_url, "SELECT body FROM sync_queue WHERE job_id = ?", (shared,))[0][0])[
            "job_id"
        ]
        == shared
    )


def test_a_control_plane_from_a_newer_clearlift_is_refused(pg_env, pg_schema_url):
    from clearlift_cli.store import SCHEMA_VERSION
    from tests.helpers import one_line_error, raw

    c = raw(pg_schema_url)
    c.execute("UPDATE clearlift_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    c.close()
    for args in (["init"], ["schedule"], ["consume"], ["status"], ["queue"]):
        proc = pg_env.run(*args, check=False)
        assert proc.returncode == 4, (args, proc.stderr)
        line = one_line_error(proc.stderr)
        assert f"is at schema version {SCHEMA_VERSION + 1}, newer than this clearlift understands" in line, (
            line
        )
    assert query(pg_schema_url, "SELECT value FROM clearlift_meta WHERE key = 'schema_version'")[0][0] == str(
        SCHEMA_VERSION + 1
    )


def test_a_postgres_warehouse_from_a_newer_clearlift_is_refused_before_jobs_are_claimed(
    pg_env, sandbox, pg_schema_url
):
    from clearlift_cli.warehouse.schema import META_TABLE, SCHEMA_VERSION
    from tests.helpers import one_line_error, raw

    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    cid = pg_env.add("org-1", "google", "1234567890", access, refresh)
    pg_env.run("schedule")
    c = raw(pg_schema_url)
    c.execute(f"UPDATE {META_TABLE} SET schema_version = ?", (SCHEMA_VERSION + 1,))
    c.close()
    proc = pg_env.run("consume", check=False)
    assert proc.returncode == 5, proc.stderr
    assert (
        f"the warehouse schema is version {SCHEMA_VERSION + 1}, newer than this clearlift"
        in one_line_error(proc.stderr)
    )
    (job,) = query(
        pg_schema_url,
        "SELECT j.status, q.attempts FROM sync_jobs j JOIN sync_queue q ON q.job_id = j.id "
        "WHERE j.connection_id = ?",
        (cid,),
    )
    assert tuple(job) == ("pending", 0) and sandbox.google.requests == []
