"""The control plane on PostgreSQL (CLEARLIFT_DB=postgresql://…), the command in-process:
schedule, consume and status end to end, `migrate-store` from SQLite (also into a control
plane in use), and a control plane or warehouse from a newer clearlift refused. The
concurrency cases with real processes: tests/e2e/test_pg_control_plane.py."""

from __future__ import annotations

import json
from datetime import UTC

from tests.harness import Env
from tests.helpers import query, raw

UTC = UTC


def test_end_to_end_with_the_control_plane_in_postgres(pg_control_env, sandbox, pg_schema_url):
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    cid = pg_control_env.add("org-1", "google", "1234567890", access, refresh)
    assert not pg_control_env.db.exists()  # nothing went to a local SQLite file
    assert "1 enqueued" in pg_control_env.run("schedule").stdout
    assert "0 enqueued" in pg_control_env.run("schedule").stdout
    pg_control_env.run("consume")
    shape = pg_control_env.run_json("status", cid)
    assert shape["latest_sync"]["status"] == "completed" and shape["latest_sync"]["records_synced"] > 0
    assert shape["connection"]["sync_status"] == "completed"
    rows = pg_control_env.warehouse_rows("google_ads_daily_metrics", organization_id="org-1")
    assert shape["latest_sync"]["records_synced"] == len(rows) + len(
        pg_control_env.warehouse_rows("google_ads_campaigns", organization_id="org-1")
    )
    jobs = query(pg_schema_url, "SELECT status, records_synced, metadata FROM sync_jobs")
    assert len(jobs) == 1 and json.loads(jobs[0]["metadata"])["records_synced"] == jobs[0]["records_synced"]
    assert pg_control_env.run_json("queue")["done"] == 1


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


def test_a_control_plane_from_a_newer_clearlift_is_refused(pg_control_env, pg_schema_url):
    from clearlift_cli.store import SCHEMA_VERSION
    from tests.helpers import one_line_error, raw

    c = raw(pg_schema_url)
    c.execute("UPDATE clearlift_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    c.close()
    for args in (["init"], ["schedule"], ["consume"], ["status"], ["queue"]):
        proc = pg_control_env.run(*args, check=False)
        assert proc.returncode == 4, (args, proc.stderr)
        line = one_line_error(proc.stderr)
        assert f"is at schema version {SCHEMA_VERSION + 1}, newer than this clearlift understands" in line, (
            line
        )
    assert query(pg_schema_url, "SELECT value FROM clearlift_meta WHERE key = 'schema_version'")[0][0] == str(
        SCHEMA_VERSION + 1
    )


def test_a_postgres_warehouse_from_a_newer_clearlift_is_refused_before_jobs_are_claimed(
    pg_control_env, sandbox, pg_schema_url
):
    from clearlift_cli.warehouse.schema import META_TABLE, SCHEMA_VERSION
    from tests.helpers import one_line_error, raw

    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    cid = pg_control_env.add("org-1", "google", "1234567890", access, refresh)
    pg_control_env.run("schedule")
    c = raw(pg_schema_url)
    c.execute(f"UPDATE {META_TABLE} SET schema_version = ?", (SCHEMA_VERSION + 1,))
    c.close()
    proc = pg_control_env.run("consume", check=False)
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
