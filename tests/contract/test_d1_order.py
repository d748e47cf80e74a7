"""What a D1 failure leaves: ClearLift's side is written first, the local side after
(store/d1.py), so these tests run on the ``d1`` backend only; on SQLite and PostgreSQL
both sides are one transaction and there is no in-between to test. A D1 request that
fails leaves the local side as it was; a D1 request whose answer is lost after it ran is
sent again, and the statements are guarded so that the second run changes nothing."""

from __future__ import annotations

import json
import uuid

import pytest

from clearlift_cli.errors import D1Unavailable
from clearlift_cli.sandbox.d1 import QUERY
from clearlift_cli.store.scheduling import NewJob

from .conftest import metadata

pytestmark = pytest.mark.parametrize("backend", ["d1"], indirect=True)


def d1_down(backend, *, after: int = 0) -> None:
    """D1 refuses every request (overloaded: the statements never ran), after ``after``
    requests answered normally; more refusals than the client makes attempts."""
    app, _ = backend.d1
    if after:
        app.faults.add("latency", path=QUERY, times=after, seconds=0)  # answered as usual
    app.overload_next(10)


def d1_up(backend) -> None:
    app, _ = backend.d1
    app.faults.clear()


@pytest.mark.parametrize("ending", ["complete", "retry", "fail"])
def test_an_ending_d1_refuses_leaves_the_message_with_its_delivery(backend, ending):
    cid = backend.insert_connection(sync_status="completed")
    job_id, claimed = backend.started(cid)
    job_before, msg_before = backend.job(job_id), backend.message(job_id)
    store, queue = backend.store, backend.queue
    endings = {
        "complete": lambda: store.complete_job(queue, claimed, backend.connection_value(cid), 5),
        "retry": lambda: store.retry_job(queue, claimed, "HTTP 503", "completed", pause=("google", 1e12)),
        "fail": lambda: store.fail_job(queue, claimed, "HTTP 400"),
    }
    assert store.has_onboarding()  # looked up once, now: the refused request is the ending's own
    d1_down(backend)
    with pytest.raises(D1Unavailable):
        endings[ending]()
    # the local transaction (ack, retry, dead letter, pause) was rolled back, or never began
    assert backend.message(job_id) == msg_before
    assert backend.control.rows("SELECT * FROM clearlift_platform_pauses") == []
    assert backend.job(job_id) == job_before
    d1_up(backend)  # the delivery still holds its lease: it can end the job once D1 answers
    assert endings[ending]() == ("ready" if ending == "retry" else True)
    assert (
        backend.job(job_id)["status"]
        == {"complete": "completed", "retry": "pending", "fail": "failed"}[ending]
    )


def test_a_lost_answer_to_the_completion_is_sent_again_and_changes_nothing(backend):
    cid = backend.insert_connection(connected_by="user-7")
    backend.insert_onboarding("user-7", "org-1")
    job_id, claimed = backend.started(cid, metadata='{"triggered_by": "user-7"}')
    backend.clock.advance(60)
    done_at = backend.now_iso()  # the client's wait before sending again moves the clock
    assert backend.store.has_onboarding()  # looked up once, now: the next request is the batch
    app, _ = backend.d1
    before = len(app.requests_to(QUERY))
    app.drop_next(1)  # the batch runs and commits; its answer is lost on the way
    assert backend.store.complete_job(backend.queue, claimed, backend.connection_value(cid), 9) is True
    assert len(app.requests_to(QUERY)) == before + 2  # sent again, once
    job = backend.job(job_id)
    assert (job["status"], job["records_synced"], job["completed_at"]) == ("completed", 9, done_at)
    (onboarding,) = backend.app.rows("SELECT first_sync_completed, completed_at FROM onboarding_progress")
    assert onboarding == {"first_sync_completed": 1, "completed_at": done_at}
    assert metadata(job) == {"triggered_by": "user-7", "records_synced": 9}
    assert backend.message(job_id)["state"] == "done"


