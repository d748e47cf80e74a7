"""The store's tables: ClearLift's (the API worker's) as D1 has them, and clearlift's own,
declared once and compiled per backend.

ClearLift's three tables (``platform_connections``, ``sync_jobs``, ``onboarding_progress``)
are the API worker's: their DDL is its migration text, and clearlift adds only the later
columns the dashboard reads (``LATER_COLUMNS``) when they are missing. clearlift's own
tables (the queue, coverage, state, runs) are declared here as ``Table`` values and
compiled for SQLite or PostgreSQL; ``migrate`` adds any declared column a table lacks, so a
new column is one line here on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clearlift_cli.models import JobStatus

# The statuses of a live job row (one per connection at most).
LIVE = f"('{JobStatus.PENDING.value}', '{JobStatus.RUNNING.value}')"

# 4: the index on live jobs (adoption); 5: clearlift_runs, clearlift_job_totals
SCHEMA_VERSION = 5

# ClearLift's tables as the API worker's D1 migrations create them (SQLite).
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

# The same three tables on PostgreSQL: timestamps kept as the text the API worker writes,
# 0/1 flags as integers, so the shared SQL reads them alike.
_NOW_TEXT = "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"
PG_APP_TABLES = [
    f"""
    CREATE TABLE IF NOT EXISTS platform_connections (
      id TEXT PRIMARY KEY, organization_id TEXT NOT NULL, platform TEXT NOT NULL,
      account_id TEXT NOT NULL, account_name TEXT, connected_by TEXT,
      connected_at TEXT DEFAULT {_NOW_TEXT}, last_synced_at TEXT,
      sync_status TEXT DEFAULT 'pending', sync_error TEXT, is_active INTEGER DEFAULT 1,
      settings TEXT DEFAULT '{{}}', credentials_encrypted TEXT, refresh_token_encrypted TEXT,
      expires_at TEXT, scopes TEXT, UNIQUE (organization_id, platform, account_id)
    )""",
    f"""
    CREATE TABLE IF NOT EXISTS sync_jobs (
      id TEXT PRIMARY KEY, organization_id TEXT NOT NULL, connection_id TEXT NOT NULL,
      status TEXT DEFAULT 'pending', job_type TEXT DEFAULT 'full', started_at TEXT,
      completed_at TEXT, error_message TEXT, records_synced INTEGER DEFAULT 0,
      created_at TEXT DEFAULT {_NOW_TEXT}, metadata TEXT DEFAULT '{{}}'
    )""",
    f"""
    CREATE TABLE IF NOT EXISTS onboarding_progress (
      user_id TEXT NOT NULL, organization_id TEXT NOT NULL, current_step TEXT DEFAULT 'welcome',
      services_connected INTEGER DEFAULT 0, first_sync_completed INTEGER DEFAULT 0,
      completed_at TEXT, created_at TEXT DEFAULT {_NOW_TEXT}, updated_at TEXT DEFAULT {_NOW_TEXT},
      UNIQUE (user_id, organization_id)
    )""",
]

APP_TABLE_NAMES = ("platform_connections", "sync_jobs", "onboarding_progress")

# Columns later versions of the API worker's schema add: (name, SQLite declaration,
# PostgreSQL declaration). Added where missing, on every backend (D1 included).
LATER_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "platform_connections": [
        ("needs_reauth", "BOOLEAN DEFAULT FALSE", "INTEGER DEFAULT 0"),
        ("reauth_reason", "TEXT", "TEXT"),
        ("reauth_detected_at", "DATETIME", "TEXT"),
        ("consecutive_auth_failures", "INTEGER DEFAULT 0", "INTEGER DEFAULT 0"),
    ],
    "sync_jobs": [
        ("updated_at", "DATETIME", "TEXT"),
        ("current_phase", "TEXT", "TEXT"),
        ("total_records", "INTEGER", "INTEGER"),
        ("progress_percentage", "INTEGER DEFAULT 0", "INTEGER DEFAULT 0"),
    ],
}

# Indexes clearlift adds to ClearLift's tables where it owns the database (never on D1).
APP_INDEXES = [
    "CREATE INDEX IF NOT EXISTS clearlift_conn_due ON platform_connections (is_active, julianday(last_synced_at))",
    "CREATE INDEX IF NOT EXISTS clearlift_conn_interval_override ON platform_connections (id) "
    "WHERE instr(settings, 'sync_interval_minutes') > 0",
    "CREATE INDEX IF NOT EXISTS clearlift_conn_expiry ON platform_connections (julianday(expires_at)) "
    "WHERE expires_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS clearlift_jobs_conn_status ON sync_jobs (connection_id, status)",
    "CREATE INDEX IF NOT EXISTS clearlift_jobs_conn_created ON sync_jobs (connection_id, created_at)",
    # the latest job by time: the API worker writes '2025-01-01 21:00:00', clearlift ISO with
    # T and Z, so text order is not time order (created by every `init`; no schema bump)
    "CREATE INDEX IF NOT EXISTS clearlift_jobs_conn_created_jd ON sync_jobs (connection_id, julianday(created_at))",
    "CREATE INDEX IF NOT EXISTS clearlift_jobs_live ON sync_jobs (status) WHERE status IN ('pending', 'running')",
]

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


# -- clearlift's own tables, declared once ---------------------------------------------------

# Column types: the SQLite and the PostgreSQL spelling.
_TYPES = {
    "id": ("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"),
    "text": ("TEXT", "TEXT"),
    "int": ("INTEGER", "INTEGER"),
    "bigint": ("INTEGER", "BIGINT"),
    "real": ("REAL", "DOUBLE PRECISION"),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a key of _TYPES
    extra: str = ""  # NOT NULL, DEFAULT, UNIQUE, CHECK: the same text on both backends

    def ddl(self, dialect: str) -> str:
        sqlite, pg = _TYPES[self.type]
        return f"{self.name} {sqlite if dialect == 'sqlite' else pg} {self.extra}".strip()


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    constraints: tuple[str, ...] = ()  # table constraints, e.g. UNIQUE (a, b)
    indexes: tuple[str, ...] = field(default=())  # CREATE INDEX statements (same text on both)

    def create(self, dialect: str) -> list[str]:
        body = ", ".join([c.ddl(dialect) for c in self.columns] + list(self.constraints))
        return [f"CREATE TABLE IF NOT EXISTS {self.name} ({body})", *self.indexes]


def _c(name: str, type_: str, extra: str = "") -> Column:
    return Column(name, type_, extra)


CONTROL_TABLES: tuple[Table, ...] = (
    Table("clearlift_meta", (_c("key", "text", "PRIMARY KEY"), _c("value", "text", "NOT NULL"))),
    Table(
        "sync_queue",
        (
            _c("id", "id"),
            _c("job_id", "text", "NOT NULL UNIQUE"),
            _c("connection_id", "text", "NOT NULL"),
            _c("platform", "text", "NOT NULL"),
            _c("body", "text", "NOT NULL"),
            _c("priority", "int", "NOT NULL DEFAULT 1"),
            _c(
                "state",
                "text",
                "NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'leased', 'done', 'dead'))",
            ),
            _c("visible_at", "real", "NOT NULL"),
            _c("attempts", "int", "NOT NULL DEFAULT 0"),
            _c("max_attempts", "int", "NOT NULL DEFAULT 4"),
            _c("lease_owner", "text"),
            _c("lease_token", "text"),
            _c("last_error", "text"),
            _c("created_at", "text", "NOT NULL"),
            _c("updated_at", "text", "NOT NULL"),
            _c("finished_at", "text"),
        ),
        indexes=(
            "CREATE INDEX IF NOT EXISTS sync_queue_claim ON sync_queue (priority, visible_at) "
            "WHERE state IN ('ready', 'leased')",
            "CREATE UNIQUE INDEX IF NOT EXISTS sync_queue_one_live_per_connection ON sync_queue "
            "(connection_id) WHERE state IN ('ready', 'leased')",
            "CREATE INDEX IF NOT EXISTS sync_queue_dead ON sync_queue (finished_at) WHERE state = 'dead'",
            "CREATE INDEX IF NOT EXISTS sync_queue_leased ON sync_queue (visible_at) WHERE state = 'leased'",
        ),
    ),
    Table(
        "clearlift_platform_pauses",
        (_c("platform", "text", "PRIMARY KEY"), _c("until", "real", "NOT NULL"), _c("reason", "text")),
    ),
    Table(
        "clearlift_coverage",
        (
            _c("id", "id"),
            _c("connection_id", "text", "NOT NULL"),
            _c("job_id", "text", "NOT NULL"),
            _c("start_date", "text", "NOT NULL"),
            _c("end_date", "text", "NOT NULL"),
            _c("records", "int", "NOT NULL"),
            _c("synced_at", "text", "NOT NULL"),
        ),
        constraints=("UNIQUE (job_id, start_date)",),
        indexes=(
            "CREATE INDEX IF NOT EXISTS clearlift_coverage_conn ON clearlift_coverage (connection_id, start_date)",
        ),
    ),
    Table(
        "clearlift_connection_state",
        (_c("connection_id", "text", "PRIMARY KEY"), _c("last_attribution_window_at", "text")),
    ),
    Table(
        "clearlift_runs",
        (
            _c("id", "id"),
            _c("command", "text", "NOT NULL"),
            _c("host", "text", "NOT NULL"),
            _c("started_at", "real", "NOT NULL"),
            _c("finished_at", "real", "NOT NULL"),
            _c("ok", "int", "NOT NULL"),
            _c("summary", "text", "NOT NULL DEFAULT '{}'"),
        ),
        indexes=(
            "CREATE INDEX IF NOT EXISTS clearlift_runs_command ON clearlift_runs (command, finished_at)",
        ),
    ),
    Table(
        "clearlift_job_totals",
        (
            _c("platform", "text", "NOT NULL"),
            _c("outcome", "text", "NOT NULL"),
            _c("jobs", "bigint", "NOT NULL DEFAULT 0"),
            _c("records", "bigint", "NOT NULL DEFAULT 0"),
            _c("seconds", "real", "NOT NULL DEFAULT 0"),
        ),
        constraints=("PRIMARY KEY (platform, outcome)",),
    ),
)

CONTROL_TABLE_NAMES = tuple(t.name for t in CONTROL_TABLES)


def control_ddl(dialect: str) -> list[str]:
    """Every CREATE statement of clearlift's own tables for ``dialect`` (sqlite | postgres)."""
    return [stmt for table in CONTROL_TABLES for stmt in table.create(dialect)]


def missing_control_columns(dialect: str, existing: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(description, ALTER statement) for every declared column an existing table lacks;
    ``existing`` maps table name to its column names (tables not in it are new)."""
    out = []
    for table in CONTROL_TABLES:
        have = existing.get(table.name)
        if have is None:
            continue
        out += [_alter(table.name, c.name, c.ddl(dialect)) for c in table.columns if c.name not in have]
    return out


def later_column_ddl(dialect: str, existing: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(description, ALTER statement) for the API worker's later columns a table lacks."""
    return [
        _alter(table, name, f"{name} {sqlite_decl if dialect == 'sqlite' else pg_decl}")
        for table, columns in LATER_COLUMNS.items()
        for name, sqlite_decl, pg_decl in columns
        if name not in existing.get(table, set())
    ]


def _alter(table: str, column: str, declaration: str) -> tuple[str, str]:
    """(description, statement) adding ``column`` to ``table``. SQLite cannot add a NOT NULL
    column without a default, nor a key: declare later columns nullable or with a default."""
    return f"added column {table}.{column}", f"ALTER TABLE {table} ADD COLUMN {declaration}"


def statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]
