"""The SQLite engine: a file holding ClearLift's tables (a copy of D1) and clearlift's own,
or, beside a live D1, clearlift's own only (``CLEARLIFT_CONTROL_DB``).

Opening the file sets WAL mode and a busy timeout; every write is a ``BEGIN IMMEDIATE``
transaction. The process's threads share one SQLite connection and take turns on it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clearlift_cli.errors import StoreError
from clearlift_cli.redact import redact
from clearlift_cli.timeutil import SYSTEM_CLOCK, Clock

from . import schema
from .engine import Engine

BUSY_TIMEOUT_MS = 30_000


class SqliteEngine(Engine):
    dialect = "sqlite"
    integrity_errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
    _driver_errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: str, *, clock: Clock = SYSTEM_CLOCK, create: bool = False):
        super().__init__(clock)
        self.path = path
        # One connection for all of this process's threads, used in turns (reads too).
        # SQLite has one writer at a time anyway: threads now wait on this lock instead of
        # meeting SQLITE_BUSY and polling the file lock through the busy handler's sleeps
        # (about ten sleeps and their retries per job at concurrency 16), and the
        # connection's page cache stays valid (with one connection per thread, each write
        # made every other connection read the pages again: ~50 preads a job). Issue 19.
        # Other processes still meet the busy timeout. Re-entrant: a thread inside a write
        # transaction reads on the same connection and sees its own changes, as before.
        self._turn = threading.RLock()
        self._shared: sqlite3.Connection | None = None
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

    @property
    def display(self) -> str:
        return self.path

    @property
    def local_files(self) -> list[str]:
        return [self.path]

    def _connect(self) -> sqlite3.Connection:
        try:
            c = sqlite3.connect(
                self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
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
                return self._remember(c)
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
        return self._remember(c)

    def conn(self) -> Any:
        """The process's connection (see ``__init__``); use it inside ``write`` or
        ``read``, which take turns."""
        with self._turn:
            if self._shared is None:
                self._shared = self._connect()
            return self._shared

    def close(self) -> None:
        with self._turn:
            super().close()
            self._shared = None

    @contextmanager
    def write(self) -> Iterator[Any]:
        with self._turn, super().write() as c:
            yield c

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

    def read(self, sql: str, params: Any = ()) -> list[Any]:
        try:
            with self._turn:
                return self.conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._wrap(exc) from None

    def _wrap(self, exc: BaseException) -> StoreError:
        text = str(exc)
        if "no such table" in text:
            return StoreError(f"store {self.path} lacks clearlift's tables ({text}): run `clearlift init`")
        if "readonly" in text:
            return StoreError(f"store {self.path} is read-only: {text}")
        return StoreError(f"store {self.path}: {redact(text)}")

    def has_table(self, name: str) -> bool:
        return bool(self.read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def columns(self, c: Any, table: str) -> set[str]:
        return {r[1] for r in c.execute(f"PRAGMA table_info({table})")}

    def _app_ddl(self) -> list[str]:
        return schema.statements(schema.D1_TABLES)
