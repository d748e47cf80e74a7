"""The store: a SQLite file with ClearLift's D1 tables plus clearlift's own tables.

The API worker owns ``platform_connections``, ``sync_jobs`` and ``onboarding_progress``;
clearlift reads and updates them with the same columns, and adds only what is missing
(later columns, indexes, its own ``clearlift_*`` / ``sync_queue`` tables). Opening the
store sets WAL mode and a busy timeout; every write is a ``BEGIN IMMEDIATE``
transaction. Each thread gets its own SQLite connection.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from clearlift_cli.errors import ConfigError, NotFound, StoreError
from clearlift_cli.models import Connection
from clearlift_cli.pgconnect import PgLimits
from clearlift_cli.redact import redact
from clearlift_cli.timeutil import SYSTEM_CLOCK, Clock, iso_z

BUSY_TIMEOUT_MS = 30_000
# How long the record of each schedule / consume / refresh-tokens run is kept.
RUNS_KEPT_SECONDS = 7 * 86400
# 4: the index on live jobs (adoption); 5: clearlift_runs, clearlift_job_totals
SCHEMA_VERSION = 5

D1_TABLES = """
CREATE TABLE IF NOT EXISTS platform_connections (
  id TEXT PRIMARY KEY,
  organization_id TEXT NOT NULL,
  platform TEXT NOT NULL,
  account_id TEXT NOT NULL,
  account_name TEXT,
  connected_by TEXT,
  connected_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  last_synced_at DATETIME,
  sync_status TEXT DEFAULT 'pending',
  sync_error TEXT,
  is_active INTEGER DEFAULT 1,
  settings TEXT DEFAULT '{}',
  credentials_encrypted TEXT,
  refresh_token_encrypted TEXT,
  expires_at DATETIME,
  scopes TEXT,
  UNIQUE (organization_id, platform, account_id)
);
CREATE TABLE IF NOT EXISTS sync_jobs (
  id TEXT PRIMARY KEY,
  organization_id TEXT NOT NULL,
  connection_id TEXT NOT NULL,
  status TEXT DEFAULT 'pending',
  job_type TEXT DEFAULT 'full',
  started_at DATETIME,
  completed_at DATETIME,
  error_message TEXT,
  records_synced INTEGER DEFAULT 0,
  created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  metadata TEXT DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS onboarding_progress (
  user_id TEXT NOT NULL,
  organization_id TEXT NOT NULL,
  current_step TEXT DEFAULT 'welcome',
  services_connected INTEGER DEFAULT 0,
  first_sync_completed BOOLEAN DEFAULT FALSE,
  completed_at DATETIME,
  created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  updated_at DATETIME DEFAULT CURRENT_TIMESTAMP,
  UNIQUE (user_id, organization_id)
);
"""

# Columns later versions of the API worker's schema add (name, declaration).
LATER_COLUMNS = {
    "platform_connections": [
        ("needs_reauth", "BOOLEAN DEFAULT FALSE"),
        ("reauth_reason", "TEXT"),
        ("reauth_detected_at", "DATETIME"),
        ("consecutive_auth_failures", "INTEGER DEFAULT 0"),
    ],
    "sync_jobs": [
        ("updated_at", "DATETIME"),
        ("current_phase", "TEXT"),
        ("total_records", "INTEGER"),
        ("progress_percentage", "INTEGER DEFAULT 0"),
    ],
}

CLEARLIFT_TABLES = """
CREATE TABLE IF NOT EXISTS clearlift_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sync_queue (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL UNIQUE,
  connection_id TEXT NOT NULL,
  platform TEXT NOT NULL,
  body TEXT NOT NULL,
  priority INTEGER NOT NULL DEFAULT 1,
  state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'leased', 'done', 'dead')),
  visible_at REAL NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL DEFAULT 4,
  lease_owner TEXT,
  lease_token TEXT,
  last_error TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  finished_at TEXT
);
CREATE INDEX IF NOT EXISTS sync_queue_claim
  ON sync_queue (priority, visible_at) WHERE state IN ('ready', 'leased');
