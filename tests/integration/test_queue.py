"""The durable queue (Queue) on a real SQLite file, with a frozen clock."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest

from clearlift_cli import scheduler
from clearlift_cli.errors import Conflict, NotFound, UsageError
from clearlift_cli.models import JobType, Priority, SyncJobMessage
from clearlift_cli.store.queue import DEFAULT_MAX_ATTEMPTS, Queue
from clearlift_cli.timeutil import iso_z
from tests.helpers import T0, enqueue_message, frozen, insert_connection, new_store, query, queue_row, raw

LEASE = 60.0


@pytest.fixture(params=["sqlite", "postgres"])
def env(request, tmp_path):
    """(store, queue, clock, db path or URL): a fresh store — a SQLite file, or the
    PostgreSQL control plane in a schema of its own — whose queue fails jobs on dead letters
    the way the consumer wires it. Every test here is the queue's contract for both."""
    clock = frozen()
    db = (
        request.getfixturevalue("pg_schema_url") if request.param == "postgres" else tmp_path / "clearlift.db"
    )
    store = new_store(db, clock=clock)
    queue = Queue(store)  # dead letters fail their jobs (Store.fail_jobs)
    yield store, queue, clock, db
    store.close()


def ack(store, queue, claimed) -> bool:
    with store.write() as c:
        return queue.ack(c, claimed)


def retry(store, queue, claimed, error, **kwargs) -> str:
    with store.write() as c:
        return queue.retry(c, claimed, error, **kwargs)


# -- the message ------------------------------------------------------------------------


def test_message_body_is_exactly_the_contract_shape(env):
    store, queue, clock, db = env
    cid = insert_connection(db, account_id="1234567890", last_synced_at=None)
    job_id, window = scheduler.enqueue_manual(store, queue, cid)
    body_text = queue_row(db, job_id)["body"]
    body = json.loads(body_text)
    assert list(body) == [
        "job_id",
        "connection_id",
        "organization_id",
        "platform",
        "account_id",
        "job_type",
        "sync_window",
        "metadata",
    ]
    assert list(body["sync_window"]) == ["start", "end"]
    assert list(body["metadata"]) == ["retry_count", "created_at", "priority"]
    assert body == {
        "job_id": job_id,
        "connection_id": cid,
        "organization_id": "org-1",
        "platform": "google",
        "account_id": "1234567890",
        "job_type": "full",
        "sync_window": {"start": iso_z(T0 - timedelta(days=7)), "end": iso_z(T0)},
        "metadata": {"retry_count": 0, "created_at": iso_z(T0), "priority": "high"},
    }
    assert isinstance(body["account_id"], str) and isinstance(body["metadata"]["retry_count"], int)
    # compact, as JSON.stringify writes it
    assert body_text == json.dumps(body, separators=(",", ":"))
    assert SyncJobMessage.loads(body_text).dumps() == body_text


def test_claimed_message_carries_the_retry_count(env):
    store, queue, clock, db = env
    msg = enqueue_message(store, queue)
    (first,) = queue.claim("a", limit=5, lease_seconds=LEASE)
    assert first.message.job_id == msg.job_id and first.message.retry_count == 0 and first.attempts == 1
    assert first.message.sync_window == msg.sync_window and first.message.priority is Priority.NORMAL
    assert retry(store, queue, first, "boom", delay=10) == "ready"
    clock.advance(10)
    (second,) = queue.claim("a", limit=5, lease_seconds=LEASE)
    assert second.message.retry_count == 1 and second.attempts == 2 and second.last_error == "boom"


def test_one_live_message_per_connection(env):
    store, queue, clock, db = env
    msg = enqueue_message(store, queue, connection_id="org-1-google-1")
    with pytest.raises(Conflict):
        enqueue_message(store, queue, connection_id="org-1-google-1")
    # the failed enqueue rolled back its job row too
    assert [r["id"] for r in query(db, "SELECT id FROM sync_jobs")] == [msg.job_id]
    (claimed,) = queue.claim("a", limit=1, lease_seconds=LEASE)
    assert ack(store, queue, claimed)
    enqueue_message(store, queue, connection_id="org-1-google-1")  # done frees the slot


# -- leases -----------------------------------------------------------------------------


