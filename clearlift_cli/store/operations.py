"""The store's operations: everything clearlift reads or writes in its databases, by name.

``Store`` joins two concerns. **ClearLift's tables** (``platform_connections``,
``sync_jobs``, ``onboarding_progress``: the API worker's) are reached through ``tables``:
the same database as the control plane (SQLite or PostgreSQL), or the live D1. **The
control plane** (the queue, coverage, pauses, state, runs) is ``engine``: SQLite or
PostgreSQL. No module outside this package writes SQL.

An operation that writes both sides runs as one transaction when they share a database.
With D1 (``split``) it follows the sequence in store/d1.py: the D1 statements first, as
one guarded batch, then the local transaction.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

from clearlift_cli.d1 import Statement
from clearlift_cli.errors import NotFound
from clearlift_cli.models import Connection, JobStatus, SyncStatus
from clearlift_cli.redact import redact
from clearlift_cli.timeutil import iso_z

from .engine import Engine
from .schema import CONNECTION_COLUMNS, LIVE, STATUS_COLUMNS
from .tables import Result, SharedTables, Tables
from .tables import stmt as _s

# How long the record of each schedule / consume / refresh-tokens run is kept.
RUNS_KEPT_SECONDS = 7 * 86400


def new_job_id() -> str:
    return str(uuid.uuid4())


# A connection as the API worker writes it; a reconnect clears the re-auth flag.
_UPSERT_CONNECTION = """
            INSERT INTO platform_connections (id, organization_id, platform, account_id,
              account_name, connected_by, connected_at, sync_status, is_active, settings,
              credentials_encrypted, refresh_token_encrypted, expires_at, scopes,
              needs_reauth, consecutive_auth_failures)
            VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 1, ?, ?, ?, ?, ?, 0, 0)
            ON CONFLICT (organization_id, platform, account_id) DO UPDATE SET
              account_name = coalesce(excluded.account_name, platform_connections.account_name),
              connected_by = excluded.connected_by,
              is_active = 1,
              settings = excluded.settings,
              credentials_encrypted = excluded.credentials_encrypted,
              refresh_token_encrypted = excluded.refresh_token_encrypted,
              expires_at = excluded.expires_at,
              scopes = coalesce(excluded.scopes, platform_connections.scopes),
              needs_reauth = 0, reauth_reason = NULL, reauth_detected_at = NULL,
              consecutive_auth_failures = 0,
              sync_error = CASE WHEN coalesce(platform_connections.needs_reauth, 0) = 1
                                THEN NULL ELSE platform_connections.sync_error END,
              sync_status = CASE WHEN coalesce(platform_connections.needs_reauth, 0) = 1
                                 THEN 'pending' ELSE platform_connections.sync_status END
            """


class BaseStore:
    """ClearLift's tables and clearlift's control plane, as operations (scheduling's are in
    ``scheduling.Store``, the class everyone uses)."""

    def __init__(self, engine: Engine, tables: Tables | None = None):
        self.engine = engine
        self.tables: Tables = SharedTables(engine) if tables is None else tables
        self.clock = engine.clock
        self.split = self.tables.split
        self.integrity_errors = engine.integrity_errors
        self._has_onboarding: bool | None = None
        self._onboarding_lock = threading.Lock()

    # -- the databases ----------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return "d1" if self.split else self.engine.dialect

    @property
    def progress_every(self) -> float:
        """Seconds between a running job's progress writes: each is a request to a live D1."""
        return 10.0 if self.split else 1.0

    @property
    def skip_locked(self) -> str:
        return self.engine.skip_locked

    @property
    def for_update(self) -> str:
        return self.engine.for_update

    @property
    def display(self) -> str:
        """The store's name for messages (passwords masked)."""
        if self.split:
            return f"{self.tables.display} (control plane {self.engine.display})"
        return self.engine.display

    @property
    def local_files(self) -> list[str]:
        return self.engine.local_files

    def write(self) -> Any:
        """A write transaction on the control plane (and, shared, on ClearLift's tables)."""
        return self.engine.write()

    def read(self, sql: str, params: Any = ()) -> list[Any]:
        """Rows from the control plane's database."""
        return self.engine.read(sql, params)

    def lock_scheduling(self, c: Any) -> None:
        self.engine.lock_scheduling(c)

    def close(self) -> None:
        self.engine.close()

    def now_iso(self) -> str:
        return iso_z(self.clock.now())

    def has_table(self, name: str) -> bool:
        return self.tables.has_table(name)

    def has_onboarding(self) -> bool:
        """Whether ClearLift's ``onboarding_progress`` table exists: asked once per store
        (a D1 request), however many consumer threads complete their first job at once."""
        if self._has_onboarding is None:
            with self._onboarding_lock:
                if self._has_onboarding is None:
                    self._has_onboarding = self.tables.has_table("onboarding_progress")
        return self._has_onboarding

    # -- schema -----------------------------------------------------------------------------

    def schema_version(self) -> int:
        return self.engine.schema_version()

    def migrate(self) -> list[str]:
        """Create or upgrade the store; idempotent. Returns what was changed."""
        changes = self.engine.migrate(app_tables=not self.split)
        return changes + self.tables.migrate()

    def require_schema(self) -> None:
        self.engine.require_schema()

    def check_writable(self) -> None:
        """Make a write and roll it back; a StoreError says why the store cannot be written."""

        class _RolledBack(Exception):
            pass

        try:
            with self.write() as c:
                c.execute(
                    "INSERT INTO clearlift_meta (key, value) VALUES ('doctor_probe', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (self.now_iso(),),
                )
                raise _RolledBack
        except _RolledBack:
            pass

    # -- connections ------------------------------------------------------------------------

    def get_connection(self, connection_id: str) -> Connection:
        rows = self.tables.read(
            f"SELECT {CONNECTION_COLUMNS} FROM platform_connections WHERE id = ?", (connection_id,)
        )
        if not rows:
            raise NotFound(f"no connection {connection_id!r} (see `clearlift connections list`)")
        return Connection.from_row(rows[0])

    def list_connections(
        self, *, organization_id: str | None = None, platform: str | None = None
    ) -> list[Connection]:
        where, params = _connection_filter("", organization_id, platform)
        sql = (
            f"SELECT {CONNECTION_COLUMNS} FROM platform_connections WHERE 1=1{where} "
            "ORDER BY organization_id, platform, account_id"
        )
        return [Connection.from_row(r) for r in self.tables.read(sql, params)]

    def upsert_connection(
        self,
        *,
        organization_id: str,
        platform: str,
        account_id: str,
        account_name: str | None,
        connected_by: str,
        credentials_encrypted: str,
        refresh_token_encrypted: str | None,
        expires_at: str | None,
        settings_text: str,
        scopes: str | None,
    ) -> tuple[str, bool]:
        """Insert or update the connection as the API worker does; a reconnect clears the
        re-auth flag. Returns (id, created)."""
        cid = f"{organization_id}-{platform}-{account_id}"
        now = self.now_iso()
        existed = _s(
            "SELECT 1 FROM platform_connections WHERE organization_id = ? AND platform = ? AND account_id = ?",
            organization_id,
            platform,
            account_id,
        )
        upsert = _s(
            _UPSERT_CONNECTION,
            cid,
            organization_id,
            platform,
            account_id,
            account_name,
            connected_by,
            now,
            settings_text,
            credentials_encrypted,
            refresh_token_encrypted,
            expires_at,
            scopes,
        )
        before, _ = self._run_app([existed, upsert])
        return cid, not before.rows

    def set_active(self, connection_id: str, active: bool) -> None:
        (r,) = self._run_app(
            [
                _s(
                    "UPDATE platform_connections SET is_active = ? WHERE id = ?",
                    1 if active else 0,
                    connection_id,
                )
            ]
        )
        if r.rowcount == 0:
            raise NotFound(f"no connection {connection_id!r} (see `clearlift connections list`)")

    def swap_tokens(
        self,
        connection_id: str,
        *,
        old_credentials_encrypted: str | None,
        credentials_encrypted: str,
        expires_at: str | None,
        refresh_token_encrypted: str | None,
    ) -> bool:
        """Compare-and-set the token columns: only if the stored access token is still the
        one we refreshed from, so an older token never overwrites a newer one. The auth
        failure count is left alone: only a successful sync resets it."""
        swap = _s(
            """
            UPDATE platform_connections
               SET credentials_encrypted = ?, expires_at = ?,
                   refresh_token_encrypted = coalesce(?, refresh_token_encrypted)
             WHERE id = ? AND coalesce(credentials_encrypted, '') = coalesce(CAST(? AS TEXT), '')
            """,
            credentials_encrypted,
            expires_at,
            refresh_token_encrypted,
            connection_id,
            old_credentials_encrypted,
        )
        (r,) = self._run_app([swap])
        return r.rowcount == 1

    def record_auth_failure(
        self,
        connection_id: str,
        *,
        reason: str,
        definitive: bool,
        threshold: int = 3,
        prefix: str = "Token refresh failed",
    ) -> bool:
        """Count an auth failure; flag re-auth when definitive or after ``threshold`` in a
        row. Returns whether the connection now needs re-authorisation. One statement (one
        D1 request): the count and the flag are computed by the database."""
        now = self.now_iso()
        reason = redact(reason)
        # A definitive failure flags at once: the count after this one is always >= 1.
        at = 1 if definitive else threshold
        flag = "(coalesce(consecutive_auth_failures, 0) + 1 >= ?)"
        update = _s(
            f"""
            UPDATE platform_connections
               SET sync_status = 'failed', sync_error = ?,
                   reauth_detected_at = CASE WHEN {flag} AND coalesce(needs_reauth, 0) = 0
                                             THEN ? ELSE reauth_detected_at END,
                   reauth_reason = CASE WHEN {flag} THEN ? ELSE reauth_reason END,
                   needs_reauth = CASE WHEN {flag} THEN 1 ELSE needs_reauth END,
                   consecutive_auth_failures = coalesce(consecutive_auth_failures, 0) + 1
             WHERE id = ?
            RETURNING consecutive_auth_failures
            """,
            f"{prefix}: {reason}",
            at,
            now,
            at,
            reason,
            at,
            connection_id,
        )
        (r,) = self._run_app([update])
        return bool(r.rows) and int(r.rows[0][0]) >= at

    def connections_expiring(self, cutoff_julian: float) -> list[Connection]:
        """Active connections not waiting for re-auth whose token expires before
        ``cutoff_julian``, by platform, earliest first: the refresh candidates."""
        rows = self.tables.read(
            f"SELECT {CONNECTION_COLUMNS} FROM platform_connections "
            "WHERE expires_at IS NOT NULL AND julianday(expires_at) <= ? AND is_active = 1 "
            "AND coalesce(needs_reauth, 0) = 0 ORDER BY platform, julianday(expires_at)",
            (cutoff_julian,),
        )
        return [Connection.from_row(r) for r in rows]

    def stored_ciphertexts(self, limit: int = 20, *, first: str | None = None) -> list[str]:
        """Up to ``limit`` stored access-token ciphertexts (``first``'s connection first): a
        sample to check the encryption key against before writing anything."""
        return [
            r[0]
            for r in self.tables.read(
                "SELECT credentials_encrypted FROM platform_connections WHERE credentials_encrypted IS NOT NULL "
                "ORDER BY CASE WHEN id = ? THEN 0 ELSE 1 END LIMIT ?",
                (first or "", limit),
            )
        ]

    def queued_ciphertexts(self, limit: int = 20) -> list[str]:
        """Access-token ciphertexts of connections with a live queue message (what the next
        consume run will decrypt)."""
        ids = [
            r[0]
            for r in self.read(
                "SELECT DISTINCT connection_id FROM sync_queue WHERE state IN ('ready', 'leased') LIMIT ?",
                (limit,),
            )
        ]
        if not ids:
            return []
        return [
            r[0]
            for r in self.tables.read(
                "SELECT credentials_encrypted FROM platform_connections WHERE credentials_encrypted IS NOT NULL "
                f"AND id IN ({','.join('?' * len(ids))})",
                ids,
            )
        ]

    def token_sample(self, limit: int) -> list[tuple[str, str, str]]:
        """Up to ``limit`` stored tokens of active connections, picked at random:
        (connection id, column, ciphertext)."""
        rows = self.tables.read(
            "SELECT id, credentials_encrypted, refresh_token_encrypted FROM platform_connections "
            "WHERE coalesce(is_active, 0) != 0 AND credentials_encrypted IS NOT NULL "
            "ORDER BY random() LIMIT ?",
            (limit,),
        )
        out = []
        for r in rows:
            out.append((r[0], "credentials_encrypted", r[1]))
            if r[2]:
                out.append((r[0], "refresh_token_encrypted", r[2]))
        return out[:limit]

    # -- the operator's view (status, doctor, metrics) ---------------------------------------

    def connection_counts(self) -> list[tuple[str, bool, str, bool, int, int]]:
        """Connections grouped: (platform, is_active, sync_status, needs_reauth, count,
        how many of them hold a token that expires or a refresh token)."""
        return [
            (r[0], bool(r[1]), r[2] or SyncStatus.PENDING.value, bool(r[3]), int(r[4]), int(r[5]))
            for r in self.tables.read(
                "SELECT platform, coalesce(is_active, 0) != 0, sync_status, coalesce(needs_reauth, 0) != 0, "
                "count(*), count(*) FILTER (WHERE expires_at IS NOT NULL OR refresh_token_encrypted IS NOT NULL) "
                "FROM platform_connections GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
            )
        ]

    def connections_with_latest_job(
        self, *, organization_id: str | None = None, platform: str | None = None
    ) -> list[Any]:
        """Every connection (``STATUS_COLUMNS``: no tokens) with its latest job's columns as
        ``job_id``, ``job_status``, ``job_type``, ``job_completed_at``, ``job_records_synced``,
        ``job_metadata``, ``job_error_message``, ``job_created_at`` (NULL without a job),
        ordered as ``list_connections``. One indexed look-up per connection, so the cost
        follows the connections, not the years of jobs behind them."""
        cols = ", ".join(f"c.{name.strip()}" for name in STATUS_COLUMNS.split(","))
        sql = (
            f"SELECT {cols}, j.id AS job_id, j.status AS job_status, j.job_type AS job_type, "
            "j.completed_at AS job_completed_at, j.records_synced AS job_records_synced, "
            "j.metadata AS job_metadata, j.error_message AS job_error_message, "
            "j.created_at AS job_created_at "
            "FROM platform_connections c LEFT JOIN sync_jobs j ON j.id = ("
            "  SELECT l.id FROM sync_jobs l WHERE l.connection_id = c.id "
            "  ORDER BY julianday(l.created_at) DESC, l.id DESC LIMIT 1) WHERE 1=1"
        )
        where, params = _connection_filter("c.", organization_id, platform)
        return self.tables.read(sql + where + " ORDER BY c.organization_id, c.platform, c.account_id", params)

    def get_job(self, job_id: str) -> Any | None:
        rows = self.tables.read("SELECT * FROM sync_jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def latest_job(self, connection_id: str) -> Any | None:
        rows = self.tables.read(
            "SELECT * FROM sync_jobs WHERE connection_id = ? ORDER BY julianday(created_at) DESC, id DESC LIMIT 1",
            (connection_id,),
        )
        return rows[0] if rows else None

    def live_job(self, connection_id: str) -> Any | None:
        rows = self.tables.read(
            f"SELECT * FROM sync_jobs WHERE connection_id = ? AND status IN {LIVE} "
            "ORDER BY julianday(created_at) DESC LIMIT 1",
            (connection_id,),
        )
        return rows[0] if rows else None

    # -- a job's life (consume) ---------------------------------------------------------------

    def start_job(self, job_id: str, connection_id: str) -> bool:
        """Mark the job running and its connection syncing. False, and nothing changed, when
        the job row is no longer live (already completed or failed: a delivery repeated
        after a crash between the D1 write and the local ack)."""
        now = self.now_iso()
        start = _s(
            "UPDATE sync_jobs SET status = 'running', started_at = coalesce(started_at, ?), "
            f"updated_at = ?, current_phase = 'starting', error_message = NULL WHERE id = ? AND status IN {LIVE}",
            now,
            now,
            job_id,
        )
        syncing = _s(
            "UPDATE platform_connections SET sync_status = ? WHERE id = ? "
            f"AND EXISTS (SELECT 1 FROM sync_jobs WHERE id = ? AND status = '{JobStatus.RUNNING.value}')",
            SyncStatus.SYNCING.value,
            connection_id,
            job_id,
        )
        started, _ = self._run_app([start, syncing])
        if started.rowcount == 0 and self.get_job(job_id) is None:
            return True  # no row at all (an operator deleted it): the sync goes on as before
        return started.rowcount == 1

    def job_progress(self, job_id: str, phase: str, done: int, total: int | None) -> None:
        pct = max(0, min(100, int(done * 100 / total))) if total else 0
        self._run_app(
            [
                _s(
                    "UPDATE sync_jobs SET current_phase = ?, total_records = ?, progress_percentage = ?, "
                    "updated_at = ? WHERE id = ? AND status = 'running'",
                    phase,
                    total,
                    pct,
                    self.now_iso(),
                    job_id,
                )
            ]
        )

    def complete_job(self, queue: Any, claimed: Any, conn: Connection, records: int) -> bool:
        """The job completed: its row (``records_synced`` also in its metadata, which the API
        prefers), its connection (synced, re-auth cleared), the onboarding step, and the
        message acked. False when the delivery no longer holds its lease: nothing written —
        except on D1 when the lease is lost while its batch is written (see below)."""
        job_id = claimed.message.job_id
        if self.split:
            # D1 first, one batch; the lease is checked before, so a fenced-out delivery
            # writes nothing there. A crash before the ack redelivers the message, and
            # start_job then refuses the finished job. D1's JSON functions set the key.
            if not queue.holds_lease_now(claimed):
                return False
            metadata = (
                "CASE WHEN json_valid(metadata) AND json_type(metadata) = 'object' "
                "THEN json_set(metadata, '$.records_synced', ?) ELSE json_object('records_synced', ?) END"
            )
            self.tables.run(None, self._completion(job_id, conn, records, metadata, (records, records)))
            with self.write() as c:
                # The lease can run out while the batch is in flight and another consumer
                # claim the message: D1 says completed then, the new holder's start_job
                # refuses the finished job, and this delivery reports its lease lost.
                return bool(queue.ack(c, claimed))
        with self.write() as c:
            if not queue.ack(c, claimed):
                return False
            row = c.execute("SELECT metadata FROM sync_jobs WHERE id = ?", (job_id,)).fetchone()
            meta = with_records(row[0] if row else None, records)
            self.tables.run(c, self._completion(job_id, conn, records, "?", (meta,)))
        return True

    def _completion(
        self, job_id: str, conn: Connection, records: int, metadata_sql: str, metadata_params: tuple[Any, ...]
    ) -> list[Statement]:
        now = self.now_iso()
        stmts = [
            _s(
                "UPDATE sync_jobs SET status = 'completed', completed_at = ?, updated_at = ?, "
                "records_synced = ?, total_records = ?, progress_percentage = 100, "
                f"current_phase = 'completed', error_message = NULL, metadata = {metadata_sql} WHERE id = ?",
                now,
                now,
                records,
                records,
                *metadata_params,
                job_id,
            ),
            _s(
                """
                UPDATE platform_connections
                   SET last_synced_at = ?, sync_status = 'completed', sync_error = NULL,
                       needs_reauth = 0, reauth_reason = NULL, reauth_detected_at = NULL,
                       consecutive_auth_failures = 0
                 WHERE id = ?
                """,
                now,
                conn.id,
            ),
        ]
        if conn.connected_by and self.has_onboarding():
            stmts.append(
                _s(
                    """
                    UPDATE onboarding_progress
                       SET first_sync_completed = 1, current_step = 'completed',
                           completed_at = coalesce(completed_at, ?), updated_at = ?
                     WHERE user_id = ? AND organization_id = ?
                       AND (coalesce(first_sync_completed, 0) = 0 OR current_step != 'completed')
                    """,
                    now,
                    now,
                    conn.connected_by,
                    conn.organization_id,
                )
            )
        return stmts

    def fail_job_statements(
        self, items: Iterable[tuple[str, str]], *, touch_connection: bool = True
    ) -> list[Statement]:
        """Statements marking jobs failed (and, with ``touch_connection``, their connections)."""
        now = self.now_iso()
        out = []
        for job_id, error in items:
            error = redact(error or "failed")
            out.append(
                _s(
                    "UPDATE sync_jobs SET status = 'failed', completed_at = ?, error_message = ?, "
                    "updated_at = ?, current_phase = 'failed' WHERE id = ?",
                    now,
                    error,
                    now,
                    job_id,
                )
            )
            if touch_connection:
                out.append(
                    _s(
                        "UPDATE platform_connections SET sync_status = 'failed', sync_error = ? "
                        "WHERE id = (SELECT connection_id FROM sync_jobs WHERE id = ?)",
                        error,
                        job_id,
                    )
                )
        return out

    def fail_jobs(self, c: Any, items: list[tuple[str, str]]) -> None:
        """Mark jobs failed and their connections failed, with the local transaction ``c``
        (the queue dead-lettered their messages in it). D1: written before ``c`` commits."""
        if items:
            self.tables.run(c, self.fail_job_statements(items))

    def fail_job(self, queue: Any, claimed: Any, error: str, *, touch_connection: bool = True) -> bool:
        """Dead-letter the message and fail the job now (a permanent error). False when
        the delivery no longer holds its lease."""
        stmts = self.fail_job_statements([(claimed.message.job_id, error)], touch_connection=touch_connection)
        with self.write() as c:
            if not queue.dead_letter(c, claimed, error):
                return False
            self.tables.run(c, stmts)
        return True

    def retry_job(
        self,
        queue: Any,
        claimed: Any,
        error: str,
        previous_status: str | None,
        *,
        delay: float | None = None,
        count_attempt: bool = True,
        pause: tuple[str, float] | None = None,
    ) -> str:
        """Put the message back (``queue.retry``) and the job to ``pending`` with its
        connection's previous status. ``pause``: (platform, until) pauses the platform.
        Returns the message's new state: ready, dead (out of attempts: the dead-letter hook
        failed the job) or stale."""
        error = redact(error)
        msg = claimed.message
        with self.write() as c:
            state = queue.retry(c, claimed, error, delay=delay, count_attempt=count_attempt)
            if state != "ready":
                return str(state)
            if pause is not None:
                self.pause_platform(c, pause[0], pause[1], error)
            settled = (SyncStatus.PENDING, SyncStatus.COMPLETED, SyncStatus.FAILED)
            back = previous_status if previous_status in settled else SyncStatus.PENDING.value
            now = self.now_iso()
            self.tables.run(
                c,
                [
                    _s(
                        "UPDATE sync_jobs SET status = 'pending', error_message = ?, updated_at = ?, "
                        f"current_phase = 'waiting to retry' WHERE id = ? AND status IN {LIVE}",
                        error,
                        now,
                        msg.job_id,
                    ),
                    _s(
                        "UPDATE platform_connections SET sync_status = ? WHERE id = ? AND sync_status = 'syncing'",
                        back,
                        msg.connection_id,
                    ),
                ],
            )
        return "ready"

    # -- coverage (what each connection has synced) ----------------------------------------------

    def slice_progress(self, job_id: str) -> tuple[set[str], int]:
        """The slices a job already wrote (their start dates) and the records they counted:
        what a retried delivery skips. One read."""
        rows = self.read("SELECT start_date, records FROM clearlift_coverage WHERE job_id = ?", (job_id,))
        return {r[0] for r in rows}, sum(int(r[1] or 0) for r in rows)

    def record_slice(self, job_id: str, connection_id: str, start: str, end: str, records: int) -> None:
        with self.write() as c:
            c.execute(
                "INSERT INTO clearlift_coverage (connection_id, job_id, start_date, end_date, records, synced_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, start_date) DO UPDATE SET "
                "end_date = excluded.end_date, records = excluded.records, synced_at = excluded.synced_at",
                (connection_id, job_id, start, end, records, self.now_iso()),
            )

    def coverage(self, connection_id: str) -> list[tuple[str, str]]:
        """Merged date ranges this connection has synced, oldest first."""
        rows = self.read(
            "SELECT start_date, end_date FROM clearlift_coverage WHERE connection_id = ? ORDER BY start_date",
            (connection_id,),
        )
        merged: list[list[str]] = []
        for r in rows:
            s, e = r[0], r[1]
            if merged:
                prev_end = date.fromisoformat(merged[-1][1])
                if date.fromisoformat(s) <= prev_end + timedelta(days=1):
                    if e > merged[-1][1]:
                        merged[-1][1] = e
                    continue
            merged.append([s, e])
        return [(s, e) for s, e in merged]

    # -- platform-wide pauses (app-level rate limits) ------------------------------------------

    def pause_platform(self, c: Any, platform: str, until_epoch: float, reason: str) -> None:
        c.execute(
            "INSERT INTO clearlift_platform_pauses (platform, until, reason) VALUES (?, ?, ?) "
            "ON CONFLICT (platform) DO UPDATE SET reason = excluded.reason, until = CASE WHEN "
            "excluded.until > clearlift_platform_pauses.until THEN excluded.until "
            "ELSE clearlift_platform_pauses.until END",
            (platform, until_epoch, redact(reason)),
        )

    def platform_pauses(self) -> dict[str, float]:
        return {p: until for p, (until, _) in self.platform_pause_reasons().items()}

    def platform_pause_reasons(self) -> dict[str, tuple[float, str]]:
        """Platforms paused now: platform -> (until, epoch seconds; why)."""
        now = self.clock.time()
        return {
            r[0]: (r[1], r[2] or "")
            for r in self.read(
                "SELECT platform, until, reason FROM clearlift_platform_pauses WHERE until > ?", (now,)
            )
        }

    def lift_platform_pause(self, c: Any, platform: str) -> bool:
        """Remove ``platform``'s pause (inside the caller's transaction); False if it had none."""
        row = c.execute(
            "DELETE FROM clearlift_platform_pauses WHERE platform = ? RETURNING until", (platform,)
        ).fetchone()
        return row is not None and row[0] > self.clock.time()

    def deferred_messages(
        self, connection_id: str | None = None, *, paused_platforms: Iterable[str] = ()
    ) -> list[Any]:
        """Queued messages that wait (a rate limit, a retry backoff, or their platform is in
        ``paused_platforms``): connection_id, platform, visible_at (epoch seconds), last_error."""
        now = self.clock.time()
        one = " AND connection_id = ?" if connection_id is not None else ""
        rows = self.read(_DEFERRED_SQL + " AND visible_at > ?" + one, (now, connection_id) if one else (now,))
        for platform in paused_platforms:  # claimable but for the pause
            rows += self.read(
                _DEFERRED_SQL + " AND visible_at <= ? AND platform = ?" + one,
                (now, platform, connection_id) if one else (now, platform),
            )
        return rows

    # -- runs of the cron commands and job totals (doctor, metrics) ----------------------------

    def record_run(
        self,
        command: str,
        *,
        host: str,
        started_at: float,
        finished_at: float,
        ok: bool,
        summary_json: str,
        job_totals: Iterable[tuple[str, str, int, int, float]] = (),
        keep_seconds: float = RUNS_KEPT_SECONDS,
    ) -> None:
        """Record one finished run of ``command`` and add its jobs to the running totals
        (``(platform, outcome, jobs, records, seconds)``), in one transaction. Runs older
        than ``keep_seconds`` are forgotten (the totals keep counting)."""
        with self.write() as c:
            c.execute(
                "INSERT INTO clearlift_runs (command, host, started_at, finished_at, ok, summary) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (command, host, started_at, finished_at, 1 if ok else 0, summary_json),
            )
            c.execute(
                "DELETE FROM clearlift_runs WHERE command = ? AND finished_at < ?",
                (command, finished_at - keep_seconds),
            )
            for platform, outcome, jobs, records, seconds in job_totals:
                c.execute(
                    "INSERT INTO clearlift_job_totals (platform, outcome, jobs, records, seconds) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (platform, outcome) DO UPDATE SET "
                    "jobs = clearlift_job_totals.jobs + excluded.jobs, "
                    "records = clearlift_job_totals.records + excluded.records, "
                    "seconds = clearlift_job_totals.seconds + excluded.seconds",
                    (platform, outcome, jobs, records, seconds),
                )

    def last_runs(self) -> dict[str, dict[str, Any]]:
        """Per command: the latest run (``finished_at``, ``ok``, ``summary``, ``started_at``,
        ``host``) and ``last_ok_at``, when the latest successful one finished (or None)."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.read(
            "SELECT r.command, r.host, r.started_at, r.finished_at, r.ok, r.summary, "
            "(SELECT max(o.finished_at) FROM clearlift_runs o WHERE o.command = r.command AND o.ok = 1) "
            "FROM clearlift_runs r WHERE r.id IN (SELECT max(id) FROM clearlift_runs GROUP BY command)"
        ):
            out[r[0]] = {
                "host": r[1],
                "started_at": r[2],
                "finished_at": r[3],
                "ok": bool(r[4]),
                "summary": r[5],
                "last_ok_at": r[6],
            }
        return out

    def run_summaries_since(self, command: str, since_epoch: float) -> list[str]:
        """The summary JSON of every ``command`` run that finished after ``since_epoch``."""
        return [
            r[0]
            for r in self.read(
                "SELECT summary FROM clearlift_runs WHERE command = ? AND finished_at > ?",
                (command, since_epoch),
            )
        ]

    def job_totals(self) -> list[tuple[str, str, int, int, float]]:
        """Every job outcome counted so far: (platform, outcome, jobs, records, seconds)."""
        return [
            (r[0], r[1], int(r[2]), int(r[3]), float(r[4]))
            for r in self.read(
                "SELECT platform, outcome, jobs, records, seconds FROM clearlift_job_totals ORDER BY platform, outcome"
            )
        ]

    # -- helpers --------------------------------------------------------------------------------

    def _run_app(self, statements: list[Statement]) -> list[Result]:
        """Run ``statements`` on ClearLift's tables as one unit: a write transaction on the
        shared database, one batch on D1."""
        if self.split:
            return self.tables.run(None, statements)
        with self.write() as c:
            return self.tables.run(c, statements)


_DEFERRED_SQL = "SELECT connection_id, platform, visible_at, last_error FROM sync_queue WHERE state = 'ready'"


def _connection_filter(
    prefix: str, organization_id: str | None, platform: str | None
) -> tuple[str, list[Any]]:
    """`` AND …`` terms (columns of ``platform_connections``, with ``prefix``) and their
    parameters, for listing the connections of one organisation and/or platform."""
    where, params = "", []
    if organization_id:
        where += f" AND {prefix}organization_id = ?"
        params.append(organization_id)
    if platform:
        where += f" AND {prefix}platform = ?"
        params.append(platform)
    return where, params


def with_records(metadata: str | None, records: int) -> str:
    """The job's metadata JSON with ``records_synced`` set (the API prefers it over the
    column); metadata that is not a JSON object is replaced, keeping nothing unreadable."""
    try:
        data = json.loads(metadata or "{}")
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    data["records_synced"] = records
    try:
        return json.dumps(data, allow_nan=False)
    except ValueError:  # NaN / Infinity from elsewhere: the API worker's JSON.parse refuses them
        return json.dumps({"records_synced": records})
