"""Issue 16: every PostgreSQL connection clearlift opens, store and warehouse alike, has an
end to every wait: statement, lock and idle-in-transaction timeouts and TCP keepalives.
A real PostgreSQL server (CLEARLIFT_TEST_DATABASE_URL or 127.0.0.1:5432), never skipped."""

from __future__ import annotations

import time

import psycopg
import pytest

from clearlift_cli.errors import StoreError, WarehouseError
from clearlift_cli.pgconnect import PgLimits
from clearlift_cli.store import Store
from clearlift_cli.store.postgres import PgEngine
from clearlift_cli.warehouse import open_warehouse

SETTINGS = (
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_keepalives_count",
)
DEFAULTS = {
    "statement_timeout": "5min",
    "lock_timeout": "1min",
    "idle_in_transaction_session_timeout": "30min",
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
}
CLIENT = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


def shown(execute) -> dict[str, str]:
    return {name: execute(f"SHOW {name}")[0][0] for name in SETTINGS}


def warehouse_connection(wh):
    """One of the warehouse's own pooled connections, as a job's transaction gets it."""
    conn = wh._checkout()
    wh._rollback(conn)
    return conn


def test_store_and_warehouse_connections_have_bounded_waits_and_keepalives(pg_schema_url):
    store = Store(PgEngine(pg_schema_url))
    wh = open_warehouse(pg_schema_url)
    try:
        assert shown(store.read) == DEFAULTS
        assert shown(lambda q: wh._read("show", lambda c: c.execute(q).fetchall())) == DEFAULTS
        for raw in (store.engine.conn().raw, warehouse_connection(wh)):
            params = raw.info.get_parameters()
            assert {k: params.get(k) for k in CLIENT} == CLIENT
    finally:
        store.close()
        wh.close()


def test_settings_set_the_timeouts_and_the_url_still_wins(pg_schema_url):
    limits = PgLimits(statement_timeout=2.5, lock_timeout=0.75, idle_in_transaction_timeout=0)
    store = Store(PgEngine(pg_schema_url, limits=limits))
    wh = open_warehouse(f"{pg_schema_url}%20-c%20lock_timeout%3D7s&connect_timeout=3", pg_limits=limits)
    try:
        assert shown(store.read) | {} == DEFAULTS | {
            "statement_timeout": "2500ms",
            "lock_timeout": "750ms",
            "idle_in_transaction_session_timeout": "0",
        }
        got = shown(lambda q: wh._read("show", lambda c: c.execute(q).fetchall()))
        assert (got["lock_timeout"], got["statement_timeout"]) == ("7s", "2500ms")
        assert warehouse_connection(wh).info.get_parameters()["connect_timeout"] == "3"
    finally:
        store.close()
        wh.close()


def test_a_lock_held_by_another_session_fails_our_statement_within_lock_timeout(pg_schema_url):
    store = Store(PgEngine(pg_schema_url, limits=PgLimits(lock_timeout=0.5)))
    store.migrate()
    wh = open_warehouse(pg_schema_url, pg_limits=PgLimits(lock_timeout=0.5))
    wh.init_schema()
    holder = psycopg.connect(pg_schema_url)
    try:
        holder.execute("LOCK TABLE sync_queue, google_ads_campaigns IN ACCESS EXCLUSIVE MODE")
        # Each waits 0.5 s, not for ever (the slack is for a loaded test machine).
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="lock timeout"):
            with store.write() as c:
                c.execute("UPDATE sync_queue SET attempts = 0")
        t1 = time.monotonic()
        with pytest.raises(WarehouseError, match="lock timeout"):
            wh.count_rows("google_ads_campaigns")
        assert t1 - t0 < 10 and time.monotonic() - t1 < 10
    finally:
        holder.rollback()
        holder.close()
        store.close()
        wh.close()


def test_a_transaction_left_idle_is_ended_by_the_server(pg_schema_url):
    # What a frozen or hung consumer leaves behind: its transaction must not keep its locks.
    wh = open_warehouse(pg_schema_url, pg_limits=PgLimits(idle_in_transaction_timeout=0.5))
    wh.init_schema()
    try:
        with pytest.raises(WarehouseError):
            with wh.transaction() as w:
                w._conn.execute("LOCK TABLE google_ads_campaigns IN ACCESS EXCLUSIVE MODE")
                time.sleep(1.5)  # idle in transaction, holding the lock
                w._conn.execute("SELECT 1")
        with psycopg.connect(pg_schema_url) as other:
            other.execute("SET lock_timeout = '2s'")
            other.execute("LOCK TABLE google_ads_campaigns IN ACCESS EXCLUSIVE MODE")  # free again
            other.rollback()
    finally:
        wh.close()


def test_an_idle_pooled_connection_the_server_ended_is_replaced_before_the_next_job(pg_schema_url):
    """A pooled connection whose session the server ended while it sat idle (a restart,
    ``pg_terminate_backend``, ``idle_session_timeout``) is not handed to the next transaction:
    that transaction gets a new connection and commits."""
    wh = open_warehouse(pg_schema_url)
    try:
        wh.init_schema()
        first = warehouse_connection(wh)
        old_pid = first.info.backend_pid
        wh._checkin(first)
        with psycopg.connect(pg_schema_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,)).fetchone() == (True,)
            deadline = time.monotonic() + 10
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (old_pid,)).fetchone():
                assert time.monotonic() < deadline, "the backend did not end"
                time.sleep(0.05)
        with wh.transaction() as w:
            pid = w._conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert pid != old_pid
        again = warehouse_connection(wh)  # the new one was kept: it is quiet, so it is reused
        assert again.info.backend_pid == pid
        wh._checkin(again)
    finally:
        wh.close()


def test_the_pool_keeps_as_many_connections_as_were_in_use_at_once(pg_schema_url):
    """Sixteen transactions at once leave sixteen connections to reuse: none is closed and
    reopened between jobs (a cap of eight did that for most jobs at concurrency 16)."""
    wh = open_warehouse(pg_schema_url)
    try:
        held = [wh._checkout() for _ in range(16)]
        pids = {c.info.backend_pid for c in held}
        for conn in held:
            wh._rollback(conn)
            wh._checkin(conn)
        again = [wh._checkout() for _ in range(16)]
        assert {c.info.backend_pid for c in again} == pids
        for conn in again:
            wh._rollback(conn)
            wh._checkin(conn)
    finally:
        wh.close()


def test_a_pooled_connection_is_reused_when_the_process_holds_over_a_thousand_files(pg_schema_url):
    """The idle check works on any descriptor: with its socket numbered above 1024 (a busy
    process) a quiet pooled connection is still reused, not reopened for every job."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    ballast = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    wh = open_warehouse(pg_schema_url)
    try:
        first = warehouse_connection(wh)
        assert first.fileno() > 1024
        pid = first.info.backend_pid
        wh._checkin(first)
        again = warehouse_connection(wh)
        assert again.info.backend_pid == pid
        wh._checkin(again)
    finally:
        wh.close()
        for fd in ballast:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