def test_claimed_message_is_invisible_until_its_lease_expires(env):
    store, queue, clock, db = env
    msg = enqueue_message(store, queue)
    (first,) = queue.claim("consumer-a", limit=10, lease_seconds=LEASE)
    row = queue_row(db, msg.job_id)
    assert (row["state"], row["lease_owner"], row["attempts"]) == ("leased", "consumer-a", 1)
    assert queue.claim("consumer-b", limit=10, lease_seconds=LEASE) == []
    clock.advance(LEASE - 0.001)
    assert queue.claim("consumer-b", limit=10, lease_seconds=LEASE) == []
    clock.advance(0.001)
    (second,) = queue.claim("consumer-b", limit=10, lease_seconds=LEASE)
    assert second.message.job_id == msg.job_id
    assert second.attempts == first.attempts + 1 == 2
    assert second.lease_token != first.lease_token
    assert queue_row(db, msg.job_id)["lease_owner"] == "consumer-b"


def test_stale_owner_changes_nothing(env):
    store, queue, clock, db = env
    msg = enqueue_message(store, queue)
    (stale,) = queue.claim("a", limit=1, lease_seconds=LEASE)
    clock.advance(LEASE + 1)
    (current,) = queue.claim("b", limit=1, lease_seconds=LEASE)
    before = dict(queue_row(db, msg.job_id))

    assert ack(store, queue, stale) is False
    assert retry(store, queue, stale, "late failure") == "stale"
    assert retry(store, queue, stale, "late limit", delay=5, count_attempt=False) == "stale"
    assert queue.heartbeat(stale, LEASE) is False
    with store.write() as c:
        assert queue.dead_letter(c, stale, "late permanent") is False
        assert queue.holds_lease(c, stale) is False
        assert queue.holds_lease(c, current) is True
    assert dict(queue_row(db, msg.job_id)) == before

    assert ack(store, queue, current) is True
    row = queue_row(db, msg.job_id)
    assert row["state"] == "done" and row["finished_at"] == iso_z(clock.now())
    assert ack(store, queue, current) is False  # a second ack is a no-op too


def test_ack_changes_zero_rows_for_a_stale_token(env):
    # the same fencing seen from SQL: the row's lease_token no longer matches
    store, queue, clock, db = env
    enqueue_message(store, queue)
    (stale,) = queue.claim("a", limit=1, lease_seconds=LEASE)
    clock.advance(LEASE)
    queue.claim("b", limit=1, lease_seconds=LEASE)
    before = [tuple(r) for r in store.read("SELECT * FROM sync_queue ORDER BY id")]
    with store.write() as c:
        assert queue.ack(c, stale) is False
    assert [tuple(r) for r in store.read("SELECT * FROM sync_queue ORDER BY id")] == before


def test_heartbeat_extends_the_lease(env):
    store, queue, clock, db = env
    enqueue_message(store, queue)
    (claimed,) = queue.claim("a", limit=1, lease_seconds=LEASE)
    clock.advance(LEASE - 10)
    assert queue.heartbeat(claimed, LEASE) is True
    clock.advance(LEASE - 1)  # well past the first lease
    assert queue.claim("b", limit=1, lease_seconds=LEASE) == []
    clock.advance(1)
    (taken,) = queue.claim("b", limit=1, lease_seconds=LEASE)
    assert queue.heartbeat(claimed, LEASE) is False  # fenced out: b holds it now
    assert queue.heartbeat(taken, LEASE) is True
    assert ack(store, queue, claimed) is False and ack(store, queue, taken) is True


# -- retries and dead letters -----------------------------------------------------------


def _claim_when_visible(queue, clock, owner="a"):
    """Advance to the message's visible_at and claim it (not a moment earlier)."""
    visible_at = queue.store.read("SELECT min(visible_at) FROM sync_queue WHERE state = 'ready'")[0][0]
    # the clock moves in whole microseconds: round up, and one more for float noise
    wait_us = math.ceil((visible_at - clock.time()) * 1e6) + 1
    if wait_us > 2000:
        clock.advance((wait_us - 2000) / 1e6)
        assert queue.claim(owner, limit=1, lease_seconds=LEASE) == [], "claimable before its delay"
        clock.advance(2000 / 1e6)
    elif wait_us > 0:
        clock.advance(wait_us / 1e6)
    return queue.claim(owner, limit=1, lease_seconds=LEASE)


