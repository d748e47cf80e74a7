"""The control plane on PostgreSQL (``CLEARLIFT_DB=postgresql://…``), for many hosts.

The same tables as the SQLite store (D1-shaped ``platform_connections``, ``sync_jobs``,
``onboarding_progress`` — timestamps kept as the text the API worker writes, 0/1 flags as
integers — plus ``sync_queue`` and ``clearlift_*``), in their own schema (``clearlift``
unless the URL's ``options`` set a ``search_path``). The shared SQL runs unchanged: ``?``
placeholders are translated, and two SQLite functions it uses (``julianday``, ``instr``)
are defined in the schema. Claims add ``FOR UPDATE SKIP LOCKED``; job creation takes a
transaction-scoped advisory lock, so any number of schedulers and consumers can run on any
number of hosts.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from clearlift_cli import pgconnect
from clearlift_cli import redact as redact_secrets
from clearlift_cli.errors import ConfigError, StoreError
from clearlift_cli.pgconnect import DEFAULT_LIMITS, PgLimits
from clearlift_cli.redact import mask_url, redact, scrub, unencoded_userinfo, unquote_error, url_passwords
from clearlift_cli.store import SCHEMA_VERSION, IntegrityError, Store, _version
from clearlift_cli.timeutil import SYSTEM_CLOCK, Clock

DEFAULT_SCHEMA = "clearlift"
_SCHEDULE_LOCK = 7_221_001  # advisory lock key for job creation
_MIGRATE_LOCK = 7_221_002

FUNCTIONS = [
    # SQLite's julianday() for the two spellings of timestamps (zone-less text is UTC);
    # NULL for anything unparseable, like SQLite. Immutable so it can back an index.
    r"""
    CREATE OR REPLACE FUNCTION julianday(ts text) RETURNS double precision
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
    BEGIN
      -- only ISO-8601 spellings, as SQLite: PostgreSQL alone would also read 'yesterday'
      IF ts IS NULL OR ts !~ '^\d{4}-\d\d-\d\d([ T]\d\d:\d\d(:\d\d(\.\d+)?)?)?(Z|z|[+-]\d\d(:?\d\d)?)?$' THEN
        RETURN NULL;
      END IF;
      IF ts ~ '(Z|z|[+-]\d\d(:?\d\d)?)$' AND ts ~ '\d\d:\d\d' THEN
        RETURN extract(epoch FROM ts::timestamptz) / 86400.0 + 2440587.5;
      END IF;
      RETURN extract(epoch FROM (ts || '+00')::timestamptz) / 86400.0 + 2440587.5;
    EXCEPTION WHEN others THEN
      RETURN NULL;
    END
    $fn$
    """,
    """
    CREATE OR REPLACE FUNCTION instr(haystack text, needle text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT strpos(haystack, needle) $fn$
    """,
]

NOW_TEXT = "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"

TABLES = [
    f"""
    CREATE TABLE IF NOT EXISTS platform_connections (
      id TEXT PRIMARY KEY, organization_id TEXT NOT NULL, platform TEXT NOT NULL,
      account_id TEXT NOT NULL, account_name TEXT, connected_by TEXT,
      connected_at TEXT DEFAULT {NOW_TEXT}, last_synced_at TEXT,
      sync_status TEXT DEFAULT 'pending', sync_error TEXT, is_active INTEGER DEFAULT 1,
      settings TEXT DEFAULT '{{}}', credentials_encrypted TEXT, refresh_token_encrypted TEXT,
      expires_at TEXT, scopes TEXT, needs_reauth INTEGER DEFAULT 0, reauth_reason TEXT,
      reauth_detected_at TEXT, consecutive_auth_failures INTEGER DEFAULT 0,
      UNIQUE (organization_id, platform, account_id)
    )""",
    f"""
    CREATE TABLE IF NOT EXISTS sync_jobs (
      id TEXT PRIMARY KEY, organization_id TEXT NOT NULL, connection_id TEXT NOT NULL,
      status TEXT DEFAULT 'pending', job_type TEXT DEFAULT 'full', started_at TEXT,
      completed_at TEXT, error_message TEXT, records_synced INTEGER DEFAULT 0,
      created_at TEXT DEFAULT {NOW_TEXT}, metadata TEXT DEFAULT '{{}}', updated_at TEXT,
      current_phase TEXT, total_records INTEGER, progress_percentage INTEGER DEFAULT 0
    )""",
    f"""
    CREATE TABLE IF NOT EXISTS onboarding_progress (
      user_id TEXT NOT NULL, organization_id TEXT NOT NULL, current_step TEXT DEFAULT 'welcome',
      services_connected INTEGER DEFAULT 0, first_sync_completed INTEGER DEFAULT 0,
      completed_at TEXT, created_at TEXT DEFAULT {NOW_TEXT}, updated_at TEXT DEFAULT {NOW_TEXT},
      UNIQUE (user_id, organization_id)
    )""",
    "CREATE TABLE IF NOT EXISTS clearlift_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """
    CREATE TABLE IF NOT EXISTS sync_queue (
      id BIGSERIAL PRIMARY KEY, job_id TEXT NOT NULL UNIQUE, connection_id TEXT NOT NULL,
      platform TEXT NOT NULL, body TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 1,
      state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'leased', 'done', 'dead')),
      visible_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
      max_attempts INTEGER NOT NULL DEFAULT 4, lease_owner TEXT, lease_token TEXT,
      last_error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, finished_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS sync_queue_claim ON sync_queue (priority, visible_at) "
    "WHERE state IN ('ready', 'leased')",
    "CREATE UNIQUE INDEX IF NOT EXISTS sync_queue_one_live_per_connection ON sync_queue (connection_id) "
    "WHERE state IN ('ready', 'leased')",
    "CREATE INDEX IF NOT EXISTS sync_queue_dead ON sync_queue (finished_at) WHERE state = 'dead'",
    "CREATE INDEX IF NOT EXISTS sync_queue_leased ON sync_queue (visible_at) WHERE state = 'leased'",
    "CREATE TABLE IF NOT EXISTS clearlift_platform_pauses (platform TEXT PRIMARY KEY, "
    "until DOUBLE PRECISION NOT NULL, reason TEXT)",
    """
    CREATE TABLE IF NOT EXISTS clearlift_coverage (
      id BIGSERIAL PRIMARY KEY, connection_id TEXT NOT NULL, job_id TEXT NOT NULL,
      start_date TEXT NOT NULL, end_date TEXT NOT NULL, records INTEGER NOT NULL,
      synced_at TEXT NOT NULL, UNIQUE (job_id, start_date)
    )""",
    "CREATE INDEX IF NOT EXISTS clearlift_coverage_conn ON clearlift_coverage (connection_id, start_date)",
    "CREATE TABLE IF NOT EXISTS clearlift_connection_state (connection_id TEXT PRIMARY KEY, "
    "last_attribution_window_at TEXT)",
    """
    CREATE TABLE IF NOT EXISTS clearlift_runs (
      id BIGSERIAL PRIMARY KEY, command TEXT NOT NULL, host TEXT NOT NULL,
      started_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION NOT NULL,
      ok INTEGER NOT NULL, summary TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX IF NOT EXISTS clearlift_runs_command ON clearlift_runs (command, finished_at)",
    """
    CREATE TABLE IF NOT EXISTS clearlift_job_totals (
      platform TEXT NOT NULL, outcome TEXT NOT NULL, jobs BIGINT NOT NULL DEFAULT 0,
      records BIGINT NOT NULL DEFAULT 0, seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
      PRIMARY KEY (platform, outcome)
    )""",
    "CREATE INDEX IF NOT EXISTS clearlift_conn_due ON platform_connections (is_active, julianday(last_synced_at))",
    "CREATE INDEX IF NOT EXISTS clearlift_conn_interval_override ON platform_connections (id) "
    "WHERE instr(settings, 'sync_interval_minutes') > 0",
    "CREATE INDEX IF NOT EXISTS clearlift_conn_expiry ON platform_connections (julianday(expires_at)) "
    "WHERE expires_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS clearlift_jobs_conn_status ON sync_jobs (connection_id, status)",
    "CREATE INDEX IF NOT EXISTS clearlift_jobs_conn_created ON sync_jobs (connection_id, created_at)",
    "CREATE INDEX IF NOT EXISTS clearlift_jobs_live ON sync_jobs (status) WHERE status IN ('pending', 'running')",
]

_QMARK = re.compile(r"\?")


class PgRow:
    """A row that reads like ``sqlite3.Row``: by position, by name, ``keys()``, ``dict(row)``."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: tuple):
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, (int, slice)):
            return self._values[key]
        return self._values[self._names[key]]

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _row_factory(cursor):
    names = {col.name: i for i, col in enumerate(cursor.description or [])}
    return lambda values: PgRow(names, tuple(values))


