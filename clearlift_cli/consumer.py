"""The consumer: claimed jobs become exact rows in the warehouse.

``Consumer.run_one`` is one job from claim to ending (huey's single iteration); ``run``
claims batches and runs them on a thread pool until the queue is empty or a limit is
reached. A failing job never stops the loop. Per job, as the system it replaces did:
job ``running`` -> the sync (``job.JobSync``: decrypt, fetch slice by slice, each slice
committed to the warehouse atomically and recorded as coverage) -> job ``completed`` +
connection ``last_synced_at`` + onboarding, together with the queue ack in one store
transaction, fenced by the lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time as _time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import NamedTuple

from clearlift_cli.crypto import FieldCipher
from clearlift_cli.errors import (
    AuthRevoked,
    ClearliftError,
    ConfigError,
    CryptoError,
    Interrupted,
    NotFound,
    PermanentError,
    RateLimited,
    StoreError,
    TransientError,
    WarehouseError,
)
from clearlift_cli.job import JobSync, ProgressHook
from clearlift_cli.models import ClaimedMessage, Connection, MessageState, Outcome, SyncJobMessage
from clearlift_cli.platforms.deadline import JobScope, job_scope
from clearlift_cli.redact import redact
from clearlift_cli.settings import Settings
from clearlift_cli.store import Store
from clearlift_cli.store.queue import RATE_LIMIT_NOTE, Queue
from clearlift_cli.warehouse import open_warehouse
from clearlift_cli.warehouse.base import Warehouse

log = logging.getLogger("clearlift.consume")

DEFAULT_CONCURRENCY = 8
DEFAULT_LEASE_SECONDS = 300.0
# After --max-seconds or SIGTERM, running jobs have this long to finish before they are cut.
DEFAULT_STOP_GRACE_SECONDS = 30.0
# A job deferred by a rate limit waits at least this long (its hint, clamped to
# errors.RETRY_HINT_FLOOR/CEILING_SECONDS, when longer).
MIN_DEFERRAL_SECONDS = 30.0


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    connection_id: str
    platform: str
    status: Outcome
    records: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class ConsumeResult:
    outcomes: list[JobOutcome] = field(default_factory=list)
    stopped_by: str = "empty"  # empty | max-jobs | max-seconds | signal

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out

    def summary(self) -> dict:
        return {
            "jobs": len(self.outcomes),
            **self.counts(),
            "records": sum(o.records for o in self.outcomes),
            "stopped_by": self.stopped_by,
        }


class _Ending(NamedTuple):
    """What a delivery's ending wrote to the store, before it is timed and logged."""

    status: Outcome
    records: int = 0
    error: str | None = None


@dataclass
class _Run:
    """The state of one ``Consumer.run``: its limits, what it claimed, what still runs."""

    max_jobs: int | None
    max_seconds: float | None
    concurrency: int
    only_job: str | None
    stop_grace: float
    started: float  # monotonic
    result: ConsumeResult = field(default_factory=ConsumeResult)
    # A job stays here until it has ended, so the heartbeat renews its lease all along.
    in_flight: dict[Future, ClaimedMessage] = field(default_factory=dict)
    # Each job's future as it ends: the loop waits on this one queue, not on every future
    # in flight (concurrent.futures.wait installs and removes a waiter on each, per turn).
    ended: SimpleQueue[Future] = field(default_factory=SimpleQueue)
    claimed_total: int = 0
    claiming: bool = True
    cut_at: float | None = None  # when running jobs are cut (monotonic)

    def stop_reason(self, now: float, signalled: bool) -> str | None:
        if signalled:
            return "signal"
        if self.max_seconds is not None and now - self.started >= self.max_seconds:
            return "max-seconds"
        if self.max_jobs is not None and self.claimed_total >= self.max_jobs:
            return "max-jobs"
        return None

    def room(self) -> int:
        """How many more jobs may be claimed now."""
        free = self.concurrency - len(self.in_flight)
        if self.max_jobs is not None:
            free = min(free, self.max_jobs - self.claimed_total)
        return free


def _ended(ended: SimpleQueue[Future], timeout: float) -> list[Future]:
    """The futures that have ended: waits up to ``timeout`` for the first, then takes
    whatever else has ended meanwhile without waiting."""
    try:
        futures = [ended.get(timeout=timeout)]
    except Empty:
        return []
    while True:
        try:
            futures.append(ended.get_nowait())
        except Empty:
            return futures