CREATE UNIQUE INDEX IF NOT EXISTS sync_queue_one_live_per_connection
  ON sync_queue (connection_id) WHERE state IN ('ready', 'leased');
CREATE INDEX IF NOT EXISTS sync_queue_dead ON sync_queue (finished_at) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS sync_queue_leased ON sync_queue (visible_at) WHERE state = 'leased';
CREATE TABLE IF NOT EXISTS clearlift_platform_pauses (
  platform TEXT PRIMARY KEY, until REAL NOT NULL, reason TEXT
);
CREATE TABLE IF NOT EXISTS clearlift_coverage (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  connection_id TEXT NOT NULL,
  job_id TEXT NOT NULL,
  start_date TEXT NOT NULL,
  end_date TEXT NOT NULL,
  records INTEGER NOT NULL,
  synced_at TEXT NOT NULL,
  UNIQUE (job_id, start_date)
);
CREATE INDEX IF NOT EXISTS clearlift_coverage_conn ON clearlift_coverage (connection_id, start_date);
CREATE TABLE IF NOT EXISTS clearlift_connection_state (
  connection_id TEXT PRIMARY KEY,
  last_attribution_window_at TEXT
);
CREATE TABLE IF NOT EXISTS clearlift_runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  command TEXT NOT NULL,
  host TEXT NOT NULL,
  started_at REAL NOT NULL,
  finished_at REAL NOT NULL,
  ok INTEGER NOT NULL,
  summary TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS clearlift_runs_command ON clearlift_runs (command, finished_at);
CREATE TABLE IF NOT EXISTS clearlift_job_totals (
  platform TEXT NOT NULL,
  outcome TEXT NOT NULL,
  jobs INTEGER NOT NULL DEFAULT 0,
  records INTEGER NOT NULL DEFAULT 0,
  seconds REAL NOT NULL DEFAULT 0,
  PRIMARY KEY (platform, outcome)
);
CREATE INDEX IF NOT EXISTS clearlift_conn_due
  ON platform_connections (is_active, julianday(last_synced_at));
CREATE INDEX IF NOT EXISTS clearlift_conn_interval_override
  ON platform_connections (id) WHERE instr(settings, 'sync_interval_minutes') > 0;
CREATE INDEX IF NOT EXISTS clearlift_conn_expiry
  ON platform_connections (julianday(expires_at)) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS clearlift_jobs_conn_status ON sync_jobs (connection_id, status);
