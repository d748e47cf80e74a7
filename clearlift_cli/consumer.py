"""The consumer: claimed jobs become exact rows in the warehouse.

``Consumer.run_one`` is one job from claim to ack (huey's single iteration); ``run``
claims batches and runs them on a thread pool until the queue is empty or a limit is
reached. A failing job never stops the loop. Per job, as the system it replaces did:
job ``running`` -> decrypt -> fetch (slice by slice, each slice committed to the
warehouse atomically and recorded as coverage) -> job ``completed`` + connection
``last_synced_at`` + onboarding, together with the queue ack in one store transaction,
fenced by the lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time as _time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from clearlift_cli.crypto import FieldCipher
from clearlift_cli.errors import (
    AccountUnavailable,
    AuthRevoked,
    ClearliftError,
    ConfigError,
    CryptoError,
    Interrupted,
    NotFound,
    PermanentError,
    RateLimited,
    StoreError,
    TokenExpired,
    TransientError,
    WarehouseError,
)
from clearlift_cli.models import ClaimedMessage, Connection
from clearlift_cli.platforms import registry
from clearlift_cli.platforms.base import Slice
from clearlift_cli.platforms.deadline import JobScope, job_scope
from clearlift_cli.redact import redact
from clearlift_cli.settings import Settings
from clearlift_cli.store import Store
from clearlift_cli.store.queue import RATE_LIMIT_NOTE, Queue
from clearlift_cli.tokens import decrypt_credentials, platform_context, refresh_connection
from clearlift_cli.warehouse import open_warehouse
from clearlift_cli.warehouse.base import RowOwner, Warehouse

log = logging.getLogger("clearlift.consume")

DEFAULT_CONCURRENCY = 8
DEFAULT_LEASE_SECONDS = 300.0
# After --max-seconds or SIGTERM, running jobs have this long to finish before they are cut.
DEFAULT_STOP_GRACE_SECONDS = 30.0
# A job deferred by a rate limit waits at least this long (its hint, clamped to
# errors.RETRY_HINT_FLOOR/CEILING_SECONDS, when longer).
MIN_DEFERRAL_SECONDS = 30.0
# Refresh before a job when the token expires within this long.
EXPIRY_SLACK = timedelta(seconds=60)


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    connection_id: str
    platform: str
    status: str  # completed | retry | deferred | released | failed | dropped | stale
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


def date_slices(since: date, until: date, max_days: int | None) -> list[tuple[date, date]]:
    """Split since..until (inclusive) into consecutive slices of at most ``max_days``."""
    if max_days is None or max_days <= 0:
        return [(since, until)]
    out, start = [], since
    while start <= until:
        end = min(until, start + timedelta(days=max_days - 1))
        out.append((start, end))
        start = end + timedelta(days=1)
    return out


class Consumer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        warehouse: Warehouse | None = None,
        owner: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        on_progress: Callable[[str, str, int, int | None], None] | None = None,
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
        result = ConsumeResult()
        started = _time.monotonic()
        claimed_total = 0
        claiming = True
        cut_at: float | None = None  # when running jobs are cut (monotonic)
        in_flight: dict[Future, ClaimedMessage] = {}
        hb_stop = threading.Event()
        hb = threading.Thread(target=self._heartbeat_loop, args=(in_flight, hb_stop), daemon=True)
        hb.start()
        try:
            with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="job") as pool:
                while True:
                    now = _time.monotonic()
                    reason = None
                    if self._stop.is_set():
                        reason = "signal"
                    elif max_seconds is not None and now - started >= max_seconds:
                        reason = "max-seconds"
                    elif max_jobs is not None and claimed_total >= max_jobs:
                        reason = "max-jobs"
                    if reason is not None and claiming:
                        claiming = False
                        result.stopped_by = reason
                    if reason in ("signal", "max-seconds") and cut_at is None:
                        cut_at = now + max(0.0, stop_grace)
                        if in_flight:
                            log.info(
                                "stopping (%s): %d running job(s) have %gs to finish",
                                reason,
                                len(in_flight),
                                stop_grace,
                            )
                    if self._cut_now.is_set():
                        cut_at = now
                    if claiming:
                        free = concurrency - len(in_flight)
                        if max_jobs is not None:
                            free = min(free, max_jobs - claimed_total)
                        if free > 0:
                            batch = self.queue.claim(
                                self.owner, limit=free, lease_seconds=self.lease_seconds, only_job=only_job
                            )
                            for claimed in batch:
                                in_flight[pool.submit(self._run_cuttable, claimed)] = claimed
                            claimed_total += len(batch)
                            if not batch and not in_flight:
                                result.stopped_by = "empty"
                                break
                    elif not in_flight:
                        break
                    if cut_at is not None and now >= cut_at:
                        self._cut_running()
                    if in_flight:
                        # A job stays in ``in_flight`` until it has ended, so the heartbeat
                        # renews its lease all along, stopping or not.
                        tick = 1.0 if cut_at is None else min(1.0, max(0.05, cut_at - now))
                        done, _ = wait(list(in_flight), timeout=tick, return_when=FIRST_COMPLETED)
                        for fut in done:
                            result.outcomes.append(self._collect(fut, in_flight[fut]))
                            del in_flight[fut]
        finally:
            hb_stop.set()
            hb.join(timeout=5)
        return result

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
                "retry",
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
        msg = claimed.message
        t0 = _time.monotonic()

        def outcome(status: str, records: int = 0, error: str | None = None) -> JobOutcome:
            o = JobOutcome(
                msg.job_id,
                msg.connection_id,
                msg.platform,
                status,
                records,
                redact(error) if error else None,
                round(_time.monotonic() - t0, 3),
            )
            line = "job %s %s %s: %s, %d records in %.2fs" + (" (%s)" if error else "")
            args = [msg.job_id, msg.platform, msg.connection_id, status, records, o.seconds]
            if error:
                args.append(o.error)
            # Only real failures are warnings: with -q, cron mails those and nothing else.
            (log.warning if status in ("failed", "dropped") else log.info)(line, *args)
            return o

        try:
            conn = self.store.get_connection(msg.connection_id)
        except NotFound:
            return self._fail_now(claimed, "Connection no longer exists; job dropped", outcome, dropped=True)
        if not conn.is_active:
            return self._fail_now(
                claimed,
                "Connection was paused (is_active = 0); job dropped",
                outcome,
                dropped=True,
                touch_connection=False,
            )
        previous_status = conn.sync_status
        try:
            if not self.store.start_job(msg.job_id, conn.id):
                return self._already_finished(claimed, outcome)
            records = self._sync(claimed, conn)
        except RateLimited as exc:
            return self._defer(claimed, conn, exc, previous_status, outcome)
        except Interrupted as exc:
            return self._release(claimed, str(exc), previous_status, outcome)
        except AuthRevoked as exc:
            flagged = self.store.record_auth_failure(
                conn.id, reason=exc.reason, definitive=exc.definitive, prefix="Authentication failed"
            )
            text = str(exc).rstrip(". ")
            if flagged:
                text += " — the connection needs to be re-authorised (reconnect the account)"
            return self._fail_now(claimed, text, outcome, touch_connection=False)
        except (PermanentError, CryptoError, ConfigError, NotFound) as exc:
            return self._fail_now(claimed, str(exc), outcome)
        except (TransientError, WarehouseError, StoreError) as exc:
            return self._retry(claimed, str(exc), previous_status, outcome)
        except Exception as exc:  # an unexpected bug: retry with backoff, never kill the loop
            log.exception("unexpected error in job %s", msg.job_id)
            return self._retry(
                claimed, f"unexpected error: {type(exc).__name__}: {exc}", previous_status, outcome
            )
        return self._complete(claimed, conn, records, outcome)

    def _sync(self, claimed: ClaimedMessage, conn: Connection) -> int:
        msg = claimed.message
        creds = decrypt_credentials(self.cipher, conn)
        now = self.clock.now()
        if creds.expires_at and creds.expires_at <= now + EXPIRY_SLACK:
            creds = refresh_connection(self.settings, self.store, self.cipher, conn) or creds
        client_class = registry.get(conn.platform).client
        # start_job has just written the phase: the store hears of progress at most every
        # progress_every seconds after that (a short job writes none; its completion says it all).
        last_progress = [_time.monotonic()]

        def progress(phase: str, done: int, total: int | None) -> None:
            if self.on_progress:
                self.on_progress(msg.job_id, phase, done, total)
            t = _time.monotonic()
            if t - last_progress[0] >= self.store.progress_every:
                last_progress[0] = t
                self.store.job_progress(msg.job_id, phase, done, total)

        ctx = platform_context(self.settings, self.store, conn, progress=progress)
        state: dict[str, Any] = {"creds": creds, "refreshed": False, "client": None}

        def client():
            # One client per set of credentials: it keeps what it learnt (the account, usage
            # headers announcing a block) from one call to the next.
            if state["client"] is None or state["client"].credentials is not state["creds"]:
                state["client"] = client_class(ctx, state["creds"])
            return state["client"]

        def with_refresh(fn):
            """Run fn(client); on an expired token refresh once and run it again."""
            try:
                return fn(client())
            except (TokenExpired, AuthRevoked) as exc:
                if isinstance(exc, AuthRevoked) and exc.definitive or state["refreshed"]:
                    raise
                state["refreshed"] = True
                fresh = refresh_connection(
                    self.settings, self.store, self.cipher, self.store.get_connection(conn.id)
                )
                if fresh is None:
                    raise AuthRevoked(str(exc), platform=conn.platform, definitive=False) from None
                state["creds"] = fresh
                try:
                    return fn(client())
                except TokenExpired as again:
                    raise AuthRevoked(
                        f"{again} (even after a token refresh)", platform=conn.platform, definitive=False
                    ) from None

        # Usually one account; a Google manager connection syncs each selected client, and
        # one client failing (unlinked, cancelled, a passing error) does not stop the others.
        ids = with_refresh(lambda c: c.accounts())
        failed: dict[str, Exception] = {}

        def each_account(fn, only=None):
            out = {}
            for aid in ids if only is None else only:
                if aid in failed:
                    continue
                try:
                    out[aid] = with_refresh(lambda c, aid=aid: fn(aid, c.for_account(aid)))
                except (AccountUnavailable, TransientError) as exc:
                    if len(ids) == 1 or isinstance(exc, (RateLimited, TokenExpired)):
                        raise
                    failed[aid] = exc
            return out

        accounts = each_account(lambda aid, c: c.account())
        window = msg.sync_window
        since = window.start.date()
        # the window's end is exclusive: a window ending at midnight stops the day before
        until = (window.end - timedelta(microseconds=1)).date()
        if until < since:
            until = since
        slices = date_slices(since, until, client_class.max_window_days)
        done, records = self.store.slice_progress(msg.job_id)
        total_slices = len(slices)
        for i, (s, e) in enumerate(slices):
            if s.isoformat() in done:
                continue
            progress(f"slice {i + 1}/{total_slices} {s}..{e}", i, total_slices)
            synced_at = self.clock.now()

            def load_slice(aid, c, first=(i == 0), s=s, e=e, synced_at=synced_at):
                owner = RowOwner(conn.organization_id, conn.id, aid)
                part = Slice(owner, accounts[aid], s, e, window, first, synced_at)
                return c.load_slice(part, self.warehouse, write_seq=claimed.claim_seq)

            n = sum(each_account(load_slice, only=list(accounts)).values())
            records += n
            # A slice counts as done only when every account has it: a retry redoes the rest.
            if not failed:
                self.store.record_slice(msg.job_id, conn.id, s.isoformat(), e.isoformat(), n)
        if failed:
            raise _accounts_failed(conn.platform, ids, failed, records)
        if client_class.after_slices_phase:  # e.g. revenue's late refunds
            progress(client_class.after_slices_phase, total_slices, total_slices)
            for aid, account in accounts.items():
                owner = RowOwner(conn.organization_id, conn.id, aid)
                records += with_refresh(
                    lambda c, aid=aid, owner=owner, account=account: c.for_account(aid).load_after_slices(
                        owner, account, window, self.warehouse
                    )
                )
        progress("completed", total_slices, total_slices)
        return records

    # -- endings (each one store transaction, fenced by the lease) -------------------------

    def _complete(self, claimed: ClaimedMessage, conn: Connection, records: int, outcome) -> JobOutcome:
        if not self.store.complete_job(self.queue, claimed, conn, records):
            return outcome("stale", records, "lease lost before completion; another consumer owns the job")
        return outcome("completed", records)

    def _already_finished(self, claimed: ClaimedMessage, outcome) -> JobOutcome:
        """The job row is completed or failed already (its ending was written, then the
        process died before the message was acked): ack it, run nothing again."""
        with self.store.write() as c:
            self.queue.ack(c, claimed)
        return outcome("stale", 0, "the job had already finished; its message is acknowledged")

    def _fail_now(
        self, claimed, error: str, outcome, *, dropped: bool = False, touch_connection: bool = True
    ) -> JobOutcome:
        error = redact(error)
        if not self.store.fail_job(self.queue, claimed, error, touch_connection=touch_connection):
            return outcome("stale", 0, error)
        return outcome("dropped" if dropped else "failed", 0, error)

    def _retry(self, claimed, error: str, previous_status: str | None, outcome) -> JobOutcome:
        error = redact(error)
        # out of attempts: the queue dead-letters it and the store fails the job
        state = self.store.retry_job(self.queue, claimed, error, previous_status)
        if state == "dead":
            return outcome("failed", 0, error)
        return outcome("retry" if state == "ready" else "stale", 0, error)

    def _defer(self, claimed, conn: Connection, exc: RateLimited, previous_status, outcome) -> JobOutcome:
        # Short hints were already waited out in place (HttpClient): a job that leaves its
        # worker comes back no sooner than the floor, whatever the platform said.
        delay = max(exc.retry_after, MIN_DEFERRAL_SECONDS)
        note = f"{RATE_LIMIT_NOTE} {conn.platform}; deferred {delay:.0f}s: {exc}"
        pause = (conn.platform, self.clock.time() + delay) if exc.scope == "app" else None
        state = self.store.retry_job(
            self.queue, claimed, note, previous_status, delay=delay, count_attempt=False, pause=pause
        )
        return outcome("deferred" if state == "ready" else "stale", 0, note)

    def _release(self, claimed, error: str, previous_status, outcome) -> JobOutcome:
        """Put a job cut short by a stopping consumer back as it was: claimable at once, no
        attempt used (its committed slices are kept and not fetched again)."""
        note = redact(f"{error}; released for the next consume run")
        state = self.store.retry_job(
            self.queue, claimed, note, previous_status, delay=0.0, count_attempt=False
        )
        return outcome("released" if state == "ready" else "stale", 0, note)


def _accounts_failed(platform: str, ids: list[str], failed: dict[str, Exception], records: int) -> Exception:
    """One error for the accounts of a connection that failed while the others synced:
    permanent when any failure is (retrying cannot fix it), else transient."""
    synced = len(ids) - len(failed)
    text = (
        f"{platform}: {len(failed)} of {len(ids)} accounts failed "
        f"({synced} synced, {records} records written): "
        + "; ".join(f"account {aid}: {exc}" for aid, exc in failed.items())
    )
    if any(isinstance(exc, PermanentError) for exc in failed.values()):
        return PermanentError(text, platform=platform)
    return TransientError(text, platform=platform)


__all__ = ["Consumer", "ConsumeResult", "JobOutcome", "date_slices"]