def test_one_plus_three_attempts_then_a_dead_letter_with_the_last_error(env):
    store, queue, clock, db = env
    msg = enqueue_message(store, queue)
    delays = []
    for attempt in range(1, DEFAULT_MAX_ATTEMPTS + 1):
        (claimed,) = _claim_when_visible(queue, clock)
        assert claimed.attempts == attempt and claimed.max_attempts == 4
        with store.write() as c:
            state = queue.retry(c, claimed, f"HTTP 503 on attempt {attempt}")
            if state == "dead":
                store.fail_jobs(c, [(msg.job_id, f"HTTP 503 on attempt {attempt}")])
        if attempt < DEFAULT_MAX_ATTEMPTS:
            assert state == "ready"
            delays.append(queue_row(db, msg.job_id)["visible_at"] - clock.time())
        else:
            assert state == "dead"
    # exponential backoff with jitter: 15-30 s, 30-60 s, 60-120 s
    for i, delay in enumerate(delays):
        base = 30 * 2**i
        assert base / 2 <= delay <= base, delays
    row = queue_row(db, msg.job_id)
    assert (row["state"], row["attempts"], row["last_error"]) == ("dead", 4, "HTTP 503 on attempt 4")
    assert row["finished_at"] == iso_z(clock.now())
    clock.advance(10_000)
    assert queue.claim("a", limit=1, lease_seconds=LEASE) == []
    job = query(db, "SELECT * FROM sync_jobs WHERE id = ?", (msg.job_id,))[0]
    assert job["status"] == "failed" and job["error_message"] == "HTTP 503 on attempt 4"
    dead = queue.dead_letters()
    assert [(d["job_id"], d["last_error"]) for d in dead] == [(msg.job_id, "HTTP 503 on attempt 4")]
    assert queue.stats().dead == 1


def test_crashed_consumer_on_the_last_attempt_is_dead_lettered_by_the_next_claim(env):
    store, queue, clock, db = env
    cid = insert_connection(db, account_id="crashy", last_synced_at=None)
    msg = enqueue_message(store, queue, connection_id=cid)
    for attempt in range(1, DEFAULT_MAX_ATTEMPTS + 1):
        (claimed,) = queue.claim("a", limit=1, lease_seconds=LEASE)
        assert claimed.attempts == attempt
        if attempt == 2:
            assert retry(store, queue, claimed, "timeout talking to google", delay=0) == "ready"
        else:
            clock.advance(LEASE)  # the consumer died holding the lease
    assert queue.claim("b", limit=1, lease_seconds=LEASE) == []
    row = queue_row(db, msg.job_id)
    assert row["state"] == "dead"
    assert row["last_error"] == (
        "timeout talking to google (then lease expired on the last attempt: consumer crashed or timed out)"
    )
    # the on_dead hook failed the job and its connection in the same transaction
    job = query(db, "SELECT status, error_message FROM sync_jobs WHERE id = ?", (msg.job_id,))[0]
    assert job["status"] == "failed" and job["error_message"] == row["last_error"]
    conn = query(db, "SELECT sync_status, sync_error FROM platform_connections WHERE id = ?", (cid,))[0]
    assert conn["sync_status"] == "failed" and "lease expired" in conn["sync_error"]


def test_crash_on_the_last_attempt_without_an_earlier_error(env):
    store, queue, clock, db = env
    msg = enqueue_message(store, queue)
    for _ in range(DEFAULT_MAX_ATTEMPTS):
        assert queue.claim("a", limit=1, lease_seconds=LEASE)
        clock.advance(LEASE)
    assert queue.claim("a", limit=1, lease_seconds=LEASE) == []
    assert queue_row(db, msg.job_id)["last_error"] == (
        "(lease expired on the last attempt: consumer crashed or timed out)"
    )


def test_explicit_delays_do_not_use_up_attempts(env):
    store, queue, clock, db = env
    msg = enqueue_message(store, queue)
    for _ in range(10):
        (claimed,) = queue.claim("a", limit=1, lease_seconds=LEASE)
        assert claimed.attempts == 1
        assert retry(store, queue, claimed, "rate limited", delay=120, count_attempt=False) == "ready"
        assert queue_row(db, msg.job_id)["visible_at"] == pytest.approx(clock.time() + 120)
        clock.advance(119.9)
        assert queue.claim("a", limit=1, lease_seconds=LEASE) == []
        clock.advance(0.1)
    (claimed,) = queue.claim("a", limit=1, lease_seconds=LEASE)
    assert claimed.attempts == 1 and claimed.message.retry_count == 0
    # counted failures still count from where they were
    assert retry(store, queue, claimed, "boom") == "ready"
    (claimed,) = _claim_when_visible(queue, clock)
    assert claimed.attempts == 2


