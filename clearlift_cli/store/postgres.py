"""The PostgreSQL engine (``CLEARLIFT_DB=postgresql://…``, or ``CLEARLIFT_CONTROL_DB``
beside a live D1), for many hosts.

The same tables as the SQLite engine (store/schema.py: D1-shaped ``platform_connections``,
``sync_jobs``, ``onboarding_progress`` — timestamps kept as the text the API worker writes,
0/1 flags as integers — plus ``sync_queue`` and ``clearlift_*``), in their own schema
(``clearlift`` unless the URL's ``options`` set a ``search_path``). The shared SQL runs
unchanged: ``?`` placeholders are bound as ``%s``, and two SQLite functions it uses
(``julianday``, ``instr``) are defined in the schema. Claims add ``FOR UPDATE SKIP LOCKED``; job creation takes a
transaction-scoped advisory lock, so any number of schedulers and consumers can run on any
number of hosts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from clearlift_cli import pgconnect
from clearlift_cli import redact as redact_secrets
from clearlift_cli.errors import ConfigError, StoreError
from clearlift_cli.pgconnect import DEFAULT_LIMITS, PgLimits
from clearlift_cli.redact import mask_url, redact, scrub, unencoded_userinfo, unquote_error, url_passwords
from clearlift_cli.timeutil import SYSTEM_CLOCK, Clock

from . import schema
from .engine import Engine, IntegrityError

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

    def __init__(self, raw: Any, engine: PgEngine):
        self.raw = raw
        self.store = engine

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


class PgEngine(Engine):
    dialect = "postgres"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"
    integrity_errors: tuple[type[Exception], ...] = (IntegrityError,)

    def __init__(self, url: str, *, clock: Clock = SYSTEM_CLOCK, limits: PgLimits | None = None):
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        super().__init__(clock)
        self.url = url
        self.limits = limits or DEFAULT_LIMITS
        self.masked = mask_url(url)
        if unencoded_userinfo(url):
            raise ConfigError(
                f"store URL {self.masked} is not valid: percent-encode the user and password "
                "(@ is %40, / is %2F, ? is %3F, # is %23, a space is %20)"
            )
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            # libpq quotes the offending part, which may be the password or the whole URL
            raise ConfigError(f"store URL {self.masked} is not valid: {unquote_error(exc)}") from None
        self._secrets = tuple(
            str(s) for s in dict.fromkeys((*url_passwords(url), params.get("password"))) if s
        )
        redact_secrets.register(*self._secrets)
        self._url_options = str(params.get("options") or "")
        explicit = _schema_from_options(self._url_options)
        self.schema = explicit or DEFAULT_SCHEMA
        self._explicit_schema = explicit is not None
        self.conn()

    @property
    def display(self) -> str:
        return self.masked

    def _is_broken(self, c: PgConnection) -> bool:
        return bool(c.raw.closed or c.raw.broken)

    def _connect(self) -> PgConnection:
        import psycopg

        kwargs: dict[str, Any] = {"autocommit": True}
        if not self._explicit_schema:  # keep what else the URL's options say
            kwargs["options"] = f"{self._url_options} -csearch_path={self.schema}".strip()
        try:
            raw = pgconnect.connect(self.url, self.limits, application_name="clearlift-store", **kwargs)
            raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        except psycopg.Error as exc:
            raise StoreError(
                f"store {self.masked} cannot be reached: {self._scrub(_first_line(exc))}"
            ) from None
        return self._remember(PgConnection(raw, self))

    def _begin(self, c: PgConnection) -> None:
        c.execute("BEGIN")

    def _rollback(self, c: PgConnection) -> None:
        try:
            c.execute("ROLLBACK")
        except StoreError:
            pass  # the connection is gone: the server rolled back already

    def read(self, sql: str, params: Any = ()) -> list[Any]:
        return list(self.conn().execute(sql, params).fetchall())

    def _wrap(self, exc: BaseException) -> StoreError:
        import psycopg

        text = self._scrub(_first_line(exc))
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return StoreError(f"store {self.masked} lacks clearlift's tables ({text}): run `clearlift init`")
        if isinstance(exc, psycopg.OperationalError):
            return StoreError(f"store {self.masked} cannot be reached: {text}")
        return StoreError(f"store {self.masked}: {text}")

    def _scrub(self, text: str) -> str:
        return scrub(text, *self._secrets)

    def lock_scheduling(self, c: Any) -> None:
        # Overlapping schedulers wait for each other (safe by design), up to statement_timeout
        # rather than the shorter lock_timeout: a big scheduling run may take minutes.
        c.execute("SELECT set_config('lock_timeout', '0', true)")
        c.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEDULE_LOCK,))

    def has_table(self, name: str) -> bool:
        return bool(
            self.read(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                (self.schema, name),
            )
        )

    def columns(self, c: Any, table: str) -> set[str]:
        return {
            r[0]
            for r in c.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
                (self.schema, table),
            ).fetchall()
        }

    def _lock_migration(self, c: Any) -> None:
        c.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATE_LOCK,))

    def _app_ddl(self) -> list[str]:
        return FUNCTIONS + schema.PG_APP_TABLES

    def _version_note(self) -> str:
        return f" (PostgreSQL schema {self.schema})"


def _first_line(exc: BaseException) -> str:
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


def copy_store(src: Engine, dst: PgEngine, *, batch: int = 1000) -> CopyResult:
    """Copy a SQLite store into PostgreSQL once, for a team moving from one host to many.
    Rows already there (same identity) are kept; nothing is dropped silently: a row is
    copied, found already there, copied under a new serial id (queue messages, coverage
    into a control plane already in use), or listed in ``not_copied`` with the reason."""
    dst.migrate(app_tables=True)
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
