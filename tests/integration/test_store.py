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
