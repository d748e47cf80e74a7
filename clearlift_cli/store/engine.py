"""What the SQL databases behind the store have in common: one connection per thread (the
SQLite engine overrides it: one for the process, used in turns), write transactions that
commit or roll back whole, reads, and errors that say which store failed.

``SqliteEngine`` (store/sqlite.py) and ``PgEngine`` (store/postgres.py) are siblings. The
store's SQL is written once, in the subset SQLite and PostgreSQL share, with ``?``
placeholders; the PostgreSQL engine's connection binds them as ``%s`` (its only dialect
translation) and defines the two SQLite functions the SQL uses (``julianday``, ``instr``).
A unique-key violation surfaces as ``IntegrityError`` from either engine.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from clearlift_cli.errors import StoreError
from clearlift_cli.timeutil import SYSTEM_CLOCK, Clock

from . import schema
from .schema import SCHEMA_VERSION


class IntegrityError(StoreError):
    """A uniqueness rule refused a write (either engine)."""


class Engine(ABC):
    """A SQL database the store runs on. Subclasses open connections and name their dialect."""

    dialect = "sqlite"  # sqlite | postgres
    integrity_errors: tuple[type[Exception], ...] = (IntegrityError,)
    # appended to the claim's sub-select: PostgreSQL skips rows other consumers hold
    skip_locked = ""
    # appended to a fenced read a write then relies on: PostgreSQL locks the row, so a claim
    # committed between the read and the write cannot be overwritten (SQLite's BEGIN
    # IMMEDIATE already keeps every other writer out of the transaction)
    for_update = ""

    def __init__(self, clock: Clock = SYSTEM_CLOCK):
        self.clock = clock
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()

    # -- connections per thread ------------------------------------------------------------

    def conn(self) -> Any:
        c = getattr(self._local, "conn", None)
        if c is None or self._is_broken(c):
            c = self._connect()
            self._local.conn = c
        return c

    def _is_broken(self, c: Any) -> bool:
        return False

    @abstractmethod
    def _connect(self) -> Any: ...

    def _remember(self, c: Any) -> Any:
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

    # -- transactions and reads ------------------------------------------------------------

    # errors of the driver that write() turns into StoreError
    _driver_errors: tuple[type[Exception], ...] = ()

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A write transaction: committed on clean exit, else rolled back. Driver errors
        become one clear StoreError, never a raw traceback."""
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
            except StoreError:
                self._rollback(c)
                raise
            except self._driver_errors as exc:
                self._rollback(c)
                raise self._wrap(exc) from None

    @abstractmethod
    def _begin(self, c: Any) -> None: ...

    @abstractmethod
    def _rollback(self, c: Any) -> None: ...

    @abstractmethod
    def read(self, sql: str, params: Any = ()) -> list[Any]: ...

    @abstractmethod
    def _wrap(self, exc: BaseException) -> StoreError: ...

    @property
    @abstractmethod
    def display(self) -> str:
        """The store's name for messages (a path, or a URL with its password masked)."""

    @property
    def local_files(self) -> list[str]:
        """Files of this database on this host (disk space checks); none for a server."""
        return []

    def lock_scheduling(self, c: Any) -> None:  # noqa: B027 - SQLite's BEGIN IMMEDIATE already does
        """Serialise job creation across processes (inside the caller's transaction)."""

    # -- schema ---------------------------------------------------------------------------

    @abstractmethod
    def has_table(self, name: str) -> bool: ...

    @abstractmethod
    def columns(self, c: Any, table: str) -> set[str]:
        """The column names of ``table`` (empty when it does not exist)."""

    def migrate(self, *, app_tables: bool) -> list[str]:
        """Create or upgrade clearlift's tables (and, with ``app_tables``, ClearLift's
        tables, their later columns and clearlift's indexes on them) in one transaction;
        idempotent. Returns what was changed."""
        changes: list[str] = []
        with self.write() as c:
            self._lock_migration(c)
            before = self.schema_version()
            self.refuse_newer(before)
            existing = {
                t for t in (*schema.APP_TABLE_NAMES, *schema.CONTROL_TABLE_NAMES) if self.columns(c, t)
            }
            if app_tables:
                for stmt in self._app_ddl():
                    c.execute(stmt)
                changes += [f"created table {t}" for t in schema.APP_TABLE_NAMES if t not in existing]
                have = {t: self.columns(c, t) for t in schema.LATER_COLUMNS}
                changes += self._run(c, schema.later_column_ddl(self.dialect, have))
            have = {t: self.columns(c, t) for t in schema.CONTROL_TABLE_NAMES if t in existing}
            changes += self._run(c, schema.missing_control_columns(self.dialect, have))
            for stmt in schema.control_ddl(self.dialect) + (schema.APP_INDEXES if app_tables else []):
                c.execute(stmt)
            self._set_version(c, before, changes, self._version_note())
        return changes

    @staticmethod
    def _run(c: Any, ddl: list[tuple[str, str]]) -> list[str]:
        """Run (description, statement) pairs; their descriptions."""
        for _, stmt in ddl:
            c.execute(stmt)
        return [what for what, _ in ddl]

    def _lock_migration(self, c: Any) -> None:  # noqa: B027 - SQLite's BEGIN IMMEDIATE already does
        """Serialise concurrent `init`s (inside the migration's transaction)."""

    @abstractmethod
    def _app_ddl(self) -> list[str]:
        """CREATE statements for ClearLift's tables (and what they need) on this engine."""

    def _version_note(self) -> str:
        return ""

    def schema_version(self) -> int:
        if not self.has_table("clearlift_meta"):
            return 0
        rows = self.read("SELECT value FROM clearlift_meta WHERE key = 'schema_version'")
        return version_number(rows[0][0] if rows else None, self.display)

    def refuse_newer(self, version: int) -> None:
        """A store a newer clearlift upgraded may hold what this one would corrupt."""
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.display} is at schema version {version}, newer than this clearlift "
                f"understands ({SCHEMA_VERSION}): upgrade clearlift on this host"
            )

    def require_schema(self) -> None:
        version = self.schema_version()
        self.refuse_newer(version)
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"store {self.display} is not initialised for this clearlift version: run `clearlift init`"
            )

    def _set_version(self, c: Any, before: int, changes: list[str], note: str = "") -> None:
        if before < SCHEMA_VERSION:
            c.execute(
                "INSERT INTO clearlift_meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            changes.append(f"store schema {before} -> {SCHEMA_VERSION}{note}")


def version_number(value: Any, where: str) -> int:
    """clearlift_meta's schema_version as a number (0 when absent)."""
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StoreError(
            f"store {where} has an unreadable schema version {str(value)[:20]!r} in clearlift_meta"
        ) from None