class PgConnection:
    """The slice of the sqlite3.Connection API the store's callers use."""

    def __init__(self, raw, store: PgStore):
        self.raw = raw
        self.store = store

    def execute(self, sql: str, params: Any = None):
        import psycopg

        if params:
            sql = _QMARK.sub("%s", sql.replace("%", "%%"))
        cur = self.raw.cursor(row_factory=_row_factory)
        try:
            cur.execute(sql, tuple(params) if params else None, prepare=False)
        except psycopg.errors.IntegrityError as exc:
            raise IntegrityError(redact(exc)) from None
        except psycopg.Error as exc:
            raise self.store._wrap(exc) from None
        return cur

    def executemany(self, sql: str, seq: Any):
        """One statement for many parameter rows (psycopg pipelines them); ``rowcount`` is
        the total over all rows, as with sqlite3."""
        import psycopg

        sql = _QMARK.sub("%s", sql.replace("%", "%%"))
        cur = self.raw.cursor()
        try:
            cur.executemany(sql, [tuple(p) for p in seq])
        except psycopg.errors.IntegrityError as exc:
            raise IntegrityError(redact(exc)) from None
        except psycopg.Error as exc:
            raise self.store._wrap(exc) from None
        return cur

    def close(self) -> None:
        self.raw.close()


