"""Property-based tests: the queue's state machine under any interleaving of claim / ack /
retry / defer / lease expiry / re-queue, and exact money parsing."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from clearlift_cli import money
from clearlift_cli.models import JobType, Priority, SyncJobMessage, SyncWindow
from clearlift_cli.store import open_store
from clearlift_cli.store.queue import Queue
from clearlift_cli.timeutil import FrozenClock

LEASE = 60.0


class QueueMachine(RuleBasedStateMachine):
    claims = Bundle("claims")

    def __init__(self):
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = FrozenClock(datetime(2025, 1, 1, tzinfo=UTC))
        self.store = open_store(str(Path(self.dir.name) / "q.db"), clock=self.clock, create=True)
        self.store.migrate()
        self.queue = Queue(self.store)
        self.n = 0
        self.jobs: set[str] = set()
        self.acked: set[str] = set()
        self.live: dict[str, str | None] = {}  # job -> lease token of the delivery holding it

    def teardown(self):
        self.store.close()
        self.dir.cleanup()

    @rule(high=st.booleans())
    def enqueue(self, high):
        self.n += 1
        job_id = f"job-{self.n}"
        now = self.clock.now()
        msg = SyncJobMessage(
            job_id,
            f"org-1-google-{self.n}",
            "org-1",
            "google",
            str(self.n),
            JobType.FULL,
            SyncWindow(now - timedelta(days=7), now),
            0,
            "2025-01-01T00:00:00.000Z",
            Priority.HIGH if high else Priority.NORMAL,
        )
        with self.store.write() as c:
            c.execute(
                "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at) "
                "VALUES (?, 'org-1', ?, 'pending', 'full', '2025-01-01T00:00:00.000Z')",
                (job_id, msg.connection_id),
            )
            self.queue.enqueue(c, msg)
        self.jobs.add(job_id)

    @rule(target=claims, limit=st.integers(1, 4))
    def claim(self, limit):
        got = self.queue.claim("owner", limit=limit, lease_seconds=LEASE)
        for r in self.store.read("SELECT job_id FROM sync_queue WHERE state = 'dead'"):
            self.live[r[0]] = None  # an expired last attempt was dead-lettered by the claim
        for m in got:
            self.live[m.message.job_id] = m.lease_token
            assert 1 <= m.attempts <= m.max_attempts
            assert m.message.job_id not in self.acked, "a done message was delivered again"
            assert m.message.retry_count == m.attempts - 1
        return got

    @rule(batch=claims)
    def ack(self, batch):
        for m in batch:
            holder = self.live.get(m.message.job_id) == m.lease_token
            with self.store.write() as c:
                ok = self.queue.ack(c, m)
            assert ok == holder, "only the delivery holding the lease may ack"
            if ok:
                self.acked.add(m.message.job_id)
                self.live[m.message.job_id] = None

    @rule(batch=claims, count=st.booleans(), delay=st.sampled_from([0.0, 10.0, 120.0]))
    def retry(self, batch, count, delay):
        for m in batch:
            holder = self.live.get(m.message.job_id) == m.lease_token
            with self.store.write() as c:
                state = self.queue.retry(c, m, "boom", delay=delay, count_attempt=count)
            assert (state != "stale") == holder, "a stale delivery changed the message"
            if holder:
                self.live[m.message.job_id] = None

    @rule(seconds=st.sampled_from([1.0, 30.0, LEASE + 1, 1000.0]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def requeue_dead(self):
        self.queue.requeue_dead(None)

    @invariant()
    def every_message_in_exactly_one_state(self):
        rows = self.store.read("SELECT job_id, state, attempts, max_attempts, lease_token FROM sync_queue")
        assert {r["job_id"] for r in rows} == self.jobs and len(rows) == len(self.jobs)
        for r in rows:
            assert r["state"] in ("ready", "leased", "done", "dead")
            assert 0 <= r["attempts"] <= r["max_attempts"]
            assert (r["lease_token"] is not None) == (r["state"] == "leased")
            assert (r["state"] == "done") == (r["job_id"] in self.acked)
        dead = {r["job_id"] for r in rows if r["state"] == "dead"}
        failed = {r[0] for r in self.store.read("SELECT id FROM sync_jobs WHERE status = 'failed'")}
        assert dead <= failed


QueueMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestQueueStateMachine = QueueMachine.TestCase


@given(st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("1e9"), places=6, allow_nan=False))
def test_micros_of_a_decimal_string_is_exact(d):
    text = format(d, "f")
    assert money.to_micros(text) == int(d * 1_000_000)


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=99))
def test_cents_strings_become_exact_micros(units, cents):
    assert money.to_micros(f"{units}.{cents:02d}") == units * 1_000_000 + cents * 10_000


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_floats_go_through_their_shortest_repr(x):
    # the platform's double is parsed as the decimal it prints as, never its binary expansion
    assert money.to_micros(x) == money.to_micros(repr(x))
    assert money.to_decimal(x) == Decimal(repr(x))


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_int64_strings_round_trip(n):
    assert money.to_int(str(n)) == n


def test_known_values():
    assert money.to_micros("14.35") == 14_350_000
    assert money.to_micros(120.5) == 120_500_000
    assert money.to_micros(0.1 + 0.2) == 300_000  # repr 0.30000000000000004 rounds to the micro
    assert money.to_micros(None) == 0 and money.to_int("") == 0
    assert money.minor_units_per_unit("jpy") == 1 and money.minor_units_per_unit("USD") == 100


@given(
    st.lists(st.text(), min_size=6, max_size=6),
    st.integers(min_value=0, max_value=2**40),
    st.sampled_from(list(JobType)),
    st.sampled_from(list(Priority)),
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_a_message_is_written_as_json_dumps_writes_it(texts, retries, job_type, priority, start):
    """The queue body ``dumps`` writes directly is json.dumps's text, byte for byte (and
    reads back as the same message)."""
    job_id, connection, org, platform, account, created = texts
    start = start.replace(tzinfo=UTC, microsecond=start.microsecond // 1000 * 1000)  # as written
    msg = SyncJobMessage(
        job_id,
        connection,
        org,
        platform,
        account,
        job_type,
        SyncWindow(start, start + timedelta(days=3)),
        retries,
        created,
        priority,
    )
    assert msg.dumps() == json.dumps(msg.to_json(), separators=(",", ":"), allow_nan=False)
    if job_id and connection:
        assert SyncJobMessage.loads(msg.dumps()) == msg