CREATE INDEX IF NOT EXISTS clearlift_jobs_conn_created ON sync_jobs (connection_id, created_at);
CREATE INDEX IF NOT EXISTS clearlift_jobs_live ON sync_jobs (status) WHERE status IN ('pending', 'running');
"""

CONNECTION_COLUMNS = (
    "id, organization_id, platform, account_id, account_name, connected_by, connected_at, "
    "last_synced_at, sync_status, sync_error, is_active, settings, credentials_encrypted, "
    "refresh_token_encrypted, expires_at, scopes, needs_reauth, reauth_reason, "
    "reauth_detected_at, consecutive_auth_failures"
)


# What status shows of a connection (the tokens stay out: cheaper, and never displayed).
STATUS_COLUMNS = (
    "id, organization_id, platform, account_id, account_name, connected_by, last_synced_at, "
    "sync_status, sync_error, is_active, settings, needs_reauth, reauth_reason, reauth_detected_at"
)


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


# Raised by either backend when a uniqueness rule refuses a write (PostgreSQL's errors are
# translated to this class by its connection wrapper).
IntegrityError = sqlite3.IntegrityError


class Store:
    """The SQLite store. Use ``open_store(settings.db)``; call ``migrate()`` (``init``).

    SQL here and in queue/scheduler/consumer is written in the subset SQLite and
    PostgreSQL share (``?`` placeholders are translated for PostgreSQL); the few places
    that differ ask the store (``skip_locked``, ``lock_scheduling``, ``has_table``)."""

    backend = "sqlite"
    # appended to the claim's sub-select: PostgreSQL skips rows other consumers hold
    skip_locked = ""

    def __init__(self, path: str, *, clock: Clock = SYSTEM_CLOCK, create: bool = False):
        self.path = path
        self.clock = clock
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._create = create
        p = Path(path)
        if not create and not p.exists():
            raise StoreError(f"store {path} does not exist: run `clearlift init` (or set CLEARLIFT_DB)")
        if create and not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            # Created 0600 before SQLite opens it: it holds encrypted tokens.
            fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self.conn()  # fail early on a file that is not a database

    # -- connections per thread ------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._connect()
            self._local.conn = c
        return c

    def _connect(self) -> sqlite3.Connection:
        try:
            c = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path} cannot be opened as a SQLite database: {exc}") from None
        try:
            c.row_factory = sqlite3.Row
            c.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Only `init` turns a database into a clearlift store; every other command refuses
            # one that is not (require_schema) and must leave its journal mode as it found it.
            if (
                not self._create
                and c.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'clearlift_meta'"
                ).fetchone()
                is None
            ):
                with self._all_lock:
                    self._all.append(c)
                return c
            mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            c.execute("PRAGMA synchronous = NORMAL")
            # 64 MB of page cache (allocated only as used): scheduling at 1M connections
            # otherwise misses the default 2 MB on every random-key insert.
            c.execute("PRAGMA cache_size = -65536")
        except sqlite3.DatabaseError as exc:
            c.close()
            text = str(exc)
            if not isinstance(exc, sqlite3.OperationalError) or "locked" in text or "busy" in text:
                raise StoreError(f"store {self.path} cannot be opened as a SQLite database: {text}") from None
            # WAL must create <store>-wal and <store>-shm beside the file and write to both.
            raise StoreError(
                f"store {self.path} cannot use WAL mode ({text}): the store file and its "
                "directory must be writable, on a local filesystem (not NFS, not read-only)"
            ) from None
        if str(mode).lower() != "wal":
            raise StoreError(
                f"store {self.path} cannot use WAL mode (journal_mode is {mode!r}); put it on "
                "a local filesystem that supports shared memory (not NFS, not read-only)"
            )
        with self._all_lock:
            self._all.append(c)
        return c

    def close(self) -> None:
        with self._all_lock:
            for c in self._all:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (SQLite: ``BEGIN IMMEDIATE``): committed on clean exit, else
        rolled back. Driver errors become one clear StoreError, never a raw traceback."""
        c = self.conn()
        self._begin(c)
        try:
            yield c
        except self._driver_errors as exc:  # e.g. a read-only store
            self._rollback(c)
            raise self._wrap(exc) from None
        except BaseException:
            self._rollback(c)
            raise
        else:
            try:
                c.execute("COMMIT")
            except StoreError as exc:
                self._rollback(c)
                raise exc from None
            except self._driver_errors as exc:
                self._rollback(c)
                raise self._wrap(exc) from None

    # errors of the driver that write() turns into StoreError
    _driver_errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def _begin(self, c: Any) -> None:
        for attempt in range(20):
            try:
                c.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                # busy_timeout already waited; a few more tries ride out long writers
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == 19:
                    raise self._wrap(exc) from None
                time.sleep(0.05 * (attempt + 1))

    def _rollback(self, c: Any) -> None:
        """Roll back if a transaction is still open (SQLite ends some on its own after an error)."""
        if c.in_transaction:
            c.execute("ROLLBACK")

    def read(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        try:
            return self.conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._wrap(exc) from None

    def _wrap(self, exc: Exception) -> StoreError:
        text = str(exc)
        if "no such table" in text:
            return StoreError(f"store {self.path} lacks clearlift's tables ({text}): run `clearlift init`")
        if "readonly" in text:
            return StoreError(f"store {self.path} is read-only: {text}")
        return StoreError(f"store {self.path}: {redact(text)}")

    def now_iso(self) -> str:
        return iso_z(self.clock.now())

    @property
    def display(self) -> str:
        return self.path

    def lock_scheduling(self, c: Any) -> None:
        """Serialise job creation across processes (SQLite: BEGIN IMMEDIATE already does)."""

    def has_table(self, name: str) -> bool:
        return bool(self.read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    # -- schema ---------------------------------------------------------------------------

    def schema_version(self) -> int:
        try:
            row = (
                self.conn()
                .execute("SELECT value FROM clearlift_meta WHERE key = 'schema_version'")
                .fetchone()
            )
        except sqlite3.OperationalError:
            return 0
        return _version(row[0] if row else None, self.path)

    def migrate(self) -> list[str]:
        """Create or upgrade the store; idempotent. Returns what was changed."""
        changes: list[str] = []
        with self.write() as c:
            before = self.schema_version()
            self._refuse_newer(before)
            existing = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for stmt in _statements(D1_TABLES):
                c.execute(stmt)
            for table in ("platform_connections", "sync_jobs", "onboarding_progress"):
                if table not in existing:
                    changes.append(f"created table {table}")
            for table, cols in LATER_COLUMNS.items():
                have = {r[1] for r in c.execute(f"PRAGMA table_info({table})")}
                for name, decl in cols:
                    if name not in have:
                        c.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
                        changes.append(f"added column {table}.{name}")
            for stmt in _statements(CLEARLIFT_TABLES):
                c.execute(stmt)
            if before < SCHEMA_VERSION:
                c.execute(
                    "INSERT INTO clearlift_meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
                changes.append(f"store schema {before} -> {SCHEMA_VERSION}")
        return changes

    def require_schema(self) -> None:
        version = self.schema_version()
        self._refuse_newer(version)
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} is not initialised for this clearlift version: run `clearlift init`"
            )

    def _refuse_newer(self, version: int) -> None:
        """A store a newer clearlift upgraded may hold what this one would corrupt."""
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} is at schema version {version}, newer than this clearlift "
                f"understands ({SCHEMA_VERSION}): upgrade clearlift on this host"
            )

    # -- connections ------------------------------------------------------------------------

    def get_connection(self, connection_id: str) -> Connection:
        rows = self.read(
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
        return [Connection.from_row(r) for r in self.read(sql, params)]

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
        with self.write() as c:
            existed = (
                c.execute(
                    "SELECT 1 FROM platform_connections WHERE organization_id = ? AND platform = ? "
                    "AND account_id = ?",
                    (organization_id, platform, account_id),
                ).fetchone()
                is not None
            )
            c.execute(
                """
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
                """,
                (
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
                ),
            )
        return cid, not existed

    def set_active(self, connection_id: str, active: bool) -> None:
        with self.write() as c:
            n = c.execute(
                "UPDATE platform_connections SET is_active = ? WHERE id = ?",
                (1 if active else 0, connection_id),
            ).rowcount
        if n == 0:
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
        with self.write() as c:
            n = c.execute(
                """
                UPDATE platform_connections
                   SET credentials_encrypted = ?, expires_at = ?,
                       refresh_token_encrypted = coalesce(?, refresh_token_encrypted)
                 WHERE id = ? AND coalesce(credentials_encrypted, '') = coalesce(CAST(? AS TEXT), '')
                """,
                (
                    credentials_encrypted,
                    expires_at,
                    refresh_token_encrypted,
                    connection_id,
                    old_credentials_encrypted,
                ),
            ).rowcount
        return n == 1

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
        row. Returns whether the connection now needs re-authorisation."""
        now = self.now_iso()
        reason = redact(reason)
        with self.write() as c:
            row = c.execute(
                "SELECT coalesce(consecutive_auth_failures, 0) FROM platform_connections WHERE id = ?",
                (connection_id,),
            ).fetchone()
            if row is None:
                return False
            count = int(row[0]) + 1
            flag = definitive or count >= threshold
            c.execute(
                """
                UPDATE platform_connections
                   SET consecutive_auth_failures = ?, sync_status = 'failed', sync_error = ?,
                       needs_reauth = CASE WHEN ? = 1 THEN 1 ELSE needs_reauth END,
                       reauth_reason = CASE WHEN ? = 1 THEN ? ELSE reauth_reason END,
                       reauth_detected_at = CASE WHEN ? = 1 AND coalesce(needs_reauth, 0) = 0
                                                 THEN ? ELSE reauth_detected_at END
                 WHERE id = ?
                """,
                (count, f"{prefix}: {reason}", int(flag), int(flag), reason, int(flag), now, connection_id),
            )
        return flag

    # -- jobs ------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> sqlite3.Row | None:
        rows = self.read("SELECT * FROM sync_jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def latest_job(self, connection_id: str) -> sqlite3.Row | None:
        rows = self.read(
            "SELECT * FROM sync_jobs WHERE connection_id = ? ORDER BY created_at DESC, id DESC LIMIT 1",
            (connection_id,),
        )
        return rows[0] if rows else None

    def live_job(self, connection_id: str) -> sqlite3.Row | None:
        rows = self.read(
            "SELECT * FROM sync_jobs WHERE connection_id = ? AND status IN ('pending', 'running') "
            "ORDER BY created_at DESC LIMIT 1",
            (connection_id,),
        )
        return rows[0] if rows else None

    def start_job(self, job_id: str, connection_id: str) -> None:
        now = self.now_iso()
        with self.write() as c:
            c.execute(
                "UPDATE sync_jobs SET status = 'running', started_at = coalesce(started_at, ?), "
                "updated_at = ?, current_phase = 'starting', error_message = NULL WHERE id = ?",
                (now, now, job_id),
            )
            c.execute(
                "UPDATE platform_connections SET sync_status = 'syncing' WHERE id = ?",
                (connection_id,),
            )

    def job_progress(self, job_id: str, phase: str, done: int, total: int | None) -> None:
        pct = 0
        if total:
            pct = max(0, min(100, int(done * 100 / total)))
        with self.write() as c:
            c.execute(
                "UPDATE sync_jobs SET current_phase = ?, total_records = ?, progress_percentage = ?, "
                "updated_at = ? WHERE id = ? AND status = 'running'",
                (phase, total, pct, self.now_iso(), job_id),
            )

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

    # -- platform-wide pauses (app-level rate limits) ----------------------------------------

    def pause_platform(self, c: sqlite3.Connection, platform: str, until_epoch: float, reason: str) -> None:
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

    # -- runs of the cron commands and job totals (doctor, metrics) --------------------------

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
                "SELECT platform, outcome, jobs, records, seconds FROM clearlift_job_totals "
                "ORDER BY platform, outcome"
            )
        ]

    # -- the operator's view of connections (status, doctor, metrics) ------------------------

    def connection_counts(self) -> list[tuple[str, bool, str, bool, int, int]]:
        """Connections grouped: (platform, is_active, sync_status, needs_reauth, count,
        how many of them hold a token that expires or a refresh token)."""
        return [
            (r[0], bool(r[1]), r[2] or "pending", bool(r[3]), int(r[4]), int(r[5]))
            for r in self.read(
                "SELECT platform, coalesce(is_active, 0) != 0, sync_status, coalesce(needs_reauth, 0) != 0, "
                "count(*), count(*) FILTER (WHERE expires_at IS NOT NULL OR refresh_token_encrypted IS NOT NULL) "
                "FROM platform_connections GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
            )
        ]

    def connections_with_latest_job(
        self, *, organization_id: str | None = None, platform: str | None = None
    ) -> list[sqlite3.Row]:
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
            "  ORDER BY l.created_at DESC, l.id DESC LIMIT 1) WHERE 1=1"
        )
        where, params = _connection_filter("c.", organization_id, platform)
        return self.read(sql + where + " ORDER BY c.organization_id, c.platform, c.account_id", params)

    def token_sample(self, limit: int) -> list[tuple[str, str, str]]:
        """Up to ``limit`` stored tokens of active connections, picked at random:
        (connection id, column, ciphertext)."""
        rows = self.read(
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

    @property
    def local_files(self) -> list[str]:
        """Files of this store on this host (disk space checks); none for a server."""
        return [self.path]

    def lift_platform_pause(self, c: sqlite3.Connection, platform: str) -> bool:
        """Remove ``platform``'s pause (inside the caller's transaction); False if it had none."""
        row = c.execute(
            "DELETE FROM clearlift_platform_pauses WHERE platform = ? RETURNING until", (platform,)
        ).fetchone()
        return row is not None and row[0] > self.clock.time()

    def deferred_messages(
        self, connection_id: str | None = None, *, paused_platforms: Iterable[str] = ()
    ) -> list[sqlite3.Row]:
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


_DEFERRED_SQL = "SELECT connection_id, platform, visible_at, last_error FROM sync_queue WHERE state = 'ready'"


def _statements(script: str) -> Iterable[str]:
    for stmt in script.split(";"):
        if stmt.strip():
            yield stmt


def _version(value: Any, where: str) -> int:
    """clearlift_meta's schema_version as a number (0 when absent)."""
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StoreError(
            f"store {where} has an unreadable schema version {str(value)[:20]!r} in clearlift_meta"
        ) from None


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


