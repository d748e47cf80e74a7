"""clearlift's own tables on every backend (coverage, platform pauses, runs and totals),
the schema (migrate, and what D1 is and is not given), and the writability probe."""

from __future__ import annotations

import pytest

from clearlift_cli.errors import StoreError
from clearlift_cli.store.queue import RATE_LIMIT_NOTE
from clearlift_cli.store.schema import APP_TABLE_NAMES, CONTROL_TABLE_NAMES, LATER_COLUMNS, SCHEMA_VERSION

# -- the backend ---------------------------------------------------------------------------------------


def test_the_store_says_which_backend_it_is(backend):
    store = backend.store
    assert store.backend == backend.name
    assert store.split is (backend.name == "d1")
    # every progress write is a request to a live D1: fewer of them there
    assert store.progress_every == (10.0 if backend.name == "d1" else 1.0)
    if backend.name == "d1":
        app, _ = backend.d1
        assert store.display.startswith(f"{app.store_url} (control plane ")
        assert app.token not in store.display


# -- coverage ---------------------------------------------------------------------------------------------


def test_record_slice_coverage_and_slice_progress(backend):
    store = backend.store
    cid, other = "org-1-google-1", "org-1-google-2"
    store.record_slice("job-1", cid, "2025-10-01", "2025-10-03", 10)
    store.record_slice("job-1", cid, "2025-10-04", "2025-10-05", 5)  # adjacent: one range
    store.record_slice("job-2", cid, "2025-10-02", "2025-10-02", 1)  # inside it
    store.record_slice("job-2", cid, "2025-10-08", "2025-10-09", 3)
    backend.clock.advance(60)
    store.record_slice("job-2", cid, "2025-10-08", "2025-10-10", 4)  # the same slice again: replaced
    store.record_slice("job-3", other, "2025-09-01", "2025-09-30", 99)
    assert store.coverage(cid) == [("2025-10-01", "2025-10-05"), ("2025-10-08", "2025-10-10")]
    assert store.coverage(other) == [("2025-09-01", "2025-09-30")]
    assert store.coverage("org-1-google-none") == []
    assert store.slice_progress("job-1") == ({"2025-10-01", "2025-10-04"}, 15)
    assert store.slice_progress("job-2") == ({"2025-10-02", "2025-10-08"}, 5)
    assert store.slice_progress("job-none") == (set(), 0)
    rows = backend.control.rows(
        "SELECT connection_id, end_date, records, synced_at FROM clearlift_coverage "
        "WHERE job_id = 'job-2' AND start_date = '2025-10-08'"
    )
    assert rows == [
        {"connection_id": cid, "end_date": "2025-10-10", "records": 4, "synced_at": backend.now_iso()}
    ]


# -- platform pauses ----------------------------------------------------------------------------------------


def test_pause_platform_only_lengthens_and_expired_pauses_are_not_shown(backend):
    store = backend.store
    now = backend.clock.time()
    with store.write() as c:
        store.pause_platform(c, "google", now + 300, f"{RATE_LIMIT_NOTE} google; retry after 300 s")
    with store.write() as c:  # a shorter pause never shortens a longer one; its reason is the latest
        store.pause_platform(
            c, "google", now + 100, f"{RATE_LIMIT_NOTE} google (developer token) key=abcdef123"
        )
    backend.control.execute(
        "INSERT INTO clearlift_platform_pauses (platform, until, reason) VALUES ('facebook', ?, 'old')",
        (now - 1,),
    )
    reasons = store.platform_pause_reasons()
    assert reasons == {"google": (now + 300, f"{RATE_LIMIT_NOTE} google (developer token) key=***")}
    assert store.platform_pauses() == {"google": now + 300}
    backend.clock.advance(301)
    assert store.platform_pauses() == {}


def test_lift_platform_pause(backend):
    store = backend.store
    now = backend.clock.time()
    backend.control.execute(
        "INSERT INTO clearlift_platform_pauses (platform, until, reason) VALUES ('google', ?, 'r'), ('facebook', ?, 'r')",
        (now + 60, now - 60),
    )
    with store.write() as c:
        assert store.lift_platform_pause(c, "google") is True
        assert store.lift_platform_pause(c, "google") is False  # no pause left
        assert store.lift_platform_pause(c, "facebook") is False  # it had ended: removed all the same
        assert store.lift_platform_pause(c, "tiktok") is False
    assert backend.control.rows("SELECT * FROM clearlift_platform_pauses") == []
    assert store.platform_pauses() == {}


