"""The store's contract suite: one ``backend`` fixture, every operation on every backend.

Like huey's storage tests, each test here runs once per backend:

- ``sqlite``: one SQLite file holding ClearLift's tables and clearlift's own;
- ``postgres``: the same in a fresh PostgreSQL schema per test (a test fails, never skips,
  when PostgreSQL cannot be had: see tests/conftest.py ``pg_schema_url``);
- ``d1``: ClearLift's tables in the sandbox D1 (Cloudflare's REST API over a SQLite file,
  served on loopback), clearlift's own in a local SQLite control database.

The fixture yields a migrated ``Store`` on a frozen clock and a ``Queue`` on it. Rows are
seeded and read back with plain SQL on the databases themselves (``sqlite3`` on the SQLite
file or the D1 sandbox's file, ``psycopg`` for PostgreSQL), never through the code under
test, so an operation cannot vouch for itself.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clearlift_cli.d1 import D1Client
from clearlift_cli.models import ClaimedMessage, Connection, JobType, Priority, SyncJobMessage, SyncWindow
from clearlift_cli.sandbox.d1 import D1App
from clearlift_cli.sandbox.server import SandboxServer
from clearlift_cli.store import Store, open_store
from clearlift_cli.store.d1 import D1Tables
from clearlift_cli.store.queue import Queue
from clearlift_cli.store.sqlite import SqliteEngine
from clearlift_cli.timeutil import FrozenClock, iso_z

# The frozen clock's start (a weekday, mid-afternoon UTC) and how the store spells it.
T0 = datetime(2025, 10, 10, 20, 45, 30, tzinfo=UTC)
BACKENDS = ("sqlite", "postgres", "d1")

_QMARK = re.compile(r"\?")


class PlainSql:
    """Plain SQL on one database, ``?`` placeholders, rows as dicts: what the API worker (or
    an operator) would run. Each call commits on its own."""

    def __init__(self, connect: Callable[[], Any], *, postgres: bool = False):
        self._connect = connect
        self._postgres = postgres
        self._pg: Any = None

    def _conn(self) -> Any:
        if self._postgres:
            if self._pg is None:
                self._pg = self._connect()
            return self._pg
        c = self._connect()
        c.row_factory = sqlite3.Row
        return c

    def _sql(self, sql: str) -> str:
        return _QMARK.sub("%s", sql) if self._postgres else sql

    def execute(self, sql: str, params: tuple | list = ()) -> int:
        """Run one statement and commit; the rows it changed."""
        c = self._conn()
        try:
            n = c.execute(self._sql(sql), tuple(params)).rowcount
            if not self._postgres:
                c.commit()
            return n
        finally:
            if not self._postgres:
                c.close()

    def rows(self, sql: str, params: tuple | list = ()) -> list[dict[str, Any]]:
        c = self._conn()
        try:
            return [dict(r) for r in c.execute(self._sql(sql), tuple(params)).fetchall()]
        finally:
            if not self._postgres:
                c.close()

    @contextmanager
    def holding(self, sql: str, params: tuple | list = ()) -> Iterator[Callable[[], None]]:
        """Run ``sql`` in a transaction of its own and hold it open, its locks with it, until
        the block ends (then commit): another host's write caught half-way. Yields a function
        that returns once a writer waits for it. PostgreSQL says who waits; SQLite cannot
        tell, so that function gives the writer a moment (SQLite's BEGIN IMMEDIATE makes the
        order of the two immaterial there)."""
        c = self._connect()
        if not self._postgres:
            c.isolation_level = None
        watcher = self._connect() if self._postgres else None
        try:
            c.execute("BEGIN" if self._postgres else "BEGIN IMMEDIATE")
            c.execute(self._sql(sql), tuple(params))
            if watcher is not None:
                pid = c.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]

                def blocked() -> None:
                    deadline = time.monotonic() + 20
                    while not watcher.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,)
                    ).fetchone():
                        assert time.monotonic() < deadline, "no writer came to wait for the held transaction"
                        time.sleep(0.005)

            else:

                def blocked() -> None:
                    time.sleep(0.2)

            yield blocked
            c.execute("COMMIT")
        finally:
            c.close()
            if watcher is not None:
                watcher.close()

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None


class Backend:
    """A migrated store on one backend, its queue and frozen clock, and plain-SQL access to
    ClearLift's tables (``app``) and to clearlift's control plane (``control``)."""

    def __init__(
        self,
        name: str,
        store: Store,
        clock: FrozenClock,
        app: PlainSql,
        control: PlainSql,
        migrated: list[str],
        d1: tuple[D1App, SandboxServer] | None = None,
    ):
        self.name = name
        self.store = store
        self.clock = clock
        self.queue = Queue(store)  # dead letters fail their jobs (Store.fail_jobs), as consume wires it
        self.app = app
        self.control = control
        self.migrated = migrated  # what the fixture's migrate() changed
        self.d1 = d1

    def __repr__(self) -> str:
        return f"Backend({self.name})"

    # -- time ------------------------------------------------------------------------------

    def now_iso(self) -> str:
        return iso_z(self.clock.now())

    # -- ClearLift's rows, as the API worker writes them -----------------------------------------

    def insert_connection(self, **cols: Any) -> str:
        org = cols.pop("organization_id", "org-1")
        platform = cols.pop("platform", "google")
        account = str(cols.pop("account_id", uuid.uuid4().hex[:10]))
        row = {
            "id": f"{org}-{platform}-{account}",
            "organization_id": org,
            "platform": platform,
            "account_id": account,
            "account_name": f"Account {account}",
            "connected_by": "user-1",
            "connected_at": "2025-10-01T10:00:00.000Z",
            "is_active": 1,
            "settings": "{}",
            "credentials_encrypted": f"cipher-{account}",
            **cols,
        }
        self._insert(self.app, "platform_connections", row)
        return str(row["id"])

    def insert_job(self, connection_id: str, **cols: Any) -> str:
        conn = self.connection(connection_id)
        row = {
            "id": str(uuid.uuid4()),
            "organization_id": conn["organization_id"] if conn else "org-1",
            "connection_id": connection_id,
            "status": "pending",
            "job_type": "full",
            "created_at": self.now_iso(),
            "metadata": "{}",
            **cols,
        }
        self._insert(self.app, "sync_jobs", row)
        return str(row["id"])

    def insert_onboarding(self, user_id: str, organization_id: str, **cols: Any) -> None:
        row = {"user_id": user_id, "organization_id": organization_id, "current_step": "first_sync", **cols}
        self._insert(self.app, "onboarding_progress", row)

    def connection(self, connection_id: str) -> dict[str, Any] | None:
        rows = self.app.rows("SELECT * FROM platform_connections WHERE id = ?", (connection_id,))
        return rows[0] if rows else None

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self.app.rows("SELECT * FROM sync_jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def jobs_of(self, connection_id: str) -> list[dict[str, Any]]:
        return self.app.rows(
            "SELECT * FROM sync_jobs WHERE connection_id = ? ORDER BY created_at, id", (connection_id,)
        )

    # -- clearlift's queue messages, written as rows -------------------------------------------

    def message_for(
        self, job_id: str, connection_id: str, *, job_type: JobType = JobType.FULL, days: int = 7
    ) -> SyncJobMessage:
        """The queue message for ``job_id`` on ``connection_id`` (whose row must exist)."""
        conn = self.connection(connection_id)
        assert conn is not None, connection_id
        now = self.clock.now()
        return SyncJobMessage(
            job_id=job_id,
            connection_id=connection_id,
            organization_id=conn["organization_id"],
            platform=conn["platform"],
            account_id=str(conn["account_id"]),
            job_type=job_type,
            sync_window=SyncWindow(now - timedelta(days=days), now),
            retry_count=0,
            created_at=iso_z(now),
            priority=Priority.HIGH if job_type is JobType.FULL else Priority.NORMAL,
        )

    def insert_message(
        self,
        message: SyncJobMessage,
        *,
        state: str = "ready",
        attempts: int = 0,
        max_attempts: int = 4,
        visible_at: float | None = None,
    ) -> int:
        stamp = self.now_iso()
        self._insert(
            self.control,
            "sync_queue",
            {
                "job_id": message.job_id,
                "connection_id": message.connection_id,
                "platform": message.platform,
                "body": message.dumps(),
                "priority": message.priority.rank,
                "state": state,
                "visible_at": self.clock.time() if visible_at is None else visible_at,
                "attempts": attempts,
                "max_attempts": max_attempts,
                "created_at": stamp,
                "updated_at": stamp,
                "finished_at": stamp if state in ("done", "dead") else None,
            },
        )
        return int(self.message(message.job_id)["id"])

    def queued_job(
        self, connection_id: str, *, status: str = "pending", max_attempts: int = 4, **cols: Any
    ) -> str:
        """A job row and its ready message, as ``schedule`` leaves them."""
        job_id = self.insert_job(connection_id, status=status, **cols)
        self.insert_message(self.message_for(job_id, connection_id), max_attempts=max_attempts)
        return job_id

    def claim(self, job_id: str, *, owner: str = "consumer-1", lease_seconds: float = 60) -> ClaimedMessage:
        (claimed,) = self.queue.claim(owner, limit=1, lease_seconds=lease_seconds, only_job=job_id)
        return claimed

    def started(
        self, connection_id: str, *, lease_seconds: float = 60, **job_cols: Any
    ) -> tuple[str, ClaimedMessage]:
        """A queued job of ``connection_id``, claimed and started as the consumer does."""
        job_id = self.queued_job(connection_id, **job_cols)
        claimed = self.claim(job_id, lease_seconds=lease_seconds)
        assert self.store.start_job(job_id, connection_id)
        return job_id, claimed

    def connection_value(self, connection_id: str) -> Connection:
        """The connection as the consumer holds it (read here with plain SQL)."""
        return Connection.from_row(self.connection(connection_id))

    def message(self, job_id: str) -> dict[str, Any]:
        (row,) = self.control.rows("SELECT * FROM sync_queue WHERE job_id = ?", (job_id,))
        return row

    def messages(self, job_id: str | None = None) -> list[dict[str, Any]]:
        if job_id is None:
            return self.control.rows("SELECT * FROM sync_queue ORDER BY id")
        return self.control.rows("SELECT * FROM sync_queue WHERE job_id = ? ORDER BY id", (job_id,))

    @staticmethod
    def _insert(db: PlainSql, table: str, row: dict[str, Any]) -> None:
        names = ", ".join(row)
        marks = ", ".join("?" * len(row))
        db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(row.values()))


def metadata(row: dict[str, Any] | None) -> Any:
    assert row is not None
    return json.loads(row["metadata"])


def _sqlite(path: Path | str) -> Callable[[], sqlite3.Connection]:
    return lambda: sqlite3.connect(str(path), timeout=30)


def _postgres(url: str) -> Callable[[], Any]:
    def connect() -> Any:
        import psycopg
        from psycopg.rows import dict_row

        return psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=5)

    return connect


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    clock = FrozenClock(T0)
    name = request.param
    d1: tuple[D1App, SandboxServer] | None = None
    if name == "sqlite":
        path = tmp_path / "clearlift.db"
        store = open_store(str(path), clock=clock, create=True)
        app = control = PlainSql(_sqlite(path))
    elif name == "postgres":
        url = request.getfixturevalue("pg_schema_url")
        store = open_store(url, clock=clock)
        app = control = PlainSql(_postgres(url), postgres=True)
    else:
        d1_app = D1App()
        d1_app.create_clearlift_tables()  # as the API worker's first migration left them
        server = SandboxServer(d1_app).start()
        d1 = (d1_app, server)
        client = D1Client(
            account_id=d1_app.account_id,
            database_id=d1_app.database_id,
            token=d1_app.token,
            base_url=d1_app.env(server)["CLEARLIFT_D1_URL"],
            clock=clock,
            timeout=10,
        )
        control_path = tmp_path / "control.db"
        store = Store(SqliteEngine(str(control_path), clock=clock, create=True), D1Tables(client))
        app = PlainSql(lambda: d1_app.connect())
        control = PlainSql(_sqlite(control_path))
    try:
        migrated = store.migrate()
        yield Backend(name, store, clock, app, control, migrated, d1)
    finally:
        store.close()
        app.close()
        control.close()
        if d1 is not None:
            d1_app, server = d1
            # shutdown() waits out serve_forever's poll: let it end off the test's time
            threading.Thread(target=server.stop, daemon=True).start()
            d1_app.close()
