"""The durable job queue (the ``sync_queue`` table of the control plane).

Replaces Cloudflare Queues. A message is ``ready`` (claimable once ``visible_at`` has
passed), ``leased`` (invisible until its lease expires at ``visible_at``), ``done`` or
``dead``. Because lease expiry is part of the claim condition, a crashed consumer's
messages come back by themselves: there is no sweeper that could itself die. Every
delivery gets a fresh ``lease_token``; ack, retry and heartbeat are fenced by it, so a
consumer whose lease expired and was re-claimed changes nothing when it finally answers.
Nothing is deleted: acked messages stay ``done``, failures go to ``dead`` with the error.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from clearlift_cli.errors import Conflict, NotFound, UsageError
from clearlift_cli.models import ClaimedMessage, MalformedMessage, SyncJobMessage
from clearlift_cli.redact import redact
from clearlift_cli.timeutil import iso_z

if TYPE_CHECKING:
    from .scheduling import Store

log = logging.getLogger("clearlift.queue")

DEFAULT_MAX_ATTEMPTS = 4  # 1 + 3 retries
# Messages per multi-row INSERT: 100 rows of 9 parameters stay under 999, the oldest
# SQLite's limit on bound parameters.
ROWS_PER_INSERT = 100
BACKOFF_BASE_SECONDS = 30.0
BACKOFF_CAP_SECONDS = 900.0
# How the error of a message deferred by a rate limit begins (``Rate limited by google; ...``).
RATE_LIMIT_NOTE = "Rate limited by"

# Called inside the transaction that dead-letters messages, with (connection, [(job_id,
# error)]), so job rows fail with their messages (default: ``Store.fail_jobs``).
DeadLetterHook = Callable[[Any, list[tuple[str, str]]], None]


@dataclass(frozen=True)
class QueueStats:
    ready_high: int
    ready_normal: int
    delayed: int
    leased: int
    dead: int
    done: int
    oldest_ready_age_s: float | None


def _take_claim_sequence(c: Any, n: int) -> int:
    """Reserve ``n`` numbers of the store's claim sequence inside the claiming transaction
    ``c``; returns the last. The counter row is locked until the claim commits, so claims
    from every host are numbered in the order they commit."""
    row = c.execute(
        "INSERT INTO clearlift_meta (key, value) VALUES ('claim_seq', CAST(? AS TEXT)) "
        "ON CONFLICT (key) DO UPDATE SET "
        "value = CAST(CAST(clearlift_meta.value AS BIGINT) + ? AS TEXT) RETURNING value",
        (n, n),
    ).fetchone()
    return int(row[0])


def backoff_seconds(attempts: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter in its upper half: 30 s, 60 s, 120 s, ... capped."""
    base = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * (2 ** max(0, attempts - 1)))
    r = (rng or random).random()
    return base / 2 + r * base / 2


def decode_message(body: str, job_id: str) -> SyncJobMessage:
    """The message in a queue row; MalformedMessage when it cannot be run as that row's job."""
    msg = SyncJobMessage.loads(body)
    if msg.job_id != job_id:
        raise MalformedMessage(f"job_id {msg.job_id[:40]!r} is not its queue row's job {job_id!r}")
    return msg