def test_deferred_messages_wait_for_a_retry_or_a_pause(backend):
    store = backend.store
    now = backend.clock.time()
    waiting = backend.insert_connection(platform="google")
    paused = backend.insert_connection(platform="tiktok")
    due = backend.insert_connection(platform="google")
    for cid, visible in ((waiting, now + 60), (paused, now), (due, now)):
        job_id = backend.insert_job(cid)
        backend.insert_message(backend.message_for(job_id, cid), visible_at=visible)
    backend.control.execute(
        "UPDATE sync_queue SET last_error = 'HTTP 503' WHERE connection_id = ?", (waiting,)
    )
    rows = store.deferred_messages()
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(waiting, "google", now + 60, "HTTP 503")]
    rows = store.deferred_messages(paused_platforms=["tiktok"])
    assert sorted(r[0] for r in rows) == sorted([waiting, paused])
    assert [r[0] for r in store.deferred_messages(paused, paused_platforms=["tiktok"])] == [paused]
    assert store.deferred_messages(due) == []


# -- runs and totals ----------------------------------------------------------------------------------------


def test_record_run_last_runs_and_job_totals(backend):
    store = backend.store
    t = backend.clock.time()
    store.record_run(
        "schedule", host="h1", started_at=t - 10, finished_at=t - 9, ok=True, summary_json='{"enqueued": 3}'
    )
    store.record_run(
        "consume",
        host="h2",
        started_at=t - 5,
        finished_at=t - 1,
        ok=True,
        summary_json='{"completed": 2}',
        job_totals=[("google", "completed", 2, 100, 3.5), ("google", "failed", 1, 0, 0.5)],
    )
    store.record_run(
        "consume",
        host="h3",
        started_at=t,
        finished_at=t + 2,
        ok=False,
        summary_json='{"error": "x"}',
        job_totals=[("google", "completed", 1, 50, 1.25), ("tiktok", "completed", 1, 7, 0.25)],
    )
    runs = store.last_runs()
    assert runs == {
        "schedule": {
            "host": "h1",
            "started_at": t - 10,
            "finished_at": t - 9,
            "ok": True,
            "summary": '{"enqueued": 3}',
            "last_ok_at": t - 9,
        },
        "consume": {
            "host": "h3",
            "started_at": t,
            "finished_at": t + 2,
            "ok": False,
            "summary": '{"error": "x"}',
            "last_ok_at": t - 1,
        },
    }
    assert store.job_totals() == [
        ("google", "completed", 3, 150, 4.75),
        ("google", "failed", 1, 0, 0.5),
        ("tiktok", "completed", 1, 7, 0.25),
    ]
    assert sorted(store.run_summaries_since("consume", t - 3)) == ['{"completed": 2}', '{"error": "x"}']
    assert store.run_summaries_since("consume", t) == ['{"error": "x"}']


def test_old_runs_are_forgotten_and_the_totals_keep_counting(backend):
    store = backend.store
    t = backend.clock.time()
    week = 7 * 86400
    store.record_run(
        "consume",
        host="h",
        started_at=t,
        finished_at=t,
        ok=True,
        summary_json="{}",
        job_totals=[("google", "completed", 1, 10, 1.0)],
    )
    store.record_run("schedule", host="h", started_at=t, finished_at=t, ok=True, summary_json="{}")
    store.record_run(
        "consume",
        host="h",
        started_at=t + week + 1,
        finished_at=t + week + 1,
        ok=False,
        summary_json="{}",
        job_totals=[("google", "completed", 1, 5, 1.0)],
    )
    rows = backend.control.rows("SELECT command, finished_at FROM clearlift_runs ORDER BY command")
    assert rows == [
        {"command": "consume", "finished_at": t + week + 1},
        {"command": "schedule", "finished_at": t},
    ]
    assert store.last_runs()["consume"]["last_ok_at"] is None  # the successful run was forgotten
    assert store.job_totals() == [("google", "completed", 2, 15, 2.0)]


# -- the schema ---------------------------------------------------------------------------------------------


