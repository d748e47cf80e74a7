"""One job's sync: a claimed job's window read from its platform and written to the
warehouse, slice by slice.

``JobSync`` holds what one job learns while it runs: the credentials in use (refreshed at
most once, on demand), the platform client built for them, the accounts that failed, and
when progress was last written. The consumer (consumer.py) claims a job, runs
``JobSync.run`` and writes the job's ending; nothing here acks, retries or fails a job.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from datetime import date, timedelta
from functools import partial
from typing import TypeVar

from clearlift_cli.crypto import FieldCipher
from clearlift_cli.errors import (
    AccountUnavailable,
    AuthRevoked,
    PermanentError,
    RateLimited,
    TokenExpired,
    TransientError,
)
from clearlift_cli.models import ClaimedMessage, Connection, SyncWindow
from clearlift_cli.platforms import registry
from clearlift_cli.platforms.base import Account, Credentials, PlatformClient, Slice
from clearlift_cli.settings import Settings
from clearlift_cli.store import Store
from clearlift_cli.tokens import decrypt_credentials, platform_context, refresh_connection
from clearlift_cli.warehouse.base import RowOwner, Warehouse

T = TypeVar("T")

# Refresh before a job when the token expires within this long.
EXPIRY_SLACK = timedelta(seconds=60)

ProgressHook = Callable[[str, str, int, int | None], None]  # (job id, phase, done, total)


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


def window_days(window: SyncWindow) -> tuple[date, date]:
    """The first and last day (inclusive) a job's window covers: its end is exclusive, so a
    window ending at midnight stops the day before; it covers at least its first day."""
    since = window.start.date()
    until = (window.end - timedelta(microseconds=1)).date()
    return since, max(since, until)


class ProgressThrottle:
    """Lets a progress write through at most once every ``every`` seconds (monotonic time),
    counting from ``start``: a short job writes none."""

    def __init__(self, every: float, start: float):
        self.every = every
        self.last = start

    def due(self, now: float) -> bool:
        if now - self.last >= self.every:
            self.last = now
            return True
        return False


def accounts_failed(platform: str, ids: list[str], failed: dict[str, Exception], records: int) -> Exception:
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


class JobSync:
    """The sync of one claimed job, and its run state. ``run`` once."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        cipher: FieldCipher,
        warehouse: Callable[[], Warehouse],
        claimed: ClaimedMessage,
        conn: Connection,
        *,
        on_progress: ProgressHook | None = None,
    ):
        self.settings = settings
        self.store = store
        self.cipher = cipher
        self._warehouse = warehouse  # opened on first use: a job may end before writing
        self.claimed = claimed
        self.msg = claimed.message
        self.conn = conn
        self.on_progress = on_progress
        self.creds: Credentials | None = None
        self.refreshed = False  # the token is refreshed at most once per job
        self._client: PlatformClient | None = None
        self.ids: list[str] = []  # the accounts the connection syncs
        self.failed: dict[str, Exception] = {}  # account id -> why it failed
        self.throttle: ProgressThrottle | None = None

    @property
    def warehouse(self) -> Warehouse:
        return self._warehouse()

    def run(self) -> int:
        """Sync the job's window; returns the records written. Raises the error the job ends
        on (the consumer decides retry, deferral or failure from its class)."""
        self.creds = self._credentials()
        self.client_class = registry.get(self.conn.platform).client
        # start_job has just written the phase: the store hears of progress at most every
        # progress_every seconds after that (a short job writes none; its completion says it all).
        self.throttle = ProgressThrottle(self.store.progress_every, _time.monotonic())
        self.ctx = platform_context(self.settings, self.store, self.conn, progress=self.progress)
        # Usually one account; a Google manager connection syncs each selected client, and
        # one client failing (unlinked, cancelled, a passing error) does not stop the others.
        self.ids = self.with_refresh(lambda c: c.accounts())
        accounts = self.each_account(lambda aid, c: c.account())
        slices = date_slices(*window_days(self.msg.sync_window), self.client_class.max_window_days)
        records = self._load_slices(slices, accounts)
        if self.failed:
            raise accounts_failed(self.conn.platform, self.ids, self.failed, records)
        total = len(slices)
        if self.client_class.after_slices_phase:  # e.g. revenue's late refunds
            self.progress(self.client_class.after_slices_phase, total, total)
            records += self._load_after_slices(accounts)
        self.progress("completed", total, total)
        return records

    def progress(self, phase: str, done: int, total: int | None) -> None:
        """The job's progress: to the hook every time, to the store when the throttle lets it."""
        if self.on_progress:
            self.on_progress(self.msg.job_id, phase, done, total)
        assert self.throttle is not None
        if self.throttle.due(_time.monotonic()):
            self.store.job_progress(self.msg.job_id, phase, done, total)

    # -- credentials and clients ---------------------------------------------------------

    def _credentials(self) -> Credentials:
        """The connection's tokens, refreshed first when they expire within EXPIRY_SLACK."""
        creds = decrypt_credentials(self.cipher, self.conn)
        now = self.store.clock.now()
        if creds.expires_at and creds.expires_at <= now + EXPIRY_SLACK:
            creds = refresh_connection(self.settings, self.store, self.cipher, self.conn) or creds
        return creds

    def client(self) -> PlatformClient:
        # One client per set of credentials: it keeps what it learnt (the account, usage
        # headers announcing a block) from one call to the next.
        if self._client is None or self._client.credentials is not self.creds:
            assert self.creds is not None
            self._client = self.client_class(self.ctx, self.creds)
        return self._client

    def _client_for(self, account: str | None) -> PlatformClient:
        return self.client() if account is None else self.client().for_account(account)

    def with_refresh(self, fn: Callable[[PlatformClient], T], *, account: str | None = None) -> T:
        """``fn(client)`` (the client of ``account`` when given); on an expired token refresh
        once per job and run it again."""
        try:
            return fn(self._client_for(account))
        except (TokenExpired, AuthRevoked) as exc:
            if isinstance(exc, AuthRevoked) and exc.definitive or self.refreshed:
                raise
            self._refresh(exc)
            try:
                return fn(self._client_for(account))
            except TokenExpired as again:
                raise AuthRevoked(
                    f"{again} (even after a token refresh)", platform=self.conn.platform, definitive=False
                ) from None

    def _refresh(self, exc: Exception) -> None:
        self.refreshed = True
        fresh = refresh_connection(
            self.settings, self.store, self.cipher, self.store.get_connection(self.conn.id)
        )
        if fresh is None:
            raise AuthRevoked(str(exc), platform=self.conn.platform, definitive=False) from None
        self.creds = fresh

    def each_account(
        self, fn: Callable[[str, PlatformClient], T], only: list[str] | None = None
    ) -> dict[str, T]:
        """``fn(account id, its client)`` for each account not failed yet (of ``only`` when
        given). An account failing with AccountUnavailable or a transient error is recorded
        in ``failed`` and skipped from then on, unless it is the only account or the error
        (a rate limit, a token still expired) would stop the others too."""
        out: dict[str, T] = {}
        for aid in self.ids if only is None else only:
            if aid in self.failed:
                continue
            try:
                out[aid] = self.with_refresh(partial(fn, aid), account=aid)
            except (AccountUnavailable, TransientError) as exc:
                if len(self.ids) == 1 or isinstance(exc, (RateLimited, TokenExpired)):
                    raise
                self.failed[aid] = exc
        return out

    # -- writing ------------------------------------------------------------------------

    def _owner(self, account_id: str) -> RowOwner:
        return RowOwner(self.conn.organization_id, self.conn.id, account_id)

    def _load_slices(self, slices: list[tuple[date, date]], accounts: dict[str, Account]) -> int:
        """Each slice not committed by an earlier delivery, for every account; the records
        of the job so far (an earlier delivery's included)."""
        done, records = self.store.slice_progress(self.msg.job_id)
        total = len(slices)
        for i, (since, until) in enumerate(slices):
            if since.isoformat() in done:
                continue
            self.progress(f"slice {i + 1}/{total} {since}..{until}", i, total)
            n = self._load_slice(accounts, i == 0, since, until)
            records += n
            # A slice counts as done only when every account has it: a retry redoes the rest.
            if not self.failed:
                self.store.record_slice(
                    self.msg.job_id, self.conn.id, since.isoformat(), until.isoformat(), n
                )
        return records

    def _load_slice(self, accounts: dict[str, Account], first: bool, since: date, until: date) -> int:
        synced_at = self.store.clock.now()
        window = self.msg.sync_window

        def load(aid: str, client: PlatformClient) -> int:
            part = Slice(self._owner(aid), accounts[aid], since, until, window, first, synced_at)
            # fenced: a delivery whose lease was taken over writes nothing
            return client.load_slice(part, self.warehouse, write_seq=self.claimed.claim_seq)

        return sum(self.each_account(load, only=list(accounts)).values())

    def _load_after_slices(self, accounts: dict[str, Account]) -> int:
        window = self.msg.sync_window

        def load(aid: str, client: PlatformClient) -> int:
            return client.load_after_slices(
                self._owner(aid), accounts[aid], window, self.warehouse, write_seq=self.claimed.claim_seq
            )

        # not each_account: every account has its slices by now, and any failure ends the job
        return sum(self.with_refresh(partial(load, aid), account=aid) for aid in accounts)


__all__ = ["EXPIRY_SLACK", "JobSync", "ProgressThrottle", "accounts_failed", "date_slices", "window_days"]