def new_job_id() -> str:
    return str(uuid.uuid4())


# `scheme://` at the start of a store setting: a URL, never a file path.
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SUPPORTED_STORE_URLS = "a SQLite file path, sqlite:///path, or postgresql://… (many hosts)"


def sqlite_path(url: str) -> str:
    """The file a SQLite store setting names (a path, or ``sqlite:///path`` as SQLAlchemy
    spells it, four slashes for an absolute path). ConfigError for any other URL scheme:
    ``d1://…`` or ``mysql://…`` must not become a directory named ``d1:``."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    m = _URL_SCHEME.match(url)
    if m or url.lower().startswith("sqlite:"):
        scheme = m.group(1) if m else "sqlite"
        raise ConfigError(
            f"unsupported store URL {_masked(url, scheme)!r}: CLEARLIFT_DB (--db) must be "
            f"{SUPPORTED_STORE_URLS}",
            hint="set CLEARLIFT_DB to one of those (sqlite:///path has three slashes, four for an absolute path)",
        )
    return url


def _masked(url: str, scheme: str) -> str:
    """``url`` with its password masked; only the scheme when it does not parse."""
    from clearlift_cli.redact import mask_url

    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError:
        return f"{scheme}://…"
    return mask_url(url)


def open_store(
    url: str, *, clock: Clock = SYSTEM_CLOCK, create: bool = False, pg_limits: PgLimits | None = None
) -> Store:
    """Open the store at ``url``: a file path, ``sqlite:///path``, or ``postgresql://…``
    (whose connections get ``pg_limits``). Any other URL scheme is a ConfigError (exit 3),
    never a file path."""
    if _is_postgres(url):
        from clearlift_cli.store_pg import PgStore

        return PgStore(url, clock=clock, limits=pg_limits)
    path = sqlite_path(url)
    try:
        return Store(path, clock=clock, create=create)
    except OSError as exc:
        raise StoreError(f"store {path} cannot be created: {exc.strerror}") from None


__all__ = ["Store", "open_store", "sqlite_path", "new_job_id", "IntegrityError"]