def test_explicit_delay_on_the_last_attempt_does_not_dead_letter(env):
    store, queue, clock, db = env
    msg = enqueue_message(store, queue)
    for _ in range(DEFAULT_MAX_ATTEMPTS - 1):
        (claimed,) = _claim_when_visible(queue, clock)
        assert retry(store, queue, claimed, "boom") == "ready"
    (last,) = _claim_when_visible(queue, clock)
    assert last.attempts == DEFAULT_MAX_ATTEMPTS
    assert retry(store, queue, last, "rate limited", delay=30, count_attempt=False) == "ready"
    (again,) = _claim_when_visible(queue, clock)
    assert again.attempts == DEFAULT_MAX_ATTEMPTS
    assert retry(store, queue, again, "boom again") == "dead"
    assert queue_row(db, msg.job_id)["last_error"] == "boom again"


def test_dead_letter_now_for_permanent_errors(env):
    store, queue, clock, db = env
    msg = enqueue_message(store, queue)
    (claimed,) = queue.claim("a", limit=1, lease_seconds=LEASE)
    with store.write() as c:
        assert queue.dead_letter(c, claimed, "account not found") is True
    row = queue_row(db, msg.job_id)
    assert (row["state"], row["attempts"], row["last_error"]) == ("dead", 1, "account not found")


def test_errors_are_redacted_before_they_are_stored(env):
    store, queue, clock, db = env
    msg = enqueue_message(store, queue)
    (claimed,) = queue.claim("a", limit=1, lease_seconds=LEASE)
    retry(store, queue, claimed, "GET /me?access_token=EAABsecretvalue123&fields=id failed")
    error = queue_row(db, msg.job_id)["last_error"]
    assert "EAABsecretvalue123" not in error and "access_token=***" in error


def test_requeue_dead_starts_attempts_again(env):
    store, queue, clock, db = env
    msg = enqueue_message(store, queue)
    for _ in range(DEFAULT_MAX_ATTEMPTS):
        (claimed,) = _claim_when_visible(queue, clock)
        with store.write() as c:
            if queue.retry(c, claimed, "boom") == "dead":
                store.fail_jobs(c, [(msg.job_id, "boom")])
    assert queue_row(db, msg.job_id)["state"] == "dead"
    with pytest.raises(NotFound):
        queue.requeue_dead("no-such-job")
    assert queue.requeue_dead(msg.job_id).requeued == [msg.job_id]
    row = queue_row(db, msg.job_id)
    assert (row["state"], row["attempts"], row["finished_at"], row["lease_owner"]) == ("ready", 0, None, None)
    assert row["last_error"] == "boom"  # kept for the record
    assert query(db, "SELECT status FROM sync_jobs WHERE id = ?", (msg.job_id,))[0][0] == "pending"
    (claimed,) = queue.claim("a", limit=1, lease_seconds=LEASE)
    assert claimed.attempts == 1 and claimed.message.job_id == msg.job_id
    assert queue.dead_letters() == []


def test_requeue_all_dead_letters_by_message_id_and_all(env):
    store, queue, clock, db = env
    msgs = [enqueue_message(store, queue) for _ in range(3)]
    batch = queue.claim("a", limit=3, lease_seconds=LEASE)
    with store.write() as c:
        for claimed in batch:
            assert queue.dead_letter(c, claimed, "nope")
    first_id = queue_row(db, msgs[0].job_id)["id"]
    assert queue.requeue_dead(str(first_id)).requeued == [msgs[0].job_id]
    assert sorted(queue.requeue_dead().requeued) == sorted(m.job_id for m in msgs[1:])
    assert queue.stats().ready_normal == 3 and queue.stats().dead == 0


