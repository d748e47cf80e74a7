"""Job rows clearlift did not create (the API worker's manual trigger, the retired workers'
rows): pending ones are adopted under their own id, abandoned running ones are closed.
Every test runs on a SQLite store file and on the PostgreSQL control plane. Rows are
written with plain SQL, as the API worker writes them; only the clock is frozen.
Many `schedule` processes at once: tests/e2e/test_adoption.py; the new user's trigger
through the command: tests/cli/test_adoption.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from clearlift_cli import scheduler
from clearlift_cli.adoption import STALE_RUNNING_AFTER
from clearlift_cli.store.queue import Queue
from clearlift_cli.timeutil import iso_z
from tests.helpers import (
    API_METADATA,
    frozen,
    insert_api_trigger,
    insert_connection,
    insert_connections,
    new_store,
    query,
    raw,
)

UTC = UTC
NOW = datetime(2025, 10, 10, 20, 45, 30, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    if request.param == "postgres":
        url = request.getfixturevalue("pg_schema_url")
    else:
        url = tmp_path / "clearlift.db"
    new_store(url).close()
    return url


def execute(db, sql: str, params: tuple = ()) -> None:
    c = raw(db)
    try:
        with c:
            c.execute(sql, params)
    finally:
        c.close()


def run_schedule(db, now: datetime) -> scheduler.ScheduleResult:
    store = new_store(db, clock=frozen(now))
    try:
        return scheduler.schedule(store, Queue(store))
    finally:
        store.close()


def job(db, job_id: str):
    return query(db, "SELECT * FROM sync_jobs WHERE id = ?", (job_id,))[0]


def messages(db, job_id: str) -> list:
    return query(db, "SELECT * FROM sync_queue WHERE job_id = ?", (job_id,))


# -- pending rows ------------------------------------------------------------------------


@pytest.mark.parametrize("job_type, priority", [("full", "high"), ("incremental", "normal")])
def test_api_worker_pending_row_is_queued_under_its_own_id(db, job_type, priority):
    cid = insert_connection(db, account_id="1234567890", last_synced_at=None)  # a new user
    job_id = insert_api_trigger(db, cid, NOW - timedelta(minutes=3), job_type=job_type)

    result = run_schedule(db, NOW)
    assert result.adoption.adopted == [job_id] and result.enqueued == []
    assert result.summary()["adopted"] == 1
    (msg,) = messages(db, job_id)
    body = json.loads(msg["body"])
    assert msg["state"] == "ready" and msg["connection_id"] == cid
    assert body["job_id"] == job_id and body["job_type"] == job_type
    assert (body["connection_id"], body["organization_id"], body["platform"], body["account_id"]) == (
        cid,
        "org-1",
        "google",
        "1234567890",
    )
    assert body["sync_window"] == {"start": iso_z(NOW - timedelta(days=7)), "end": iso_z(NOW)}
    assert body["metadata"]["priority"] == priority and body["metadata"]["retry_count"] == 0
    row = job(db, job_id)
    assert row["status"] == "pending" and row["job_type"] == job_type
    meta = json.loads(row["metadata"])
    assert {k: meta[k] for k in API_METADATA} == API_METADATA  # the API worker's keys are kept
    assert meta["adopted"] == {
        "at": iso_z(NOW),
        "by": "clearlift schedule",
        "sync_window": body["sync_window"],
        "priority": priority,
    }
    assert len(query(db, "SELECT * FROM sync_jobs")) == 1  # no second job for the connection

    again = run_schedule(db, NOW + timedelta(minutes=15))
    assert again.adoption.adopted == [] and again.enqueued == []
    assert len(query(db, "SELECT * FROM sync_queue")) == 1


def test_pending_rows_wait_while_their_connection_cannot_take_them(db):
    paused, reauth, busy = insert_connections(
        db,
        [
            {"account_id": "paused", "last_synced_at": None, "is_active": 0},
            {"account_id": "reauth", "last_synced_at": None, "needs_reauth": 1},
            {"account_id": "busy", "last_synced_at": None},
        ],
    )
    scheduled = run_schedule(db, NOW - timedelta(minutes=5))  # clearlift's own job for `busy`
    assert len(scheduled.enqueued) == 1
    on_paused = insert_api_trigger(db, paused, NOW - timedelta(minutes=2))
    on_reauth = insert_api_trigger(db, reauth, NOW - timedelta(minutes=2))
    first = insert_api_trigger(db, busy, NOW - timedelta(minutes=2))
    second = insert_api_trigger(db, busy, NOW - timedelta(minutes=1))  # the user clicked twice

    result = run_schedule(db, NOW)
    assert result.adoption.adopted == []
    assert {j for j, _ in result.adoption.waiting} == {on_paused, on_reauth, first, second}
    assert all(messages(db, j) == [] for j in (on_paused, on_reauth, first, second))
    assert all(job(db, j)["metadata"] == json.dumps(API_METADATA) for j in (first, second))  # untouched

    # clearlift's job for `busy` ends, `paused` is resumed: the oldest waiting row goes first.
    execute(db, "UPDATE sync_queue SET state = 'done' WHERE job_id = ?", (scheduled.enqueued[0],))
    execute(db, "UPDATE sync_jobs SET status = 'completed' WHERE id = ?", (scheduled.enqueued[0],))
    execute(db, "UPDATE platform_connections SET is_active = 1 WHERE id = ?", (paused,))
    later = run_schedule(db, NOW + timedelta(minutes=15))
    assert sorted(later.adoption.adopted) == sorted([on_paused, first])
    assert sorted(j for j, _ in later.adoption.waiting) == sorted([on_reauth, second])


def test_pending_row_of_a_connection_that_is_gone_is_failed(db):
    job_id = insert_api_trigger(db, "org-1-google-deleted", NOW - timedelta(minutes=3))
    result = run_schedule(db, NOW)
    assert result.adoption.closed == [job_id]
    row = job(db, job_id)
    assert row["status"] == "failed" and "no longer exists" in row["error_message"]
    assert messages(db, job_id) == []


def test_pending_row_whose_old_message_ended_is_queued_again(db):
    cid = insert_connection(db, account_id="111", last_synced_at=iso_z(NOW - timedelta(minutes=30)))
    job_id = insert_api_trigger(db, cid, NOW - timedelta(hours=2))
    execute(
        db,
        "INSERT INTO sync_queue (job_id, connection_id, platform, body, priority, state, visible_at, "
        "attempts, created_at, updated_at, finished_at, last_error) "
        "VALUES (?, ?, 'google', '{}', 1, 'dead', 0, 4, 'x', 'x', 'x', 'gave up')",
        (job_id, cid),
    )
    result = run_schedule(db, NOW)
    assert result.adoption.adopted == [job_id]
    (msg,) = messages(db, job_id)  # the same message, ready again with the adopted body
    assert (msg["state"], msg["attempts"], msg["last_error"]) == ("ready", 0, None)
    assert json.loads(msg["body"])["job_id"] == job_id


# -- running rows nobody holds --------------------------------------------------------------


def test_abandoned_running_row_is_closed_after_the_threshold_and_its_connection_synced(db):
    cid = insert_connection(db, account_id="222", last_synced_at=None, sync_status="syncing")
    started = NOW - STALE_RUNNING_AFTER + timedelta(minutes=1)
    execute(
        db,
        "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at, "
        "started_at) VALUES ('worker-job', 'org-1', ?, 'running', 'full', ?, ?)",
        (cid, iso_z(started - timedelta(minutes=1)), started.strftime("%Y-%m-%d %H:%M:%S")),
    )

    young = run_schedule(db, NOW)
    assert young.adoption.closed == [] and young.enqueued == []  # maybe still alive: left alone
    assert job(db, "worker-job")["status"] == "running"

    later = NOW + timedelta(minutes=2)
    result = run_schedule(db, later)
    assert result.adoption.closed == ["worker-job"] and result.summary()["abandoned_closed"] == 1
    row = job(db, "worker-job")
    assert row["status"] == "failed" and row["completed_at"] == iso_z(later)
    assert row["error_message"].startswith("Abandoned: running since") and "1 h" in row["error_message"]
    conn = query(db, "SELECT sync_status, sync_error FROM platform_connections WHERE id = ?", (cid,))[0]
    assert conn["sync_status"] == "failed" and conn["sync_error"] == row["error_message"]
    # due again in the same run: a never-synced connection gets its full job
    (new_job,) = result.enqueued
    assert job(db, new_job)["connection_id"] == cid and job(db, new_job)["job_type"] == "full"


def test_a_recent_sign_of_life_keeps_a_running_row(db):
    cid = insert_connection(db, account_id="333", last_synced_at=None)
    execute(
        db,
        "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at, "
        "started_at, updated_at) VALUES ('slow-job', 'org-1', ?, 'running', 'full', ?, ?, ?)",
        (
            cid,
            iso_z(NOW - timedelta(hours=5)),
            iso_z(NOW - timedelta(hours=5)),
            iso_z(NOW - timedelta(minutes=10)),
        ),
    )
    result = run_schedule(db, NOW)
    assert result.adoption.closed == [] and job(db, "slow-job")["status"] == "running"


def test_clearlift_running_job_is_never_closed_however_long_it_runs(db):
    insert_connection(db, account_id="444", last_synced_at=None)
    clock = frozen(NOW)
    store = new_store(db, clock=clock)
    try:
        queue = Queue(store)
        (job_id,) = scheduler.schedule(store, queue).enqueued
        (claimed,) = queue.claim("host:1", limit=1, lease_seconds=300)
        store.start_job(job_id, claimed.message.connection_id)
        clock.advance(6 * 3600)  # a long backfill; even the lease has run out
        result = scheduler.schedule(store, queue)
    finally:
        store.close()
    assert result.adoption.closed == [] and result.adoption.adopted == []
    assert job(db, job_id)["status"] == "running"


# -- the new user, through the installed command ----------------------------------------
