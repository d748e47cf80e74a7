"""A job's life on every backend: reading jobs, start, progress, completion, failure (now,
and by a dead letter), and retry. Rows are seeded and checked with plain SQL; a delivery
is claimed through the queue, as the consumer does."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest

from clearlift_cli.timeutil import iso_z

from .conftest import T0, metadata

# -- reading jobs -----------------------------------------------------------------------------------


def test_get_latest_and_live_job(backend):
    cid = backend.insert_connection()
    other = backend.insert_connection()
    old = backend.insert_job(cid, status="running", created_at=iso_z(T0 - timedelta(days=1)))
    # two jobs created in the same millisecond: the larger id is the latest
    tie_a = backend.insert_job(cid, id="job-a", status="completed", created_at=iso_z(T0 - timedelta(hours=1)))
    tie_b = backend.insert_job(cid, id="job-b", status="failed", created_at=iso_z(T0 - timedelta(hours=1)))
    backend.insert_job(other, status="completed")
    store = backend.store
    job = store.get_job(old)
    assert (job["id"], job["status"], job["connection_id"], job["job_type"]) == (old, "running", cid, "full")
    assert store.get_job("no-such-job") is None
    assert tie_a == "job-a" and store.latest_job(cid)["id"] == tie_b
    assert store.live_job(cid)["id"] == old  # the newer ones have finished
    assert store.live_job(other) is None
    assert store.latest_job("org-1-google-nope") is None


# -- start and progress ---------------------------------------------------------------------------------


def test_start_job_marks_the_job_running_and_its_connection_syncing(backend):
    cid = backend.insert_connection(sync_status="completed")
    job_id = backend.insert_job(cid, error_message="the last attempt failed")
    store = backend.store
    assert store.start_job(job_id, cid) is True
    job = backend.job(job_id)
    assert (job["status"], job["started_at"], job["updated_at"]) == (
        "running",
        backend.now_iso(),
        backend.now_iso(),
    )
    assert (job["current_phase"], job["error_message"]) == ("starting", None)
    assert backend.connection(cid)["sync_status"] == "syncing"
    # a redelivery of a job that was running (its consumer died): it starts again, first start kept
    backend.clock.advance(300)
    assert store.start_job(job_id, cid) is True
    job = backend.job(job_id)
    assert (job["started_at"], job["updated_at"]) == (iso_z(T0), backend.now_iso())


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_start_job_refuses_a_finished_job_and_changes_nothing(backend, status):
    cid = backend.insert_connection(sync_status=status)
    job_id = backend.insert_job(
        cid,
        status=status,
        started_at=iso_z(T0 - timedelta(minutes=5)),
        completed_at=iso_z(T0 - timedelta(minutes=1)),
    )
    job_before, conn_before = backend.job(job_id), backend.connection(cid)
    backend.clock.advance(60)
    assert backend.store.start_job(job_id, cid) is False
    assert backend.job(job_id) == job_before
    assert backend.connection(cid) == conn_before


def test_start_job_without_a_row_goes_on_and_touches_no_connection(backend):
    cid = backend.insert_connection(sync_status="completed")
    assert backend.store.start_job("deleted-by-an-operator", cid) is True
    assert backend.connection(cid)["sync_status"] == "completed"
    assert backend.jobs_of(cid) == []


def test_job_progress_writes_phase_total_and_percentage_of_a_running_job(backend):
    cid = backend.insert_connection()
    running = backend.insert_job(cid, status="running")
    pending = backend.insert_job(backend.insert_connection())
    store = backend.store
    backend.clock.advance(10)
    store.job_progress(running, "campaigns", 50, 200)
    job = backend.job(running)
    assert (job["current_phase"], job["total_records"], job["progress_percentage"], job["updated_at"]) == (
        "campaigns",
        200,
        25,
        backend.now_iso(),
    )
    store.job_progress(running, "metrics", 500, 200)  # more than announced: held at 100
    assert backend.job(running)["progress_percentage"] == 100
    store.job_progress(running, "counting", 7, None)
    job = backend.job(running)
    assert (job["current_phase"], job["total_records"], job["progress_percentage"]) == ("counting", None, 0)
    before = backend.job(pending)
    store.job_progress(pending, "campaigns", 1, 2)  # only a running job reports progress
    assert backend.job(pending) == before


# -- completion -----------------------------------------------------------------------------------------


def test_complete_job_writes_the_job_the_connection_onboarding_and_acks(backend):
    cid = backend.insert_connection(
        connected_by="user-7",
        consecutive_auth_failures=2,
        sync_error="Token refresh failed: timeout",
        needs_reauth=0,
    )
    backend.insert_onboarding("user-7", "org-1")
    api_keys = {"triggered_by": "user-7", "manual": True, "sync_window": {"start": "a", "end": "b"}}
    job_id, claimed = backend.started(cid, metadata=json.dumps(api_keys))
    backend.clock.advance(120)
    assert backend.store.complete_job(backend.queue, claimed, backend.connection_value(cid), 42) is True
    now = backend.now_iso()
    job = backend.job(job_id)
    assert (job["status"], job["completed_at"], job["updated_at"], job["error_message"]) == (
        "completed",
        now,
        now,
        None,
    )
    assert (
        job["records_synced"],
        job["total_records"],
        job["progress_percentage"],
        job["current_phase"],
    ) == (
        42,
        42,
        100,
        "completed",
    )
    assert metadata(job) == {**api_keys, "records_synced": 42}  # the API worker's keys are kept
    conn = backend.connection(cid)
    assert (conn["last_synced_at"], conn["sync_status"], conn["sync_error"]) == (now, "completed", None)
    assert (conn["needs_reauth"], conn["reauth_reason"], conn["consecutive_auth_failures"]) == (0, None, 0)
    (onboarding,) = backend.app.rows("SELECT * FROM onboarding_progress")
    assert (onboarding["first_sync_completed"], onboarding["current_step"]) == (1, "completed")
    assert (onboarding["completed_at"], onboarding["updated_at"]) == (now, now)
    msg = backend.message(job_id)
    assert (msg["state"], msg["finished_at"], msg["lease_token"]) == ("done", now, None)


def test_complete_job_without_an_onboarding_table(backend):
    """A database without ``onboarding_progress`` (an older ClearLift D1): the completion
    writes the job and the connection and skips the onboarding step."""
    backend.app.execute("DROP TABLE onboarding_progress")
    cid = backend.insert_connection(connected_by="user-7")
    job_id, claimed = backend.started(cid)
    assert backend.store.complete_job(backend.queue, claimed, backend.connection_value(cid), 3) is True
    assert backend.job(job_id)["status"] == "completed"
    assert backend.connection(cid)["sync_status"] == "completed"
    assert backend.message(job_id)["state"] == "done"


@pytest.mark.parametrize("stored", ["[1, 2]", '"text"', "not json", "", None, '{"bad": NaN}'])
def test_complete_job_replaces_metadata_that_is_not_a_json_object(backend, stored):
    cid = backend.insert_connection()
    job_id, claimed = backend.started(cid, metadata=stored)
    assert backend.store.complete_job(backend.queue, claimed, backend.connection_value(cid), 7)
    assert metadata(backend.job(job_id)) == {"records_synced": 7}


def test_complete_job_whose_lease_was_lost_writes_nothing(backend):
    cid = backend.insert_connection(connected_by="user-7")
    backend.insert_onboarding("user-7", "org-1")
    job_id, claimed = backend.started(cid, lease_seconds=30)
    backend.clock.advance(31)  # the lease expired and another consumer took the message
    thief = backend.claim(job_id, owner="consumer-2")
    job_before, conn_before = backend.job(job_id), backend.connection(cid)
    onboarding_before = backend.app.rows("SELECT * FROM onboarding_progress")
    assert backend.store.complete_job(backend.queue, claimed, backend.connection_value(cid), 5) is False
    assert backend.job(job_id) == job_before
    assert backend.connection(cid) == conn_before
    assert backend.app.rows("SELECT * FROM onboarding_progress") == onboarding_before
    msg = backend.message(job_id)
    assert (msg["state"], msg["lease_token"], msg["lease_owner"]) == (
        "leased",
        thief.lease_token,
        "consumer-2",
    )


# -- failure ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("touch_connection", [True, False])
def test_fail_job_dead_letters_the_message_and_fails_the_job(backend, touch_connection):
    cid = backend.insert_connection(sync_status="completed", sync_error=None)
    job_id, claimed = backend.started(cid)
    backend.clock.advance(5)
    error = "HTTP 400 from https://graph.example/act_1?access_token=EAAsecretvalue: bad account"
    assert backend.store.fail_job(backend.queue, claimed, error, touch_connection=touch_connection) is True
    now = backend.now_iso()
    msg = backend.message(job_id)
    assert (msg["state"], msg["finished_at"], msg["lease_token"]) == ("dead", now, None)
    job = backend.job(job_id)
    assert (job["status"], job["completed_at"], job["updated_at"], job["current_phase"]) == (
        "failed",
        now,
        now,
        "failed",
    )
    assert "access_token=***" in job["error_message"] and "EAAsecretvalue" not in job["error_message"]
    assert msg["last_error"] == job["error_message"]
    conn = backend.connection(cid)
    if touch_connection:
        assert (conn["sync_status"], conn["sync_error"]) == ("failed", job["error_message"])
    else:  # e.g. the connection's own row was the problem: the job says why, the connection is left
        assert (conn["sync_status"], conn["sync_error"]) == ("syncing", None)


def test_fail_job_whose_lease_was_lost_writes_nothing(backend):
    cid = backend.insert_connection()
    job_id, claimed = backend.started(cid, lease_seconds=30)
    backend.clock.advance(31)
    thief = backend.claim(job_id, owner="consumer-2")
    job_before, conn_before = backend.job(job_id), backend.connection(cid)
    assert backend.store.fail_job(backend.queue, claimed, "HTTP 400") is False
    assert backend.job(job_id) == job_before and backend.connection(cid) == conn_before
    msg = backend.message(job_id)
    assert (msg["state"], msg["lease_token"]) == ("leased", thief.lease_token)


def test_a_dead_letter_at_claim_fails_its_job_and_connection(backend):
    """``Queue.claim`` dead-letters a message whose last attempt's lease expired, and its
    hook (``Store.fail_jobs``) fails the job and its connection with it."""
    cid = backend.insert_connection()
    bystander = backend.insert_connection()
    job_id, _ = backend.started(cid, lease_seconds=30, max_attempts=1)
    other = backend.queued_job(bystander)
    backend.clock.advance(31)  # the consumer died on the last attempt
    (claimed,) = backend.queue.claim("consumer-2", limit=10, lease_seconds=30)
    assert claimed.message.job_id == other
    now = backend.now_iso()
    msg = backend.message(job_id)
    assert msg["state"] == "dead" and "lease expired on the last attempt" in msg["last_error"]
    job = backend.job(job_id)
    assert (job["status"], job["completed_at"], job["error_message"]) == ("failed", now, msg["last_error"])
    conn = backend.connection(cid)
    assert (conn["sync_status"], conn["sync_error"]) == ("failed", msg["last_error"])
    assert backend.job(other)["status"] == "pending"


# -- retry ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "previous, restored",
    [("completed", "completed"), ("failed", "failed"), (None, "pending"), ("syncing", "pending")],
)
def test_retry_job_puts_the_message_back_and_the_job_to_pending(backend, previous, restored):
    cid = backend.insert_connection(sync_status=previous)
    job_id, claimed = backend.started(cid)
    assert backend.connection(cid)["sync_status"] == "syncing"
    backend.clock.advance(5)
    assert (
        backend.store.retry_job(backend.queue, claimed, "HTTP 503 from google", previous, delay=60) == "ready"
    )
    msg = backend.message(job_id)
    assert (msg["state"], msg["visible_at"], msg["last_error"], msg["lease_token"], msg["attempts"]) == (
        "ready",
        backend.clock.time() + 60,
        "HTTP 503 from google",
        None,
        1,
    )
    job = backend.job(job_id)
    assert (job["status"], job["error_message"], job["updated_at"], job["current_phase"]) == (
        "pending",
        "HTTP 503 from google",
        backend.now_iso(),
        "waiting to retry",
    )
    assert backend.connection(cid)["sync_status"] == restored
    assert backend.control.rows("SELECT * FROM clearlift_platform_pauses") == []


def test_retry_job_with_a_pause_defers_without_using_an_attempt(backend):
    cid = backend.insert_connection(sync_status="completed")
    job_id, claimed = backend.started(cid)
    until = backend.clock.time() + 300
    error = "Rate limited by google; retry after 300 s"
    state = backend.store.retry_job(
        backend.queue, claimed, error, "completed", delay=300, count_attempt=False, pause=("google", until)
    )
    assert state == "ready"
    assert backend.control.rows("SELECT platform, until, reason FROM clearlift_platform_pauses") == [
        {"platform": "google", "until": until, "reason": error}
    ]
    msg = backend.message(job_id)
    assert (msg["state"], msg["attempts"], msg["visible_at"]) == ("ready", 0, until)
    assert backend.job(job_id)["status"] == "pending"


def test_retry_job_out_of_attempts_fails_the_job(backend):
    cid = backend.insert_connection(sync_status="completed")
    job_id, claimed = backend.started(cid, max_attempts=1)
    assert (
        backend.store.retry_job(backend.queue, claimed, "HTTP 503", "completed", pause=("google", 1e12))
        == "dead"
    )
    msg = backend.message(job_id)
    assert (msg["state"], msg["last_error"]) == ("dead", "HTTP 503")
    job = backend.job(job_id)
    assert (job["status"], job["error_message"], job["completed_at"]) == (
        "failed",
        "HTTP 503 (gave up after 1 attempts)",
        backend.now_iso(),
    )
    conn = backend.connection(cid)
    assert (conn["sync_status"], conn["sync_error"]) == ("failed", "HTTP 503 (gave up after 1 attempts)")
    assert backend.control.rows("SELECT * FROM clearlift_platform_pauses") == []  # dead: no pause


def test_retry_job_whose_lease_was_lost_is_stale_and_changes_nothing(backend):
    cid = backend.insert_connection()
    job_id, claimed = backend.started(cid, lease_seconds=30)
    backend.clock.advance(31)
    thief = backend.claim(job_id, owner="consumer-2")
    job_before, conn_before = backend.job(job_id), backend.connection(cid)
    state = backend.store.retry_job(backend.queue, claimed, "HTTP 503", "completed", pause=("google", 1e12))
    assert state == "stale"
    assert backend.job(job_id) == job_before and backend.connection(cid) == conn_before
    msg = backend.message(job_id)
    assert (msg["state"], msg["lease_token"]) == ("leased", thief.lease_token)
    assert backend.control.rows("SELECT * FROM clearlift_platform_pauses") == []


# -- an ending that races another consumer's claim ------------------------------------------------------


def wait_until(predicate, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.mark.parametrize("ending", ["complete", "retry", "fail"])
def test_an_ending_that_races_another_consumers_claim_changes_nothing(backend, ending):
    """The delivery's lease runs out as it ends, and another host claims the message at
    that moment (its claim's write is held open here, then committed). Whichever way the
    two interleave, the late delivery is fenced out: it reports the lease lost and the
    message stays with the new holder."""
    cid = backend.insert_connection(sync_status="completed")
    job_id, claimed = backend.started(cid, lease_seconds=30)
    backend.clock.advance(31)
    store, queue = backend.store, backend.queue
    conn = backend.connection_value(cid)
    job_before, conn_before = backend.job(job_id), backend.connection(cid)
    endings = {
        "complete": lambda: store.complete_job(queue, claimed, conn, 5),
        "retry": lambda: store.retry_job(queue, claimed, "HTTP 503", "completed"),
        "fail": lambda: store.fail_job(queue, claimed, "HTTP 400"),
    }
    out: dict[str, object] = {}

    def end() -> None:
        try:
            out["result"] = endings[ending]()
        except BaseException as exc:  # shown by the assertion below
            out["error"] = exc

    steal = (
        "UPDATE sync_queue SET lease_token = 'thief', lease_owner = 'consumer-2', "
        "attempts = attempts + 1, visible_at = ? WHERE job_id = ?"
    )
    d1_first = backend.name == "d1" and ending == "complete"
    with backend.control.holding(steal, (backend.clock.time() + 30, job_id)) as blocked:
        worker = threading.Thread(target=end)
        worker.start()
        if d1_first:  # the lease was checked, the D1 batch is written: only the local ack is left
            wait_until(lambda: backend.job(job_id)["status"] == "completed", "the D1 batch")
        blocked()
    worker.join(30)
    assert "error" not in out, out
    assert out["result"] == ("stale" if ending == "retry" else False)
    msg = backend.message(job_id)
    assert (msg["state"], msg["lease_token"], msg["lease_owner"], msg["attempts"]) == (
        "leased",
        "thief",
        "consumer-2",
        2,
    )
    if d1_first:
        # D1 is written before the local side (store/d1.py): the row says completed, and the
        # new holder's start_job refuses the finished job rather than run it again
        assert backend.job(job_id)["status"] == "completed"
        assert store.start_job(job_id, cid) is False
    else:
        assert backend.job(job_id) == job_before and backend.connection(cid) == conn_before


def test_the_latest_job_is_the_newest_by_time_whatever_the_timestamp_spelling(backend):
    """The API worker's rows carry D1's CURRENT_TIMESTAMP ('2025-01-01 21:00:00'), clearlift's
    ISO with a T and a Z: as text the T sorts after the space, so a later API-worker job would
    lose to an earlier clearlift one on the same day."""
    cid = backend.insert_connection()
    ours = backend.insert_job(cid, id="ours", status="completed", created_at="2025-01-01T20:00:00.000Z")
    theirs = backend.insert_job(cid, id="theirs", status="pending", created_at="2025-01-01 21:00:00")
    assert backend.store.latest_job(cid)["id"] == theirs != ours
    (row,) = [r for r in backend.store.connections_with_latest_job() if r["id"] == cid]
    assert row["job_id"] == theirs