def test_requeue_refuses_when_the_connection_has_a_newer_live_job(env):
    store, queue, clock, db = env
    old = enqueue_message(store, queue, connection_id="org-1-google-5")
    (claimed,) = queue.claim("a", limit=1, lease_seconds=LEASE)
    with store.write() as c:
        queue.dead_letter(c, claimed, "nope")
        store.fail_jobs(c, [(old.job_id, "nope")])
    enqueue_message(store, queue, connection_id="org-1-google-5")
    with pytest.raises(Conflict):
        queue.requeue_dead(old.job_id)
    assert queue_row(db, old.job_id)["state"] == "dead"
    result = queue.requeue_dead()  # --all skips it rather than failing, and says why
    assert result.requeued == []
    ((message_id, job_id, connection_id, reason),) = [tuple(vars(s).values()) for s in result.skipped]
    assert (message_id, job_id, connection_id) == (
        queue_row(db, old.job_id)["id"],
        old.job_id,
        "org-1-google-5",
    )
    assert reason == "connection org-1-google-5 already has a queued or running job"


def test_nothing_is_deleted(env):
    store, queue, clock, db = env
    msgs = [enqueue_message(store, queue) for _ in range(3)]
    claimed = queue.claim("a", limit=3, lease_seconds=LEASE)
    with store.write() as c:
        queue.ack(c, claimed[0])
        queue.dead_letter(c, claimed[1], "nope")
        queue.retry(c, claimed[2], "later")
    states = {r["job_id"]: r["state"] for r in query(db, "SELECT job_id, state FROM sync_queue")}
    assert states == {msgs[0].job_id: "done", msgs[1].job_id: "dead", msgs[2].job_id: "ready"}


# -- messages that cannot be decoded -----------------------------------------------------

MALFORMED = {
    "end is null": lambda b: {**b, "sync_window": {**b["sync_window"], "end": None}},
    "fields missing": lambda b: {k: v for k, v in b.items() if k not in ("connection_id", "account_id")},
    "bad date": lambda b: {**b, "sync_window": {**b["sync_window"], "start": "2025-13-45"}},
    "not JSON": lambda b: "{truncated",
    "another job's message": lambda b: {**b, "job_id": "someone-else"},
}


def _corrupt(db, job_id, how) -> None:
    row = queue_row(db, job_id)
    bad = MALFORMED[how](json.loads(row["body"]))
    c = raw(db)
    with c:
        c.execute(
            "UPDATE sync_queue SET body = ? WHERE id = ?",
            (bad if isinstance(bad, str) else json.dumps(bad), row["id"]),
        )
    c.close()


def test_a_malformed_message_is_dead_lettered_alone_at_claim(env):
    """Each message that cannot be decoded fails alone, in the claim's own commit, with the
    reason on the message and on its job; the rest of the batch is delivered normally."""
    store, queue, clock, db = env
    good = [enqueue_message(store, queue) for _ in range(2)]
    bad = {how: enqueue_message(store, queue) for how in MALFORMED}
    for how, msg in bad.items():
        _corrupt(db, msg.job_id, how)
    batch = queue.claim("a", limit=20, lease_seconds=LEASE)
    assert sorted(c.message.job_id for c in batch) == sorted(m.job_id for m in good)
    assert all(c.attempts == 1 for c in batch)
    says = {
        "end is null": "sync_window.end is missing",
        "fields missing": "connection_id is missing",
        "bad date": "sync_window.start '2025-13-45' is not a timestamp",
        "not JSON": "message is not JSON",
        "another job's message": "job_id 'someone-else' is not its queue row's job",
    }
    for how, msg in bad.items():
        row = queue_row(db, msg.job_id)
        assert row["state"] == "dead" and row["lease_token"] is None, how
        assert row["last_error"].startswith("malformed queue message: ") and says[how] in row["last_error"], (
            how
        )
        (job,) = query(db, "SELECT status, error_message FROM sync_jobs WHERE id = ?", (msg.job_id,))
        assert (job["status"], job["error_message"]) == ("failed", row["last_error"]), how
    assert queue.claim("b", limit=20, lease_seconds=LEASE) == []  # nothing left to trip over
    # `queue retry --all` leaves them (re-queueing cannot help) and says why; one by id is refused
    result = queue.requeue_dead()
    assert result.requeued == []
    reasons = {s.job_id: s.reason for s in result.skipped}
    assert set(reasons) == {m.job_id for m in bad.values()}
    for how, m in bad.items():
        assert (
            reasons[m.job_id].startswith("its message is malformed (") and says[how] in reasons[m.job_id]
        ), how
        assert "clearlift sync CONNECTION --now" in reasons[m.job_id]
    with pytest.raises(UsageError, match="cannot be re-queued: its message is malformed"):
        queue.requeue_dead(bad["end is null"].job_id)
    assert {queue_row(db, m.job_id)["state"] for m in bad.values()} == {"dead"}