def app_columns(backend, table: str) -> set[str]:
    if backend.name == "postgres":
        rows = backend.app.rows(
            "SELECT column_name AS name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
    else:
        rows = backend.app.rows(f"PRAGMA table_info({table})")
    return {r["name"] for r in rows}


def tables_of(backend, db) -> set[str]:
    if backend.name == "postgres":
        sql = "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    return {r["name"] for r in db.rows(sql)}


LATER = {f"added column {t}.{name}" for t, cols in LATER_COLUMNS.items() for name, *_ in cols}


def test_migrate_is_idempotent(backend):
    store = backend.store
    first = backend.migrated
    schema_lines = [c for c in first if c.startswith("store schema ")]
    assert len(schema_lines) == 1 and schema_lines[0].startswith(f"store schema 0 -> {SCHEMA_VERSION}")
    if backend.name == "d1":
        # ClearLift's tables are the API worker's: D1 gets only the later columns the
        # dashboard reads (the fixture's D1 is as the worker's first migration left it)
        assert set(first) - set(schema_lines) == {f"{change} (D1)" for change in LATER}
    else:  # the database is clearlift's: it creates ClearLift's tables as D1 has them
        assert {f"created table {t}" for t in APP_TABLE_NAMES} <= set(first)
    for table, cols in LATER_COLUMNS.items():
        assert {name for name, *_ in cols} <= app_columns(backend, table)
    assert backend.control.rows("SELECT value FROM clearlift_meta WHERE key = 'schema_version'") == [
        {"value": str(SCHEMA_VERSION)}
    ]
    before_app, before_control = tables_of(backend, backend.app), tables_of(backend, backend.control)
    assert store.migrate() == []  # the second run changes nothing
    assert store.schema_version() == SCHEMA_VERSION
    assert tables_of(backend, backend.app) == before_app
    assert tables_of(backend, backend.control) == before_control
    assert set(CONTROL_TABLE_NAMES) <= before_control
    if backend.name == "d1":
        app, _ = backend.d1
        everything = {r["name"] for r in backend.app.rows("SELECT name FROM sqlite_master")}
        assert before_app == set(APP_TABLE_NAMES)
        assert not {n for n in everything if n.startswith(("clearlift", "sync_queue"))}, everything
        assert not before_control & set(APP_TABLE_NAMES)  # the control plane holds clearlift's only
    else:
        assert set(APP_TABLE_NAMES) <= before_app


def test_migrate_creates_clearlifts_missing_tables_but_never_in_d1(backend):
    backend.app.execute("DROP TABLE sync_jobs")
    if backend.name == "d1":
        # clearlift never creates ClearLift's tables in the live D1: a D1 without them is
        # not the API worker's database
        with pytest.raises(StoreError, match="has no sync_jobs table"):
            backend.store.migrate()
        assert "sync_jobs" not in tables_of(backend, backend.app)
    else:
        changes = backend.store.migrate()
        assert "created table sync_jobs" in changes and "added column sync_jobs.updated_at" in changes
        assert {name for name, *_ in LATER_COLUMNS["sync_jobs"]} <= app_columns(backend, "sync_jobs")
        assert backend.store.migrate() == []


def test_check_writable_writes_nothing(backend):
    before = backend.control.rows("SELECT key, value FROM clearlift_meta ORDER BY key")
    backend.store.check_writable()
    assert backend.control.rows("SELECT key, value FROM clearlift_meta ORDER BY key") == before
    assert backend.control.rows("SELECT * FROM clearlift_meta WHERE key = 'doctor_probe'") == []


def test_check_writable_says_when_the_store_refuses_a_write(backend):
    # a trigger that refuses every new clearlift_meta row: the probe's write must reach the
    # database, and the refusal come back as one StoreError
    if backend.name == "postgres":
        backend.control.execute(
            "CREATE FUNCTION refuse_meta() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$"
        )
        backend.control.execute(
            "CREATE TRIGGER refuse_meta BEFORE INSERT ON clearlift_meta FOR EACH ROW EXECUTE FUNCTION refuse_meta()"
        )
    else:
        backend.control.execute(
            "CREATE TRIGGER refuse_meta BEFORE INSERT ON clearlift_meta "
            "BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
        )
    with pytest.raises(StoreError, match="refused for the test"):
        backend.store.check_writable()