def test_create_jobs_when_d1_refuses_the_inserts_creates_nothing_either_side(backend):
    from clearlift_cli.store.scheduling import NewJob

    cid = backend.insert_connection()
    message = backend.message_for("job-1", cid)
    d1_down(backend)  # the inserts, the first request (the guarded insert is the look-up), are refused
    with pytest.raises(D1Unavailable):
        backend.store.create_jobs(backend.queue, [NewJob(message, {"k": 1})])
    assert backend.jobs_of(cid) == [] and backend.messages() == []
    d1_up(backend)
    assert backend.store.create_jobs(backend.queue, [NewJob(message, {"k": 1})]).jobs == ["job-1"]
    assert backend.message("job-1")["state"] == "ready"


def test_a_lost_answer_to_the_job_inserts_leaves_the_row_for_adoption(backend):
    """The guarded insert ran, its answer was lost, and the resent one created nothing: the
    store cannot tell the row is its own, counts the connection as having a live job, and
    enqueues no message. The row is pending with no live message, which is what adoption
    looks for: the next ``schedule`` queues it under its own id."""
    from clearlift_cli.store.scheduling import NewJob

    cid = backend.insert_connection()
    message = backend.message_for("job-1", cid)
    app, _ = backend.d1
    app.drop_next(1)  # the inserts (the first request: the guarded insert is the look-up)
    result = backend.store.create_jobs(backend.queue, [NewJob(message, {"k": 1})])
    assert (result.jobs, result.already_live) == ([], [cid])
    assert [r["id"] for r in backend.jobs_of(cid)] == ["job-1"] and backend.messages() == []
    assert [r["id"] for r in backend.store.orphan_jobs()] == ["job-1"]
    store = backend.store
    with store.write() as c:
        assert store.adopt_job(c, backend.queue, "job-1", message, '{"k": 1, "adopted": true}') == "adopted"
    assert backend.message("job-1")["state"] == "ready"


def test_create_jobs_looks_up_live_job_rows_only_where_a_message_is_live(backend):
    """The guarded insert is the look-up for a live job row (on a D1 without clearlift's
    indexes, each look-up of 90 connections is a scan of sync_jobs and a request): only
    the connections with a live message are looked up before, so that one with both still
    counts as having a live job. Each ends as before: a live job row gets nothing (already
    live), a live message alone is reported, the rest get one job and its message."""
    job, message, both = (backend.insert_connection() for _ in range(3))
    clean = [backend.insert_connection() for _ in range(120)]
    api_jobs = {backend.insert_job(cid, status="pending") for cid in (job, both)}
    for cid in (message, both):
        backend.insert_message(backend.message_for(str(uuid.uuid4()), cid))
    jobs = [
        NewJob(backend.message_for(str(uuid.uuid4()), cid), {"k": 1}) for cid in [job, message, both, *clean]
    ]
    app, _ = backend.d1
    before = len(app.requests_to(QUERY))
    result = backend.store.create_jobs(backend.queue, jobs)
    sent = [json.loads(r.body) for r in app.requests_to(QUERY)[before:]]
    lookups = [b for b in sent if "sql" in b and b["sql"].startswith("SELECT connection_id FROM sync_jobs")]
    assert [sorted(b["params"]) for b in lookups] == [sorted([message, both])]
    assert len(sent) == 1 + 2  # that look-up, then 121 guarded inserts, 100 a request
    assert (sorted(result.already_live), result.message_live) == (sorted([job, both]), [message])
    assert sorted(result.jobs) == sorted(j.message.job_id for j in jobs[3:])
    assert {r["id"] for cid in (job, both) for r in backend.jobs_of(cid)} == api_jobs
    assert backend.jobs_of(message) == []
    assert sorted(m["connection_id"] for m in backend.messages()) == sorted([message, both, *clean])