class Queue:
    """The queue on the store's control plane (SQLite or PostgreSQL)."""

    def __init__(self, store: Store, *, on_dead: DeadLetterHook | None = None):
        self.store = store
        self.clock = store.clock
        self.on_dead: DeadLetterHook = on_dead or store.fail_jobs

    # -- producing ------------------------------------------------------------------------

    def enqueue(
        self,
        c: Any,
        message: SyncJobMessage,
        *,
        delay: float = 0.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> int:
        """Add a message inside the caller's write transaction ``c`` (so the job row and
        its message commit together). Raises Conflict if the connection has a live one."""
        now = self.clock.time()
        stamp = iso_z(self.clock.now())
        try:
            cur = c.execute(
                "INSERT INTO sync_queue (job_id, connection_id, platform, body, priority, state, "
                "visible_at, attempts, max_attempts, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'ready', ?, 0, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
                (
                    message.job_id,
                    message.connection_id,
                    message.platform,
                    message.dumps(),
                    message.priority.rank,
                    now + delay,
                    max_attempts,
                    stamp,
                    stamp,
                ),
            )
            row = cur.fetchone()
        except self.store.integrity_errors:
            row = None
        # DO NOTHING rather than an error: PostgreSQL would abort the caller's transaction
        if row is None:
            raise Conflict(
                f"connection {message.connection_id} already has a queued or running job"
            ) from None
        return int(row[0])

    def enqueue_many(
        self,
        c: Any,
        messages: list[SyncJobMessage],
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> int:
        """Add ``messages`` inside the caller's write transaction, ``ROWS_PER_INSERT`` per
        statement; returns how many were added (fewer when a connection already had a live
        message: the caller decides what that means)."""
        now = self.clock.time()
        stamp = iso_z(self.clock.now())
        added = 0
        for i in range(0, len(messages), ROWS_PER_INSERT):
            part = messages[i : i + ROWS_PER_INSERT]
            params: list[Any] = []
            for m in part:
                params += (
                    m.job_id,
                    m.connection_id,
                    m.platform,
                    m.dumps(),
                    m.priority.rank,
                    now,
                    max_attempts,
                    stamp,
                    stamp,
                )
            marks = ", ".join("(?, ?, ?, ?, ?, 'ready', ?, 0, ?, ?, ?)" for _ in part)
            cur = c.execute(
                "INSERT INTO sync_queue (job_id, connection_id, platform, body, priority, state, "
                f"visible_at, attempts, max_attempts, created_at, updated_at) VALUES {marks} "
                "ON CONFLICT DO NOTHING",
                params,
            )
            added += int(cur.rowcount)
        return added

    # -- consuming ------------------------------------------------------------------------

    def claim(
        self,
        owner: str,
        *,
        limit: int,
        lease_seconds: float,
        only_job: str | None = None,
    ) -> list[ClaimedMessage]:
        """Lease up to ``limit`` available messages to ``owner`` in one transaction,
        ``high`` before ``normal``, oldest first. Messages whose lease expired after their
        last allowed attempt are dead-lettered instead of delivered again."""
        now = self.clock.time()
        now_iso = iso_z(self.clock.now())
        with self.store.write() as c:
            self._dead_letter_exhausted(c, now, now_iso)
            rows = self._lease(c, owner, limit, now + lease_seconds, only_job, now, now_iso)
            return self._deliveries(c, rows)

    def _dead_letter_exhausted(self, c: Any, now: float, now_iso: str) -> None:
        """Dead-letter the messages whose lease expired on their last allowed attempt."""
        # The IN term lets SQLite use the partial claim index (live messages only);
        # without it this scans every message ever queued, on every claim.
        exhausted = c.execute(
            "UPDATE sync_queue SET state = 'dead', finished_at = ?, updated_at = ?, "
            "last_error = coalesce(last_error || ' (then ', '(') || "
            "'lease expired on the last attempt: consumer crashed or timed out)', lease_token = NULL "
            "WHERE state = 'leased' AND visible_at <= ? "
            "AND attempts >= max_attempts "
            "RETURNING job_id, last_error",
            (now_iso, now_iso, now),
        ).fetchall()
        if exhausted:
            self.on_dead(c, [(r[0], r[1]) for r in exhausted])

    def _lease(
        self,
        c: Any,
        owner: str,
        limit: int,
        until: float,
        only_job: str | None,
        now: float,
        now_iso: str,
    ) -> list[Any]:
        """Lease up to ``limit`` visible messages (of no paused platform; only ``only_job``
        when given) to ``owner`` until ``until``; their rows, as updated."""
        paused = [
            r[0] for r in c.execute("SELECT platform FROM clearlift_platform_pauses WHERE until > ?", (now,))
        ]
        skip, extra = "", list(paused)
        if paused:
            skip = f" AND platform NOT IN ({','.join('?' * len(paused))})"
        if only_job:
            skip += " AND job_id = ?"
            extra.append(only_job)
        token = uuid.uuid4().hex
        return c.execute(
            f"""
            UPDATE sync_queue
               SET state = 'leased', lease_owner = ?,
                   lease_token = CAST(? AS TEXT) || '-' || CAST(id AS TEXT),
                   attempts = attempts + 1, visible_at = ?, updated_at = ?
             WHERE id IN (SELECT id FROM sync_queue
                           WHERE state IN ('ready', 'leased') AND visible_at <= ?{skip}
                           ORDER BY priority, visible_at, id LIMIT ?{self.store.skip_locked})
         RETURNING id, job_id, body, attempts, max_attempts, lease_token, last_error, priority, visible_at
            """,
            (owner, token, until, now_iso, now, *extra, limit),
        ).fetchall()

    def _deliveries(self, c: Any, rows: list[Any]) -> list[ClaimedMessage]:
        """The leased rows decoded, in priority then queue order, each numbered in claim
        order; a row whose body cannot be decoded is dead-lettered instead."""
        last_seq = _take_claim_sequence(c, len(rows)) if rows else 0
        out = []
        ordered = sorted(rows, key=lambda r: (r["priority"], r["id"]))
        for seq, r in enumerate(ordered, start=last_seq - len(rows) + 1):
            try:
                msg = decode_message(r["body"], r["job_id"])
            except MalformedMessage as exc:
                # Dead-lettered alone, in this same commit: decoding again cannot help,
                # and it must not cost the rest of the batch an attempt.
                reason = redact(f"malformed queue message: {exc}")
                self._dead(c, r["id"], reason)
                log.warning("queue message %s (job %s) dead-lettered: %s", r["id"], r["job_id"], reason)
                continue
            out.append(
                ClaimedMessage(
                    id=r["id"],
                    message=replace(msg, retry_count=r["attempts"] - 1),
                    attempts=r["attempts"],
                    max_attempts=r["max_attempts"],
                    lease_token=r["lease_token"],
                    last_error=r["last_error"],
                    claim_seq=seq,
                )
            )
        return out

    def heartbeat(self, claimed: ClaimedMessage, lease_seconds: float) -> bool:
        """Extend the lease; False when this delivery no longer holds it."""
        with self.store.write() as c:
            n = c.execute(
                "UPDATE sync_queue SET visible_at = ?, updated_at = ? "
                "WHERE id = ? AND lease_token = ? AND state = 'leased'",
                (self.clock.time() + lease_seconds, iso_z(self.clock.now()), claimed.id, claimed.lease_token),
            ).rowcount
        return n == 1

    def ack(self, c: Any, claimed: ClaimedMessage) -> bool:
        """Mark done inside the caller's transaction; False (and no change) if fenced out."""
        now_iso = iso_z(self.clock.now())
        n = c.execute(
            "UPDATE sync_queue SET state = 'done', finished_at = ?, updated_at = ?, lease_token = NULL "
            "WHERE id = ? AND lease_token = ? AND state = 'leased'",
            (now_iso, now_iso, claimed.id, claimed.lease_token),
        ).rowcount
        return n == 1

    def holds_lease_now(self, claimed: ClaimedMessage) -> bool:
        """Whether this delivery holds its lease (a read, outside any transaction)."""
        return bool(
            self.store.read(
                "SELECT 1 FROM sync_queue WHERE id = ? AND lease_token = ? AND state = 'leased'",
                (claimed.id, claimed.lease_token),
            )
        )

    def can_enqueue(self, c: Any, message: SyncJobMessage) -> bool:
        """Whether ``message``'s connection has no live message (inside ``c``)."""
        return (
            c.execute(
                "SELECT 1 FROM sync_queue WHERE connection_id = ? AND state IN ('ready', 'leased')",
                (message.connection_id,),
            ).fetchone()
            is None
        )

    def revive(self, c: Any, message: SyncJobMessage) -> bool:
        """The pending job still has its old message, done or dead: make that one ready
        again with the new body (its job id is unique in the queue). False when the
        connection has another live message."""
        now = self.clock.time()
        stamp = iso_z(self.clock.now())
        return (
            c.execute(
                "UPDATE sync_queue SET state = 'ready', body = ?, priority = ?, visible_at = ?, attempts = 0, "
                "lease_owner = NULL, lease_token = NULL, last_error = NULL, finished_at = NULL, updated_at = ? "
                "WHERE job_id = ? AND state IN ('done', 'dead') AND NOT EXISTS (SELECT 1 FROM sync_queue q "
                "WHERE q.connection_id = ? AND q.state IN ('ready', 'leased'))",
                (message.dumps(), message.priority.rank, now, stamp, message.job_id, message.connection_id),
            ).rowcount
            == 1
        )

    def holds_lease(self, c: Any, claimed: ClaimedMessage) -> bool:
        """Whether this delivery holds its lease, inside the caller's transaction ``c``; the
        row stays locked (PostgreSQL) until ``c`` ends, so a write by id after it is fenced
        too: a claim by another host waits, or has committed and is seen here."""
        return (
            c.execute(
                f"SELECT 1 FROM sync_queue WHERE id = ? AND lease_token = ? AND state = 'leased'{self.store.for_update}",
                (claimed.id, claimed.lease_token),
            ).fetchone()
            is not None
        )

    def retry(
        self,
        c: Any,
        claimed: ClaimedMessage,
        error: str,
        *,
        delay: float | None = None,
        count_attempt: bool = True,
    ) -> str:
        """Put the message back (inside the caller's transaction). With ``count_attempt``
        False (rate limits, shutdown) the delivery does not use up an attempt. Returns the
        new state: ``ready``, ``dead``, or ``stale`` when fenced out (nothing changed)."""
        error = redact(error)
        now = self.clock.time()
        now_iso = iso_z(self.clock.now())
        # the row stays locked (PostgreSQL) until the caller commits: the write below is by id
        row = c.execute(
            "SELECT attempts, max_attempts FROM sync_queue WHERE id = ? AND lease_token = ? "
            f"AND state = 'leased'{self.store.for_update}",
            (claimed.id, claimed.lease_token),
        ).fetchone()
        if row is None:
            return "stale"
        attempts, max_attempts = row
        if count_attempt and attempts >= max_attempts:
            self._dead(c, claimed.id, error, job_error=f"{error} (gave up after {attempts} attempts)")
            return "dead"
        if delay is None:
            delay = backoff_seconds(attempts)
        c.execute(
            "UPDATE sync_queue SET state = 'ready', visible_at = ?, last_error = ?, updated_at = ?, "
            "lease_token = NULL, lease_owner = NULL, attempts = attempts - ? WHERE id = ?",
            (now + delay, error, now_iso, 0 if count_attempt else 1, claimed.id),
        )
        return "ready"

    def dead_letter(self, c: Any, claimed: ClaimedMessage, error: str) -> bool:
        """Fail the message now (permanent error), fenced by its lease. The caller records
        the failure on the job itself (it knows why); ``on_dead`` is not called."""
        ok = self.holds_lease(c, claimed)
        if ok:
            self._dead(c, claimed.id, redact(error), notify=False)
        return ok

    def _dead(
        self,
        c: Any,
        message_id: int,
        error: str,
        *,
        notify: bool = True,
        job_error: str | None = None,
    ) -> None:
        now_iso = iso_z(self.clock.now())
        row = c.execute(
            "UPDATE sync_queue SET state = 'dead', last_error = ?, finished_at = ?, updated_at = ?, "
            "lease_token = NULL WHERE id = ? RETURNING job_id",
            (error, now_iso, now_iso, message_id),
        ).fetchone()
        if row is not None and notify:
            self.on_dead(c, [(row[0], job_error or error)])

    def withdraw_unclaimed(self, job_id: str) -> bool:
        """Take back a job nobody has claimed yet (its message still ready, never
        delivered): the message and the pending job row go, as if never enqueued. False,
        and nothing changed, once any consumer has claimed it."""
        with self.store.write() as c:
            gone = (
                c.execute(
                    "DELETE FROM sync_queue WHERE job_id = ? AND state = 'ready' AND attempts = 0",
                    (job_id,),
                ).rowcount
                == 1
            )
            if gone:
                self.store.withdraw_job(c, job_id)
        return gone

    def release_deferred(self, c: Any, platform: str) -> int:
        """Make ``platform``'s messages deferred by a rate limit claimable now (inside the
        caller's transaction); the number released."""
        now = self.clock.time()
        return c.execute(
            "UPDATE sync_queue SET visible_at = ?, updated_at = ? WHERE state = 'ready' AND platform = ? "
            "AND visible_at > ? AND last_error LIKE ?",
            (now, iso_z(self.clock.now()), platform, now, RATE_LIMIT_NOTE + " %"),
        ).rowcount

    # -- inspecting and re-queueing -----------------------------------------------------------

    def stats(self) -> QueueStats:
        now = self.clock.time()
        row = self.store.read(
            """
            SELECT
              count(*) FILTER (WHERE state = 'ready' AND visible_at <= ? AND priority = 0),
              count(*) FILTER (WHERE state = 'ready' AND visible_at <= ? AND priority = 1),
              count(*) FILTER (WHERE state = 'ready' AND visible_at > ?),
              count(*) FILTER (WHERE state = 'leased'),
              count(*) FILTER (WHERE state = 'dead'),
              count(*) FILTER (WHERE state = 'done'),
              min(CASE WHEN state = 'ready' AND visible_at <= ? THEN visible_at END)
            FROM sync_queue
            """,
            (now, now, now, now),
        )[0]
        oldest = None if row[6] is None else max(0.0, now - row[6])
        ready_high, ready_normal, delayed, leased, dead, done = (int(v or 0) for v in row[:6])
        return QueueStats(ready_high, ready_normal, delayed, leased, dead, done, oldest_ready_age_s=oldest)

    def depth(self, *, lease_grace_seconds: float = 60.0) -> dict[tuple[str, str], int]:
        """Live and dead messages by (state, priority): state is ``ready`` (claimable now),
        ``delayed`` (waiting for a retry or a rate limit), ``leased`` (held by a consumer),
        ``expired`` (leased, the lease past due by more than the grace: its consumer died or
        hangs; the next claim takes it back) or ``dead``. Every key is present."""
        now = self.clock.time()
        out = {
            (s, p): 0 for s in ("ready", "delayed", "leased", "expired", "dead") for p in ("high", "normal")
        }
        for r in self.store.read(
            """
            SELECT CASE WHEN state = 'dead' THEN 'dead'
                        WHEN state = 'leased' AND visible_at < ? THEN 'expired'
                        WHEN state = 'leased' THEN 'leased'
                        WHEN visible_at <= ? THEN 'ready' ELSE 'delayed' END,
                   priority, count(*)
              FROM sync_queue WHERE state IN ('ready', 'leased', 'dead') GROUP BY 1, 2
            """,
            (now - lease_grace_seconds, now),
        ):
            out[(r[0], "high" if r[1] == 0 else "normal")] += int(r[2])
        return out

    def dead_letters(self, limit: int = 100) -> list[Any]:
        return self.store.read(
            "SELECT id, job_id, connection_id, platform, attempts, last_error, finished_at "
            "FROM sync_queue WHERE state = 'dead' ORDER BY finished_at DESC, id DESC LIMIT ?",
            (limit,),
        )

    def requeue_dead(self, ref: str | None = None) -> Requeued:
        """Re-queue one dead letter (by message id or job id) or, with None, all of them;
        attempts start again from 0. With None, a dead letter that cannot be re-queued is
        skipped and reported (``Requeued.skipped``); a single one raises instead."""
        now = self.clock.time()
        now_iso = iso_z(self.clock.now())
        result = Requeued()
        with self.store.write() as c:
            if ref is None:
                rows = c.execute(
                    "SELECT id, job_id, connection_id, body FROM sync_queue WHERE state = 'dead' ORDER BY id"
                ).fetchall()
            else:
                rows = c.execute(
                    "SELECT id, job_id, connection_id, body FROM sync_queue WHERE state = 'dead' "
                    "AND (job_id = ? OR CAST(id AS TEXT) = ?)",
                    (ref, ref),
                ).fetchall()
                if not rows:
                    raise NotFound(f"no dead letter {ref!r} (see `clearlift queue dead`)")
            for r in rows:
                try:
                    decode_message(r["body"], r["job_id"])
                except MalformedMessage as exc:
                    reason = redact(
                        f"its message is malformed ({exc}); `clearlift sync CONNECTION --now` queues a new job"
                    )
                    if ref is not None:
                        raise UsageError(f"dead letter {r['id']} cannot be re-queued: {reason}") from None
                    result.skipped.append(SkippedDeadLetter(r["id"], r["job_id"], r["connection_id"], reason))
                    continue
                # a savepoint per row: PostgreSQL aborts the whole transaction on an error
                c.execute("SAVEPOINT requeue")
                try:
                    c.execute(
                        "UPDATE sync_queue SET state = 'ready', attempts = 0, visible_at = ?, "
                        "updated_at = ?, finished_at = NULL, lease_owner = NULL, lease_token = NULL "
                        "WHERE id = ?",
                        (now, now_iso, r["id"]),
                    )
                    c.execute("RELEASE SAVEPOINT requeue")
                except self.store.integrity_errors:
                    c.execute("ROLLBACK TO SAVEPOINT requeue")
                    c.execute("RELEASE SAVEPOINT requeue")
                    reason = f"connection {r['connection_id']} already has a queued or running job"
                    if ref is not None:
                        raise Conflict(reason) from None
                    result.skipped.append(SkippedDeadLetter(r["id"], r["job_id"], r["connection_id"], reason))
                    continue
                self.store.requeue_job(c, r["job_id"])
                result.requeued.append(r["job_id"])
        return result


@dataclass(frozen=True)
class SkippedDeadLetter:
    message_id: int
    job_id: str
    connection_id: str
    reason: str


@dataclass
class Requeued:
    """What ``requeue_dead`` did: job ids re-queued, and dead letters left as they were."""

    requeued: list[str] = field(default_factory=list)
    skipped: list[SkippedDeadLetter] = field(default_factory=list)


__all__ = [
    "Queue",
    "QueueStats",
    "RATE_LIMIT_NOTE",
    "Requeued",
    "SkippedDeadLetter",
    "backoff_seconds",
    "decode_message",
]