class Consumer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        warehouse: Warehouse | None = None,
        owner: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        on_progress: ProgressHook | None = None,
    ):
        self.settings = settings
        self.store = store
        self.clock = store.clock
        self.queue = Queue(store)
        self._warehouse = warehouse
        self._warehouse_lock = threading.Lock()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.lease_seconds = lease_seconds
        self.on_progress = on_progress
        self._stop = threading.Event()
        self._cut_now = threading.Event()  # a second stop(): no more grace
        self._cutting = threading.Event()
        self._scopes: dict[str, JobScope] = {}  # job id -> the scope of its running job
        self._scopes_lock = threading.Lock()
        self._cipher: FieldCipher | None = None

    # -- resources ------------------------------------------------------------------------

    @property
    def warehouse(self) -> Warehouse:
        with self._warehouse_lock:
            if self._warehouse is None:
                self._warehouse = open_warehouse(
                    self.settings.warehouse_url, pg_limits=self.settings.pg_limits()
                )
            return self._warehouse

    @property
    def cipher(self) -> FieldCipher:
        if self._cipher is None:
            self._cipher = FieldCipher(self.settings.key_bytes())
        return self._cipher

    def close(self) -> None:
        """Close the warehouse if this consumer opened one."""
        if self._warehouse is not None:
            self._warehouse.close()

    def stop(self) -> None:
        """SIGTERM: claim no more; running jobs get the stop grace to finish. A second call
        cuts them now."""
        if self._stop.is_set():
            self._cut_now.set()
        self._stop.set()

    # -- the loop -------------------------------------------------------------------------

    def run(
        self,
        *,
        max_jobs: int | None = None,
        max_seconds: float | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        only_job: str | None = None,
        stop_grace: float = DEFAULT_STOP_GRACE_SECONDS,
    ) -> ConsumeResult:
        """Claim and run jobs until the queue is empty, ``max_jobs`` were claimed,
        ``max_seconds`` have passed or ``stop()`` is called; then claim no more. After
        ``max_seconds`` or ``stop()``, running jobs have ``stop_grace`` seconds to finish;
        then their requests are cut and they go back to the queue unharmed (``released``),
        so the run ends within a bounded time whatever a platform does."""
        run = _Run(max_jobs, max_seconds, concurrency, only_job, stop_grace, started=_time.monotonic())
        hb_stop = threading.Event()
        hb = threading.Thread(target=self._heartbeat_loop, args=(run.in_flight, hb_stop), daemon=True)
        hb.start()
        try:
            with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="job") as pool:
                while self._turn(run, pool):
                    pass
        finally:
            hb_stop.set()
            hb.join(timeout=5)
        return run.result

    def _turn(self, run: _Run, pool: Executor) -> bool:
        """One turn of the loop: note a stop, claim what there is room for, cut running jobs
        once the grace is over, collect the jobs that ended. False: the run is over."""
        now = _time.monotonic()
        self._note_stop(run, now)
        if self._cut_now.is_set():
            run.cut_at = now
        if run.claiming:
            if not self._claim(run, pool):
                run.result.stopped_by = "empty"
                return False
        elif not run.in_flight:
            return False
        if run.cut_at is not None and now >= run.cut_at:
            self._cut_running()
        if run.in_flight:
            tick = 1.0 if run.cut_at is None else min(1.0, max(0.05, run.cut_at - now))
            for fut in _ended(run.ended, tick):
                run.result.outcomes.append(self._collect(fut, run.in_flight.pop(fut)))
        return True

    def _note_stop(self, run: _Run, now: float) -> None:
        """Claim no more once a limit is reached or a stop asked; after a stop or
        ``max_seconds``, start the running jobs' grace."""
        reason = run.stop_reason(now, self._stop.is_set())
        if reason is not None and run.claiming:
            run.claiming = False
            run.result.stopped_by = reason
        if reason in ("signal", "max-seconds") and run.cut_at is None:
            run.cut_at = now + max(0.0, run.stop_grace)
            if run.in_flight:
                log.info(
                    "stopping (%s): %d running job(s) have %gs to finish",
                    reason,
                    len(run.in_flight),
                    run.stop_grace,
                )

    def _claim(self, run: _Run, pool: Executor) -> bool:
        """Claim as many jobs as there is room for and start them. False when there was
        room, the queue had nothing and no job runs: the queue is empty."""
        free = run.room()
        if free <= 0:
            return True
        batch = self.queue.claim(
            self.owner, limit=free, lease_seconds=self.lease_seconds, only_job=run.only_job
        )
        for claimed in batch:
            fut = pool.submit(self._run_cuttable, claimed)
            run.in_flight[fut] = claimed
            fut.add_done_callback(run.ended.put)
        run.claimed_total += len(batch)
        return bool(batch or run.in_flight)

    def _run_cuttable(self, claimed: ClaimedMessage) -> JobOutcome:
        """``run_one`` in a job scope that ``_cut_running`` can cut."""
        scope = JobScope()
        job_id = claimed.message.job_id
        with self._scopes_lock:
            self._scopes[job_id] = scope
        if self._cutting.is_set():
            scope.cut()
        try:
            with job_scope(scope):
                return self.run_one(claimed)
        finally:
            with self._scopes_lock:
                self._scopes.pop(job_id, None)

    def _cut_running(self) -> None:
        """Cut every running job: its request in flight ends now, its next one raises
        Interrupted, and run_one releases it."""
        if not self._cutting.is_set():
            self._cutting.set()
            log.warning(
                "stop grace over: cutting %d running job(s); they go back to the queue", len(self._scopes)
            )
        with self._scopes_lock:
            scopes = list(self._scopes.values())
        for scope in scopes:
            scope.cut()

    def _collect(self, fut: Future, claimed: ClaimedMessage) -> JobOutcome:
        try:
            return fut.result()
        except BaseException as exc:  # run_one handles everything; this is a last guard
            log.exception("job %s crashed the worker: %s", claimed.message.job_id, redact(exc))
            return JobOutcome(
                claimed.message.job_id,
                claimed.message.connection_id,
                claimed.message.platform,
                Outcome.RETRY,
                error=redact(exc),
            )

    def _heartbeat_loop(self, in_flight: dict, stop: threading.Event) -> None:
        interval = max(0.5, self.lease_seconds / 3)
        while not stop.wait(interval):
            for claimed in list(in_flight.values()):
                try:
                    if not self.queue.heartbeat(claimed, self.lease_seconds):
                        log.warning(
                            "job %s lost its lease; its result will be discarded", claimed.message.job_id
                        )
                except ClearliftError as exc:
                    log.warning("heartbeat failed: %s", exc)

    # -- one job --------------------------------------------------------------------------

    def run_one(self, claimed: ClaimedMessage) -> JobOutcome:
        """One claimed job to its ending, written to the store and logged."""
        t0 = _time.monotonic()
        ending = self._deliver(claimed)
        return _report(claimed.message, ending, _time.monotonic() - t0)

    def _deliver(self, claimed: ClaimedMessage) -> _Ending:
        msg = claimed.message
        try:
            conn = self.store.get_connection(msg.connection_id)
        except NotFound:
            return self._fail_now(claimed, "Connection no longer exists; job dropped", dropped=True)
        if not conn.is_active:
            return self._fail_now(
                claimed,
                "Connection was paused (is_active = 0); job dropped",
                dropped=True,
                touch_connection=False,
            )
        previous_status = conn.sync_status
        try:
            if not self.store.start_job(msg.job_id, conn.id):
                return self._already_finished(claimed)
            records = self._sync(claimed, conn)
        except RateLimited as exc:
            return self._defer(claimed, conn, exc, previous_status)
        except Interrupted as exc:
            return self._release(claimed, str(exc), previous_status)
        except AuthRevoked as exc:
            return self._auth_failed(claimed, conn, exc)
        except (PermanentError, CryptoError, ConfigError, NotFound) as exc:
            return self._fail_now(claimed, str(exc))
        except (TransientError, WarehouseError, StoreError) as exc:
            return self._retry(claimed, str(exc), previous_status)
        except Exception as exc:  # an unexpected bug: retry with backoff, never kill the loop
            log.exception("unexpected error in job %s", msg.job_id)
            return self._retry(claimed, f"unexpected error: {type(exc).__name__}: {exc}", previous_status)
        return self._complete(claimed, conn, records)

    def _sync(self, claimed: ClaimedMessage, conn: Connection) -> int:
        job = JobSync(
            self.settings,
            self.store,
            self.cipher,
            lambda: self.warehouse,
            claimed,
            conn,
            on_progress=self.on_progress,
        )
        return job.run()

    # -- endings (each one store transaction, fenced by the lease) -------------------------

    def _complete(self, claimed: ClaimedMessage, conn: Connection, records: int) -> _Ending:
        if not self.store.complete_job(self.queue, claimed, conn, records):
            return _Ending(
                Outcome.STALE, records, "lease lost before completion; another consumer owns the job"
            )
        return _Ending(Outcome.COMPLETED, records)

    def _already_finished(self, claimed: ClaimedMessage) -> _Ending:
        """The job row is completed or failed already (its ending was written, then the
        process died before the message was acked): ack it, run nothing again."""
        with self.store.write() as c:
            self.queue.ack(c, claimed)
        return _Ending(Outcome.STALE, 0, "the job had already finished; its message is acknowledged")

    def _auth_failed(self, claimed: ClaimedMessage, conn: Connection, exc: AuthRevoked) -> _Ending:
        flagged = self.store.record_auth_failure(
            conn.id, reason=exc.reason, definitive=exc.definitive, prefix="Authentication failed"
        )
        text = str(exc).rstrip(". ")
        if flagged:
            text += " — the connection needs to be re-authorised (reconnect the account)"
        return self._fail_now(claimed, text, touch_connection=False)

    def _fail_now(
        self, claimed: ClaimedMessage, error: str, *, dropped: bool = False, touch_connection: bool = True
    ) -> _Ending:
        error = redact(error)
        if not self.store.fail_job(self.queue, claimed, error, touch_connection=touch_connection):
            return _Ending(Outcome.STALE, 0, error)
        return _Ending(Outcome.DROPPED if dropped else Outcome.FAILED, 0, error)

    def _retry(self, claimed: ClaimedMessage, error: str, previous_status: str | None) -> _Ending:
        error = redact(error)
        # out of attempts: the queue dead-letters it and the store fails the job
        state = self.store.retry_job(self.queue, claimed, error, previous_status)
        if state == MessageState.DEAD:
            return _Ending(Outcome.FAILED, 0, error)
        return _Ending(Outcome.RETRY if state == MessageState.READY else Outcome.STALE, 0, error)

    def _defer(
        self, claimed: ClaimedMessage, conn: Connection, exc: RateLimited, previous_status: str | None
    ) -> _Ending:
        # Short hints were already waited out in place (HttpClient): a job that leaves its
        # worker comes back no sooner than the floor, whatever the platform said.
        delay = max(exc.retry_after, MIN_DEFERRAL_SECONDS)
        note = f"{RATE_LIMIT_NOTE} {conn.platform}; deferred {delay:.0f}s: {exc}"
        pause = (conn.platform, self.clock.time() + delay) if exc.scope == "app" else None
        state = self.store.retry_job(
            self.queue, claimed, note, previous_status, delay=delay, count_attempt=False, pause=pause
        )
        return _Ending(Outcome.DEFERRED if state == MessageState.READY else Outcome.STALE, 0, note)

    def _release(self, claimed: ClaimedMessage, error: str, previous_status: str | None) -> _Ending:
        """Put a job cut short by a stopping consumer back as it was: claimable at once, no
        attempt used (its committed slices are kept and not fetched again)."""
        note = redact(f"{error}; released for the next consume run")
        state = self.store.retry_job(
            self.queue, claimed, note, previous_status, delay=0.0, count_attempt=False
        )
        return _Ending(Outcome.RELEASED if state == MessageState.READY else Outcome.STALE, 0, note)


def _report(msg: SyncJobMessage, ending: _Ending, seconds: float) -> JobOutcome:
    """The delivery's outcome, logged: only real failures are warnings (with -q, cron mails
    those and nothing else)."""
    status, records, error = ending
    o = JobOutcome(
        msg.job_id,
        msg.connection_id,
        msg.platform,
        status,
        records,
        redact(error) if error else None,
        round(seconds, 3),
    )
    line = "job %s %s %s: %s, %d records in %.2fs" + (" (%s)" if error else "")
    args = [msg.job_id, msg.platform, msg.connection_id, status, records, o.seconds]
    if error:
        args.append(o.error)
    (log.warning if status in (Outcome.FAILED, Outcome.DROPPED) else log.info)(line, *args)
    return o


__all__ = ["Consumer", "ConsumeResult", "JobOutcome", "Outcome"]