# -- order, batches, pauses ------------------------------------------------------------


def test_high_is_claimed_before_normal(env):
    store, queue, clock, db = env
    normal = [enqueue_message(store, queue, priority=Priority.NORMAL) for _ in range(3)]
    clock.advance(5)
    high = [enqueue_message(store, queue, priority=Priority.HIGH, job_type=JobType.FULL) for _ in range(2)]
    (first,) = queue.claim("a", limit=1, lease_seconds=LEASE)
    assert first.message.job_id == high[0].job_id
    rest = queue.claim("a", limit=10, lease_seconds=LEASE)
    assert [c.message.job_id for c in rest] == [high[1].job_id] + [m.job_id for m in normal]


def test_claim_takes_at_most_the_limit_oldest_first(env):
    store, queue, clock, db = env
    msgs = []
    for _ in range(7):
        msgs.append(enqueue_message(store, queue))
        clock.advance(1)
    batch = queue.claim("a", limit=3, lease_seconds=LEASE)
    assert [c.message.job_id for c in batch] == [m.job_id for m in msgs[:3]]
    assert len({c.lease_token for c in batch}) == 3
    assert [c.message.job_id for c in queue.claim("b", limit=100, lease_seconds=LEASE)] == [
        m.job_id for m in msgs[3:]
    ]


def test_delayed_message_waits(env):
    store, queue, clock, db = env
    enqueue_message(store, queue, delay=30)
    assert queue.claim("a", limit=1, lease_seconds=LEASE) == []
    assert queue.stats().delayed == 1
    clock.advance(30)
    assert len(queue.claim("a", limit=1, lease_seconds=LEASE)) == 1


def test_platform_pause_holds_that_platforms_messages(env):
    store, queue, clock, db = env
    google = enqueue_message(store, queue, platform="google")
    facebook = enqueue_message(store, queue, platform="facebook")
    with store.write() as c:
        store.pause_platform(c, "google", clock.time() + 300, "developer token quota")
    assert store.platform_pauses() == {"google": pytest.approx(clock.time() + 300)}
    (fb,) = queue.claim("a", limit=10, lease_seconds=LEASE)
    assert fb.message.job_id == facebook.job_id
    assert ack(store, queue, fb)
    clock.advance(299)
    assert queue.claim("a", limit=10, lease_seconds=LEASE) == []
    clock.advance(1)
    assert [c.message.job_id for c in queue.claim("a", limit=10, lease_seconds=LEASE)] == [google.job_id]


def test_pause_row_written_directly_is_honoured(env):
    store, queue, clock, db = env
    tiktok = enqueue_message(store, queue, platform="tiktok")
    with store.write() as c:
        c.execute(
            "INSERT INTO clearlift_platform_pauses (platform, until, reason) VALUES ('tiktok', ?, 'app limit')",
            (clock.time() + 60,),
        )
    assert queue.claim("a", limit=10, lease_seconds=LEASE) == []
    clock.advance(60)
    assert [c.message.job_id for c in queue.claim("a", limit=10, lease_seconds=LEASE)] == [tiktok.job_id]


def test_only_job_claims_just_that_message(env):
    store, queue, clock, db = env
    a, b = enqueue_message(store, queue), enqueue_message(store, queue)
    (claimed,) = queue.claim("a", limit=10, lease_seconds=LEASE, only_job=b.job_id)
    assert claimed.message.job_id == b.job_id
    assert queue_row(db, a.job_id)["state"] == "ready"


def test_stats(env):
    store, queue, clock, db = env
    enqueue_message(store, queue, priority=Priority.HIGH)
    enqueue_message(store, queue)
    enqueue_message(store, queue)
    enqueue_message(store, queue, delay=100)
    leased = enqueue_message(store, queue, priority=Priority.HIGH)
    clock.advance(7)
    s = queue.stats()
    assert (s.ready_high, s.ready_normal, s.delayed, s.leased, s.dead, s.done) == (2, 2, 1, 0, 0, 0)
    assert s.oldest_ready_age_s == pytest.approx(7)
    claimed = queue.claim("a", limit=1, lease_seconds=LEASE, only_job=leased.job_id)
    assert claimed and queue.stats().leased == 1
