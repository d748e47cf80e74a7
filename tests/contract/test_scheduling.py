"""Scheduling on every backend: which connections may be due, creating jobs with their
messages (and the races that must not make a second one), job rows clearlift did not create
(adoption: adopt pending ones, close abandoned ones), withdrawing an unclaimed job and
re-queueing a dead letter. Rows are seeded and checked with plain SQL."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from clearlift_cli.errors import Conflict, NotFound
from clearlift_cli.models import Connection, JobType
from clearlift_cli.store.scheduling import AlreadyQueued, NewJob
from clearlift_cli.timeutil import iso_z, julian_day

from .conftest import T0, metadata


def new_job(
    backend, cid: str, *, attribution: bool = False, job_type: JobType = JobType.INCREMENTAL
) -> NewJob:
    message = backend.message_for(str(uuid.uuid4()), cid, job_type=job_type)
    meta = {"sync_window": message.sync_window.to_json(), "priority": message.priority.value}
    return NewJob(message, meta, attribution)


# -- due connections ---------------------------------------------------------------------------------------


def test_due_candidates(backend):
    ins = backend.insert_connection
    never = ins(last_synced_at=None)
    unreadable = ins(last_synced_at="last tuesday")
    old = ins(last_synced_at=iso_z(T0 - timedelta(days=1)))
    old_sqlite = ins(last_synced_at="2025-10-09 20:45:30")  # the SQLite spelling
    ins(last_synced_at=iso_z(T0 - timedelta(hours=1)))  # synced recently
    own_interval = ins(
        last_synced_at=iso_z(T0 - timedelta(hours=1)), settings='{"sync_interval_minutes": 15}'
    )
    ins(last_synced_at=None, is_active=0)
    ins(last_synced_at=None, is_active=0, settings='{"sync_interval_minutes": 15}')
    ins(last_synced_at=None, needs_reauth=1)
    for status in ("pending", "running"):
        backend.insert_job(ins(last_synced_at=None), status=status)
    finished = ins(last_synced_at=None)
    backend.insert_job(finished, status="completed")
    backend.insert_job(finished, status="failed")
    rows = backend.store.due_candidates(julian_day(T0 - timedelta(hours=6)))
    assert sorted(r["id"] for r in rows) == sorted(
        [never, unreadable, old, old_sqlite, own_interval, finished]
    )
    conn = Connection.from_row(next(r for r in rows if r["id"] == own_interval))
    assert conn.settings() == {"sync_interval_minutes": 15} and conn.credentials_encrypted is not None


def test_attribution_state(backend):
    a, b = backend.insert_connection(), backend.insert_connection()
    backend.control.execute(
        "INSERT INTO clearlift_connection_state (connection_id, last_attribution_window_at) VALUES (?, ?), (?, NULL)",
        (a, "2025-10-07T20:45:30.000Z", b),
    )
    assert backend.store.attribution_state([a, b, "org-1-google-none"]) == {
        a: "2025-10-07T20:45:30.000Z",
        b: None,
    }
    assert backend.store.attribution_state([]) == {}


# -- creating jobs -------------------------------------------------------------------------------------------


def test_create_jobs_makes_rows_and_messages_and_skips_live_connections(backend):
    fresh, attributed, live_row, live_message = (backend.insert_connection() for _ in range(4))
    api_job = backend.insert_job(live_row, status="running")  # the API worker's, or an overlapping run's
    orphan_message = backend.message_for(str(uuid.uuid4()), live_message)
    backend.insert_message(orphan_message)  # a live message whose job row is gone
    jobs = [new_job(backend, fresh), new_job(backend, attributed, attribution=True, job_type=JobType.FULL)]
    jobs += [new_job(backend, live_row), new_job(backend, live_message)]
    result = backend.store.create_jobs(backend.queue, jobs)
    assert result.jobs == [jobs[0].message.job_id, jobs[1].message.job_id]
    assert (result.already_live, result.message_live) == ([live_row], [live_message])
    for job in jobs[:2]:
        m = job.message
        row = backend.job(m.job_id)
        assert (row["connection_id"], row["organization_id"], row["status"], row["job_type"]) == (
            m.connection_id,
            "org-1",
            "pending",
            m.job_type.value,
        )
        assert (row["created_at"], row["updated_at"], row["records_synced"], row["progress_percentage"]) == (
            m.created_at,
            m.created_at,
            0,
            0,
        )
        assert metadata(row) == job.metadata
        msg = backend.message(m.job_id)
        assert (msg["state"], msg["connection_id"], msg["body"], msg["priority"]) == (
            "ready",
            m.connection_id,
            m.dumps(),
            m.priority.rank,
        )
    assert [r["id"] for r in backend.jobs_of(live_row)] == [api_job]  # no second job
    assert backend.jobs_of(live_message) == []
    assert backend.control.rows(
        "SELECT connection_id, last_attribution_window_at FROM clearlift_connection_state"
    ) == [{"connection_id": attributed, "last_attribution_window_at": jobs[1].message.created_at}]


def test_create_jobs_for_one_connection_twice_in_a_call_makes_one(backend):
    """The bulk path's race: a live row appears between the look and the insert (here, the
    chunk's own first job). SQLite and PostgreSQL roll the chunk back and redo it one job
    at a time; D1's guarded inserts, one per statement, create the first only. Either way:
    one job, one message."""
    cid, other = backend.insert_connection(), backend.insert_connection()
    first, second, third = new_job(backend, cid), new_job(backend, cid), new_job(backend, other)
    result = backend.store.create_jobs(backend.queue, [first, second, third])
    assert result.jobs == [first.message.job_id, third.message.job_id]
    assert (result.already_live, result.message_live) == ([cid], [])
    assert [r["id"] for r in backend.jobs_of(cid)] == [first.message.job_id]
    assert [m["job_id"] for m in backend.messages()] == [first.message.job_id, third.message.job_id]


def test_create_jobs_over_more_connections_than_a_statement_can_name(backend):
    """150 connections: more than D1's 100 bound parameters per statement, so the live-job
    look-up and the inserts go in chunks there."""
    ids = [backend.insert_connection(account_id=f"{i:04d}") for i in range(150)]
    live = ids[::10]
    for cid in live:
        backend.insert_job(cid, status="pending")
    jobs = [new_job(backend, cid) for cid in ids]
    result = backend.store.create_jobs(backend.queue, jobs)
    assert sorted(result.already_live) == sorted(live) and result.message_live == []
    assert sorted(result.jobs) == sorted(
        j.message.job_id for j in jobs if j.message.connection_id not in live
    )
    counts = backend.app.rows(
        "SELECT connection_id, count(*) AS n FROM sync_jobs GROUP BY connection_id HAVING count(*) != 1"
    )
    assert counts == []
    assert len(backend.messages()) == 135


def test_create_job_raises_when_the_connection_is_busy_and_keeps_nothing(backend):
    a, b = backend.insert_connection(), backend.insert_connection()
    store = backend.store
    job = new_job(backend, a)
    assert store.create_job(backend.queue, job) == job.message.job_id
    assert backend.job(job.message.job_id)["status"] == "pending"
    assert backend.message(job.message.job_id)["state"] == "ready"
    with pytest.raises(AlreadyQueued, match=f"connection {a} already has a pending or running job"):
        store.create_job(backend.queue, new_job(backend, a))
    backend.insert_message(backend.message_for(str(uuid.uuid4()), b))  # a live message, no job row
    with pytest.raises(Conflict, match=f"connection {b} already has a queued or running job") as refused:
        store.create_job(backend.queue, new_job(backend, b))
    assert not isinstance(refused.value, AlreadyQueued)
    assert len(backend.jobs_of(a)) == 1 and backend.jobs_of(b) == []
    assert len(backend.messages()) == 2


# -- adoption: job rows clearlift did not create ---------------------------------------------------------------


def test_orphan_jobs_are_live_rows_without_a_live_message(backend):
    ins = backend.insert_connection
    a, b, c, d, e = (ins(account_id=str(i)) for i in range(5))
    backend.app.execute("UPDATE platform_connections SET is_active = 0, needs_reauth = 1 WHERE id = ?", (b,))
    api_trigger = backend.insert_job(a, metadata='{"triggered_by": "user-7"}')
    abandoned = backend.insert_job(b, status="running", started_at=iso_z(T0 - timedelta(hours=9)))
    backend.queued_job(c)  # clearlift's own, with its message
    backend.insert_job(d, status="completed")
    old_message = backend.insert_job(e)  # its message ended: pending again, e.g. re-queued by hand
    backend.insert_message(backend.message_for(old_message, e), state="done")
    gone = backend.insert_job("org-1-google-deleted", organization_id="org-1")
    rows = {r["id"]: r for r in backend.store.orphan_jobs()}
    assert set(rows) == {api_trigger, abandoned, old_message, gone}
    r = rows[api_trigger]
    assert (r["status"], r["job_type"], r["connection_id"], r["metadata"]) == (
        "pending",
        "full",
        a,
        '{"triggered_by": "user-7"}',
    )
    assert (
        r["conn_id"],
        r["conn_org"],
        r["platform"],
        r["account_id"],
        r["is_active"],
        r["needs_reauth"],
    ) == (
        a,
        "org-1",
        "google",
        "0",
        1,
        0,
    )
    assert (rows[abandoned]["status"], rows[abandoned]["started_at"]) == (
        "running",
        iso_z(T0 - timedelta(hours=9)),
    )
    assert (rows[abandoned]["is_active"], rows[abandoned]["needs_reauth"]) == (0, 1)
    assert rows[gone]["conn_id"] is None and rows[gone]["platform"] is None


def adopt(backend, job_id: str, cid: str, meta: dict) -> str:
    store = backend.store
    with store.write() as c:
        store.lock_scheduling(c)
        return store.adopt_job(c, backend.queue, job_id, backend.message_for(job_id, cid), json.dumps(meta))


def test_adopt_job_queues_a_pending_row_under_its_own_id(backend):
    cid = backend.insert_connection()
    job_id = backend.insert_job(cid, metadata='{"triggered_by": "user-7"}')
    backend.clock.advance(60)
    meta = {"triggered_by": "user-7", "adopted": {"by": "clearlift schedule", "at": backend.now_iso()}}
    assert adopt(backend, job_id, cid, meta) == "adopted"
    row = backend.job(job_id)
    assert (row["status"], metadata(row), row["updated_at"]) == ("pending", meta, backend.now_iso())
    msg = backend.message(job_id)
    assert (msg["state"], msg["connection_id"], msg["body"]) == (
        "ready",
        cid,
        backend.message_for(job_id, cid).dumps(),
    )
    assert adopt(backend, job_id, cid, {"again": True}) == "gone"  # it has a live message now
    assert metadata(backend.job(job_id)) == meta and len(backend.messages(job_id)) == 1


def test_adopt_job_of_a_row_that_is_no_longer_pending_is_gone(backend):
    cid = backend.insert_connection()
    job_id = backend.insert_job(cid, status="completed", metadata='{"k": 1}')
    assert adopt(backend, job_id, cid, {"adopted": True}) == "gone"
    assert metadata(backend.job(job_id)) == {"k": 1}
    assert backend.messages(job_id) == []


def test_adopt_job_when_the_connection_has_another_live_message_is_busy(backend):
    cid = backend.insert_connection()
    job_id = backend.insert_job(cid, metadata='{"k": 1}')
    other = backend.message_for(str(uuid.uuid4()), cid)
    backend.insert_message(other)
    before = backend.job(job_id)
    assert adopt(backend, job_id, cid, {"adopted": True}) == "busy"
    assert backend.job(job_id) == before  # the row exactly as it was
    assert backend.messages(job_id) == []
    assert [m["job_id"] for m in backend.messages()] == [other.job_id]


def test_adopt_job_revives_the_rows_old_message(backend):
    cid = backend.insert_connection()
    job_id = backend.insert_job(cid)
    old = backend.insert_message(backend.message_for(job_id, cid), state="dead", attempts=4)
    backend.control.execute("UPDATE sync_queue SET last_error = 'HTTP 500' WHERE id = ?", (old,))
    backend.clock.advance(60)
    assert adopt(backend, job_id, cid, {"adopted": True}) == "adopted"
    (msg,) = backend.messages(job_id)  # the job id is unique in the queue: the same row, ready again
    assert (msg["id"], msg["state"], msg["attempts"], msg["last_error"], msg["finished_at"]) == (
        old,
        "ready",
        0,
        None,
        None,
    )
    assert msg["visible_at"] == backend.clock.time()


def orphan(backend, job_id: str):
    (row,) = [r for r in backend.store.orphan_jobs() if r["id"] == job_id]
    return row


def close(backend, row, error: str, status: str = "running") -> bool:
    store = backend.store
    with store.write() as c:
        store.lock_scheduling(c)
        return store.close_job(c, row, error, status=status)


def test_close_job_fails_an_abandoned_row_and_the_connection_it_left_syncing(backend):
    cid = backend.insert_connection(sync_status="syncing")
    job_id = backend.insert_job(
        cid,
        status="running",
        started_at=iso_z(T0 - timedelta(hours=8)),
        updated_at=iso_z(T0 - timedelta(hours=7)),
    )
    row = orphan(backend, job_id)
    backend.clock.advance(60)
    assert close(backend, row, "Abandoned: running since ...") is True
    now = backend.now_iso()
    job = backend.job(job_id)
    assert (job["status"], job["completed_at"], job["updated_at"], job["current_phase"]) == (
        "failed",
        now,
        now,
        "failed",
    )
    assert job["error_message"] == "Abandoned: running since ..."
    conn = backend.connection(cid)
    assert (conn["sync_status"], conn["sync_error"]) == ("failed", "Abandoned: running since ...")


def test_close_job_leaves_a_connection_that_is_not_syncing(backend):
    cid = backend.insert_connection(
        sync_status="completed", sync_error=None
    )  # synced since, by the API worker
    job_id = backend.insert_job(cid, status="running", updated_at=iso_z(T0 - timedelta(hours=7)))
    assert close(backend, orphan(backend, job_id), "Abandoned") is True
    assert backend.job(job_id)["status"] == "failed"
    conn = backend.connection(cid)
    assert (conn["sync_status"], conn["sync_error"]) == ("completed", None)


def test_close_job_leaves_a_row_that_moved_since_it_was_read(backend):
    cid = backend.insert_connection(sync_status="syncing")
    job_id = backend.insert_job(cid, status="running", updated_at=iso_z(T0 - timedelta(hours=7)))
    row = orphan(backend, job_id)
    # its worker was alive after all: it wrote progress after the read
    backend.app.execute("UPDATE sync_jobs SET updated_at = ? WHERE id = ?", (backend.now_iso(), job_id))
    before_job, before_conn = backend.job(job_id), backend.connection(cid)
    assert close(backend, row, "Abandoned") is False
    assert backend.job(job_id) == before_job and backend.connection(cid) == before_conn


def test_close_job_leaves_a_row_that_got_a_live_message(backend):
    cid = backend.insert_connection(sync_status="syncing")
    job_id = backend.insert_job(cid, status="running")
    row = orphan(backend, job_id)
    backend.insert_message(backend.message_for(job_id, cid))  # `queue requeue` gave it one meanwhile
    before = backend.job(job_id)
    assert close(backend, row, "Abandoned") is False
    assert backend.job(job_id) == before and backend.connection(cid)["sync_status"] == "syncing"


def test_close_job_leaves_the_connection_a_live_job_of_clearlifts_is_syncing(backend):
    cid = backend.insert_connection(sync_status="syncing")
    job_id = backend.insert_job(cid, status="running", created_at=iso_z(T0 - timedelta(days=1)))
    row = orphan(backend, job_id)
    backend.queued_job(cid, status="running")  # clearlift's own job, syncing it now
    assert close(backend, row, "Abandoned") is True
    assert backend.job(job_id)["status"] == "failed"
    conn = backend.connection(cid)
    assert (conn["sync_status"], conn["sync_error"]) == ("syncing", None)


def test_close_job_of_a_pending_row_whose_connection_is_gone(backend):
    job_id = backend.insert_job("org-1-google-deleted")
    row = orphan(backend, job_id)
    assert close(backend, row, "Connection no longer exists; job dropped", status="pending") is True
    job = backend.job(job_id)
    assert (job["status"], job["error_message"]) == ("failed", "Connection no longer exists; job dropped")
    assert close(backend, row, "again", status="pending") is False  # no longer pending


# -- withdrawing and re-queueing ------------------------------------------------------------------------------


def test_withdraw_unclaimed_deletes_the_message_and_the_pending_row(backend):
    cid, claimed_cid = backend.insert_connection(), backend.insert_connection()
    job_id = backend.queued_job(cid)
    assert backend.queue.withdraw_unclaimed(job_id) is True
    assert backend.messages(job_id) == [] and backend.job(job_id) is None
    assert backend.queue.withdraw_unclaimed(job_id) is False
    # once any consumer has claimed it, it is not taken back, even when it is ready again
    taken = backend.queued_job(claimed_cid)
    claimed = backend.claim(taken)
    with backend.store.write() as c:
        assert backend.queue.retry(c, claimed, "HTTP 503", delay=0) == "ready"
    before_job, before_msg = backend.job(taken), backend.message(taken)
    assert backend.queue.withdraw_unclaimed(taken) is False
    assert backend.job(taken) == before_job and backend.message(taken) == before_msg


def test_withdraw_unclaimed_leaves_a_row_that_is_no_longer_pending(backend):
    """The message was never delivered but the row says running (the API worker started it
    itself): the message goes, the row stays for adoption to judge."""
    cid = backend.insert_connection()
    job_id = backend.queued_job(cid, status="running")
    assert backend.queue.withdraw_unclaimed(job_id) is True
    assert backend.messages(job_id) == []
    assert backend.job(job_id)["status"] == "running"


def dead_letter(backend, cid: str) -> str:
    """A job that failed for good: its row failed, its message dead."""
    job_id = backend.insert_job(
        cid, status="failed", completed_at=iso_z(T0 - timedelta(hours=1)), error_message="HTTP 500"
    )
    backend.insert_message(backend.message_for(job_id, cid), state="dead", attempts=4)
    return job_id


def test_requeue_dead_puts_the_job_back_to_pending(backend):
    cid = backend.insert_connection()
    job_id = dead_letter(backend, cid)
    backend.clock.advance(60)
    result = backend.queue.requeue_dead(job_id)
    assert (result.requeued, result.skipped) == ([job_id], [])
    job = backend.job(job_id)
    assert (job["status"], job["completed_at"], job["updated_at"]) == ("pending", None, backend.now_iso())
    msg = backend.message(job_id)
    assert (msg["state"], msg["attempts"], msg["visible_at"], msg["finished_at"]) == (
        "ready",
        0,
        backend.clock.time(),
        None,
    )
    with pytest.raises(NotFound):
        backend.queue.requeue_dead(job_id)


def test_requeue_dead_refuses_a_connection_with_a_newer_live_job(backend):
    cid, other = backend.insert_connection(), backend.insert_connection()
    job_id = dead_letter(backend, cid)
    other_job = dead_letter(backend, other)
    backend.queued_job(cid)  # a newer job is queued already
    before = backend.job(job_id)
    with pytest.raises(Conflict):
        backend.queue.requeue_dead(job_id)
    assert backend.job(job_id) == before and backend.message(job_id)["state"] == "dead"
    result = backend.queue.requeue_dead()  # all of them: that one is skipped, the other goes
    assert result.requeued == [other_job] and [s.job_id for s in result.skipped] == [job_id]
    assert backend.job(other_job)["status"] == "pending" and backend.job(job_id) == before
