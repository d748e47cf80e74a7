"""The store as a library on real SQLite files: migrations, the files' modes, WAL, the write
lock and rollbacks."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from clearlift_cli.store.schema import LATER_COLUMNS
from clearlift_cli.store.sqlite import BUSY_TIMEOUT_MS
from tests.helpers import new_store, query


def test_migrate_reports_no_changes_the_second_time(tmp_path):
    store = new_store(tmp_path / "s.db")
    try:
        assert store.migrate() == []
        assert store.schema_version() >= 1
        tables = {r[0] for r in store.read("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"platform_connections", "sync_jobs", "onboarding_progress", "sync_queue"} <= tables
        for table, cols in LATER_COLUMNS.items():
            have = {r[1] for r in store.read(f"PRAGMA table_info({table})")}
            assert {name for name, *_ in cols} <= have
    finally:
        store.close()


def test_wal_side_files_are_private_too(tmp_path):
    store = new_store(tmp_path / "s.db")
    try:
        with store.write() as c:
            c.execute("INSERT INTO clearlift_meta (key, value) VALUES ('probe', 'x')")
        for suffix in ("-wal", "-shm"):
            side = tmp_path / f"s.db{suffix}"
            assert side.exists()
            assert stat.S_IMODE(side.stat().st_mode) == 0o600, suffix
    finally:
        store.close()


def test_store_connections_have_wal_and_a_busy_timeout(tmp_path):
    store = new_store(tmp_path / "s.db")
    try:
        c = store.engine.conn()
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
    finally:
        store.close()


def test_write_takes_the_write_lock_at_begin(tmp_path):
    store = new_store(tmp_path / "s.db")
    other = sqlite3.connect(str(tmp_path / "s.db"), timeout=0, isolation_level=None)
    try:
        with store.write():
            # nothing written yet, but BEGIN IMMEDIATE already holds the lock
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
        store.close()


def test_write_rolls_back_on_error(tmp_path):
    store = new_store(tmp_path / "s.db")
    try:
        with pytest.raises(RuntimeError):
            with store.write() as c:
                c.execute("INSERT INTO clearlift_meta (key, value) VALUES ('half', 'done')")
                raise RuntimeError("boom")
        assert query(tmp_path / "s.db", "SELECT * FROM clearlift_meta WHERE key = 'half'") == []
    finally:
        store.close()


def test_a_processs_threads_take_turns_instead_of_meeting_the_busy_lock(tmp_path, monkeypatch):
    """Sixteen threads writing at once (a consumer at concurrency 16) never find the file
    locked by each other: they wait their turn in the process. With a connection per thread
    they met SQLITE_BUSY and polled the lock with sleeps; here the busy timeout is 0, so such a
    meeting would show as a retry of BEGIN IMMEDIATE (counted) or an error."""
    import threading

    from clearlift_cli.store import sqlite as sqlite_engine

    monkeypatch.setattr(sqlite_engine, "BUSY_TIMEOUT_MS", 0)
    store = new_store(tmp_path / "s.db")
    retries: list[float] = []
    real_sleep = sqlite_engine.time.sleep

    def sleep(seconds: float) -> None:  # the clock: only the writers' waits are counted
        if threading.current_thread().name.startswith("writer-"):
            retries.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(sqlite_engine.time, "sleep", sleep)
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(30):
                with store.write() as c:
                    c.execute("INSERT INTO clearlift_meta (key, value) VALUES (?, ?)", (f"t{n}-{i}", "x"))
                    c.execute("SELECT COUNT(*) FROM clearlift_meta").fetchone()
                assert store.read("SELECT value FROM clearlift_meta WHERE key = ?", (f"t{n}-{i}",))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,), name=f"writer-{n}") for n in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [] and retries == []
        assert store.read("SELECT COUNT(*) FROM clearlift_meta WHERE key LIKE 't%'")[0][0] == 16 * 30
    finally:
        store.close()