def _schema_from_options(options: str | None) -> str | None:
    m = re.search(r"search_path\s*=\s*([A-Za-z0-9_]+)", options or "")
    return m.group(1) if m else None


class PgStore(Store):
    backend = "postgres"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, *, clock: Clock = SYSTEM_CLOCK, limits: PgLimits | None = None):
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        self.url = url
        self.limits = limits or DEFAULT_LIMITS
        self.path = mask_url(url)
        if unencoded_userinfo(url):
            raise ConfigError(
                f"store URL {self.path} is not valid: percent-encode the user and password "
                "(@ is %40, / is %2F, ? is %3F, # is %23, a space is %20)"
            )
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            # libpq quotes the offending part, which may be the password or the whole URL
            raise ConfigError(f"store URL {self.path} is not valid: {unquote_error(exc)}") from None
        self._secrets = tuple(
            str(s) for s in dict.fromkeys((*url_passwords(url), params.get("password"))) if s
        )
        redact_secrets.register(*self._secrets)
        self.clock = clock
        self._url_options = str(params.get("options") or "")
        explicit = _schema_from_options(self._url_options)
        self.schema = explicit or DEFAULT_SCHEMA
        self._explicit_schema = explicit is not None
        self._local = threading.local()
        self._all: list[PgConnection] = []  # type: ignore[assignment]  # see conn()
        self._all_lock = threading.Lock()
        self.conn()

    @property
    def display(self) -> str:
        return self.path

    # PgStore stands in for Store with its own connection type (PgConnection, not sqlite3's):
    # the three ignores here (conn, _connect, _all) go with the store package's rewrite.
    def conn(self) -> PgConnection:  # type: ignore[override]
        c = getattr(self._local, "conn", None)
        if c is None or c.raw.closed or c.raw.broken:
            c = self._connect()
            self._local.conn = c
        return c

    def _connect(self) -> PgConnection:  # type: ignore[override]
        import psycopg

        kwargs: dict[str, Any] = {"autocommit": True}
        if not self._explicit_schema:  # keep what else the URL's options say
            kwargs["options"] = f"{self._url_options} -csearch_path={self.schema}".strip()
        try:
            raw = pgconnect.connect(self.url, self.limits, application_name="clearlift-store", **kwargs)
            raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        except psycopg.Error as exc:
            raise StoreError(
                f"store {self.path} cannot be reached: {self._scrub(_first_line(exc))}"
            ) from None
        c = PgConnection(raw, self)
        with self._all_lock:
            self._all.append(c)
        return c

    def close(self) -> None:
        with self._all_lock:
            for c in self._all:
                try:
                    c.close()
                except Exception:
                    pass
            self._all.clear()
        self._local = threading.local()

    # PgConnection.execute already turns psycopg errors into StoreError
    _driver_errors = ()

    def _begin(self, c: PgConnection) -> None:
        c.execute("BEGIN")

    def _rollback(self, c: PgConnection) -> None:
        try:
            c.execute("ROLLBACK")
        except StoreError:
            pass  # the connection is gone: the server rolled back already

    def read(self, sql: str, params: Any = ()) -> list:
        return self.conn().execute(sql, params).fetchall()

    def _wrap(self, exc: Exception) -> StoreError:
        import psycopg

        text = self._scrub(_first_line(exc))
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return StoreError(f"store {self.path} lacks clearlift's tables ({text}): run `clearlift init`")
        if isinstance(exc, psycopg.OperationalError):
            return StoreError(f"store {self.path} cannot be reached: {text}")
        return StoreError(f"store {self.path}: {text}")

    def _scrub(self, text: str) -> str:
        return scrub(text, *self._secrets)

    def lock_scheduling(self, c: Any) -> None:
        # Overlapping schedulers wait for each other (safe by design), up to statement_timeout
        # rather than the shorter lock_timeout: a big scheduling run may take minutes.
        c.execute("SELECT set_config('lock_timeout', '0', true)")
        c.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEDULE_LOCK,))

    @property
    def local_files(self) -> list[str]:
        return []

    def has_table(self, name: str) -> bool:
        return bool(
            self.read(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                (self.schema, name),
            )
        )

    def schema_version(self) -> int:
        if not self.has_table("clearlift_meta"):
            return 0
        rows = self.read("SELECT value FROM clearlift_meta WHERE key = 'schema_version'")
        return _version(rows[0][0] if rows else None, self.path)

    def migrate(self) -> list[str]:
        changes: list[str] = []
        with self.write() as c:
            c.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATE_LOCK,))
            before = self.schema_version()
            self._refuse_newer(before)
            for stmt in FUNCTIONS + TABLES:
                c.execute(stmt)
            if before < SCHEMA_VERSION:
                c.execute(
                    "INSERT INTO clearlift_meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
                changes.append(f"store schema {before} -> {SCHEMA_VERSION} (PostgreSQL schema {self.schema})")
        return changes


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# Tables `migrate-store` copies, in an order that keeps references meaningful, with the
# columns that say a row is already there (its identity across stores).
COPIED_TABLES: dict[str, tuple[str, ...]] = {
    "platform_connections": ("id",),
    "onboarding_progress": ("user_id", "organization_id"),
    "sync_jobs": ("id",),
    "sync_queue": ("job_id",),
    "clearlift_coverage": ("job_id", "start_date"),
    "clearlift_platform_pauses": ("platform",),
    "clearlift_connection_state": ("connection_id",),
    "clearlift_job_totals": ("platform", "outcome"),
}
# Tables whose `id` is only a local serial: a row whose id the destination already uses
# is copied under a new one rather than dropped.
_SERIAL_ID = ("sync_queue", "clearlift_coverage")


@dataclass
class CopyResult:
    copied: dict[str, int] = field(default_factory=dict)
    already_there: dict[str, int] = field(default_factory=dict)  # same identity: kept as it is
    renumbered: dict[str, int] = field(default_factory=dict)  # copied under a new serial id
    not_copied: list[tuple[str, str, str]] = field(default_factory=list)  # (table, row, why)

    def to_json(self) -> dict[str, Any]:
        return {
            "copied": self.copied,
            "already_there": self.already_there,
            "renumbered": self.renumbered,
            "not_copied": [{"table": t, "row": k, "reason": r} for t, k, r in self.not_copied],
        }


def copy_store(src: Store, dst: PgStore, *, batch: int = 1000) -> CopyResult:
    """Copy a SQLite store into PostgreSQL once, for a team moving from one host to many.
    Rows already there (same identity) are kept; nothing is dropped silently: a row is
    copied, found already there, copied under a new serial id (queue messages, coverage
    into a control plane already in use), or listed in ``not_copied`` with the reason."""
    dst.migrate()
    result = CopyResult()
    for table, key in COPIED_TABLES.items():
        result.copied[table] = result.already_there[table] = 0
        if not src.has_table(table):
            continue
        src_cols = [r[1] for r in src.read(f"PRAGMA table_info({table})")]
        dst_cols = {
            r[0]
            for r in dst.read(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
                (dst.schema, table),
            )
        }
        cols = [c for c in src_cols if c in dst_cols]
        rows = [dict(zip(cols, r, strict=True)) for r in src.read(f"SELECT {', '.join(cols)} FROM {table}")]
        left = []
        for i in range(0, len(rows), batch):
            with dst.write() as c:
                for row in rows[i : i + batch]:
                    if _insert(c, table, row):
                        result.copied[table] += 1
                    else:
                        left.append(row)
        if table in _SERIAL_ID:
            with dst.write() as c:
                c.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
                )
        with dst.write() as c:
            for row in left:
                where = " AND ".join(f"{k} = ?" for k in key)
                if c.execute(f"SELECT 1 FROM {table} WHERE {where}", [row[k] for k in key]).fetchone():
                    result.already_there[table] += 1
                elif table in _SERIAL_ID and _insert(c, table, {k: v for k, v in row.items() if k != "id"}):
                    result.copied[table] += 1
                    result.renumbered[table] = result.renumbered.get(table, 0) + 1
                else:
                    result.not_copied.append((table, "/".join(str(row[k]) for k in key), _why(table, row)))
    return result


def _insert(c: Any, table: str, row: dict[str, Any]) -> bool:
    names = ", ".join(row)
    marks = ", ".join("?" * len(row))
    return (
        c.execute(
            f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING RETURNING 1",
            tuple(row.values()),
        ).fetchone()
        is not None
    )


def _why(table: str, row: dict[str, Any]) -> str:
    if table == "sync_queue":
        return (
            f"connection {row['connection_id']} already has a queued or running message there; its job "
            "row was copied and `clearlift schedule` adopts it once that message ends"
        )
    return "another row there holds the same unique key"
