"""The store through the command (in-process): idempotent init, upgrading a D1 copy without
touching its rows, files created 0600 and in WAL mode, clear errors for a missing or
broken file, timestamps written as JavaScript writes them."""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import UTC, datetime

import pytest

from clearlift_cli.errors import StoreError
from clearlift_cli.store import open_store
from clearlift_cli.store.schema import LATER_COLUMNS
from clearlift_cli.timeutil import iso_z, parse_ts
from tests.helpers import cli_env, home_db, invoke, one_line_error, query

UTC = UTC


def schema_of(path) -> list[tuple]:
    return [
        tuple(r)
        for r in query(path, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
    ]


# -- init -------------------------------------------------------------------------------


def test_init_twice_is_a_no_op(tmp_path):
    env = cli_env(tmp_path)
    first = invoke(["init", "--store-only"], env)
    assert first.returncode == 0, first.stderr
    assert "created table sync_jobs" in first.stdout
    db = home_db(tmp_path)
    before = schema_of(db)
    meta_before = [tuple(r) for r in query(db, "SELECT * FROM clearlift_meta ORDER BY key")]

    second = invoke(["init", "--store-only"], env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"store {db}: up to date"
    assert schema_of(db) == before
    assert [tuple(r) for r in query(db, "SELECT * FROM clearlift_meta ORDER BY key")] == meta_before


# What the API worker's D1 migrations produced before the later columns existed: the
# original CREATE TABLE, then ALTER TABLEs for the token columns, plus a table and an
# index clearlift knows nothing about.
D1_SCHEMA = """
CREATE TABLE platform_connections (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    platform TEXT NOT NULL,
    account_id TEXT NOT NULL,
    account_name TEXT,
    connected_by TEXT NOT NULL,
    connected_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    last_synced_at DATETIME,
    sync_status TEXT DEFAULT 'pending',
    sync_error TEXT,
    is_active INTEGER DEFAULT 1,
    settings TEXT DEFAULT '{}',
    UNIQUE(organization_id, platform, account_id)
);
ALTER TABLE platform_connections ADD COLUMN credentials_encrypted TEXT;
ALTER TABLE platform_connections ADD COLUMN refresh_token_encrypted TEXT;
ALTER TABLE platform_connections ADD COLUMN expires_at DATETIME;
ALTER TABLE platform_connections ADD COLUMN scopes TEXT;
CREATE TABLE sync_jobs (
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
CREATE TABLE onboarding_progress (
    user_id TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    current_step TEXT DEFAULT 'welcome',
    services_connected INTEGER DEFAULT 0,
    first_sync_completed BOOLEAN DEFAULT FALSE,
    completed_at DATETIME,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    updated_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(user_id, organization_id)
);
CREATE TABLE organizations (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_sync_jobs_org_created ON sync_jobs (organization_id, created_at);
"""

D1_COLUMNS = {
    "platform_connections": [
        "id",
        "organization_id",
        "platform",
        "account_id",
        "account_name",
        "connected_by",
        "connected_at",
        "last_synced_at",
        "sync_status",
        "sync_error",
        "is_active",
        "settings",
        "credentials_encrypted",
        "refresh_token_encrypted",
        "expires_at",
        "scopes",
    ],
    "sync_jobs": [
        "id",
        "organization_id",
        "connection_id",
        "status",
        "job_type",
        "started_at",
        "completed_at",
        "error_message",
        "records_synced",
        "created_at",
        "metadata",
    ],
    "onboarding_progress": [
        "user_id",
        "organization_id",
        "current_step",
        "services_connected",
        "first_sync_completed",
        "completed_at",
        "created_at",
        "updated_at",
    ],
    "organizations": ["id", "name", "created_at"],
}


def make_d1_copy(path) -> None:
    c = sqlite3.connect(str(path))
    c.executescript(D1_SCHEMA)
    c.executemany(
        "INSERT INTO platform_connections (id, organization_id, platform, account_id, account_name, "
        "connected_by, connected_at, last_synced_at, sync_status, sync_error, is_active, settings, "
        "credentials_encrypted, refresh_token_encrypted, expires_at, scopes) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                "org-1-google-1234567890",
                "org-1",
                "google",
                "1234567890",
                "Ünïcode Ads",
                "user-1",
                "2025-10-10T20:45:30.123Z",
                "2025-10-11T08:00:00.000Z",
                "completed",
                None,
                1,
                '{"sync_interval_minutes": 30}',
                "Y2lwaGVydGV4dA==",
                "cmVmcmVzaA==",
                "2025-10-11T09:00:00.000Z",
                "https://www.googleapis.com/auth/adwords",
            ),
            (
                "org-1-facebook-act_99",
                "org-1",
                "facebook",
                "act_99",
                None,
                "user-2",
                "2025-10-10 20:45:30",
                "2025-10-11 08:00:00",
                "failed",
                "Token expired",
                0,
                "{}",
                "ZmJjaXBoZXI=",
                None,
                None,
                None,
            ),
            (
                "org-2-stripe-acct_1",
                "org-2",
                "stripe",
                "acct_1",
                "Shop",
                "user-3",
                "2025-09-01 00:00:00",
                None,
                "pending",
                None,
                1,
                '{ "odd" :  "spacing" }',
                "c3RyaXBl",
                None,
                None,
                "",
            ),
        ],
    )
    # connected_at left to the column default: SQLite's own spelling
    c.execute(
        "INSERT INTO platform_connections (id, organization_id, platform, account_id, connected_by) "
        "VALUES ('org-3-tiktok-7', 'org-3', 'tiktok', '7', 'user-4')"
    )
    c.executemany(
        "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, started_at, "
        "completed_at, error_message, records_synced, created_at, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                "job-a",
                "org-1",
                "org-1-google-1234567890",
                "completed",
                "full",
                "2025-10-11T07:59:00.000Z",
                "2025-10-11T08:00:00.000Z",
                None,
                45,
                "2025-10-11T07:58:59.999Z",
                '{"records_synced":45,"sync_window":{"start":"2025-10-04T08:00:00.000Z","end":"2025-10-11T08:00:00.000Z"}}',
            ),
            (
                "job-b",
                "org-1",
                "org-1-facebook-act_99",
                "failed",
                "incremental",
                "2025-10-11 07:00:00",
                "2025-10-11 07:01:00",
                "Token expired",
                0,
                "2025-10-11 06:59:59",
                "{}",
            ),
        ],
    )
    c.execute(
        "INSERT INTO sync_jobs (id, organization_id, connection_id) VALUES ('job-c', 'org-2', 'org-2-stripe-acct_1')"
    )
    c.execute(
        "INSERT INTO onboarding_progress (user_id, organization_id, current_step, services_connected) "
        "VALUES ('user-1', 'org-1', 'first_sync', 2)"
    )
    c.execute("INSERT INTO organizations (id, name) VALUES ('org-1', 'Acme')")
    c.commit()
    c.close()


def snapshot(path) -> dict[str, list[tuple]]:
    """Every original column of every row, as exact SQL literals with their storage class."""
    out = {}
    for table, cols in D1_COLUMNS.items():
        exprs = ", ".join(f"quote({col}), typeof({col})" for col in cols)
        out[table] = [tuple(r) for r in query(path, f"SELECT rowid, {exprs} FROM {table} ORDER BY rowid")]
    return out


def test_init_on_a_d1_copy_keeps_every_row_and_adds_later_columns(tmp_path):
    db = tmp_path / "d1-copy.sqlite"
    make_d1_copy(db)
    before = snapshot(db)
    orgs_sql = query(db, "SELECT sql FROM sqlite_master WHERE name = 'organizations'")[0][0]
    assert sum(len(rows) for rows in before.values()) == 9

    env = cli_env(tmp_path)
    result = invoke(["init", "--db", str(db)], env)
    assert result.returncode == 0, result.stderr
    assert "created table" not in result.stdout  # the API worker's tables were already there
    assert "added column platform_connections.needs_reauth" in result.stdout

    assert snapshot(db) == before
    assert query(db, "SELECT sql FROM sqlite_master WHERE name = 'organizations'")[0][0] == orgs_sql
    assert query(db, "SELECT name FROM sqlite_master WHERE name = 'idx_sync_jobs_org_created'")

    info = {t: {r["name"]: r for r in query(db, f"PRAGMA table_info({t})")} for t in LATER_COLUMNS}
    pc, sj = info["platform_connections"], info["sync_jobs"]
    assert pc["needs_reauth"]["type"] == "BOOLEAN" and pc["needs_reauth"]["dflt_value"] == "FALSE"
    assert pc["reauth_reason"]["type"] == "TEXT" and pc["reauth_detected_at"]["type"] == "DATETIME"
    assert (
        pc["consecutive_auth_failures"]["type"] == "INTEGER"
        and pc["consecutive_auth_failures"]["dflt_value"] == "0"
    )
    assert sj["updated_at"]["type"] == "DATETIME" and sj["current_phase"]["type"] == "TEXT"
    assert sj["total_records"]["type"] == "INTEGER"
    assert sj["progress_percentage"]["type"] == "INTEGER" and sj["progress_percentage"]["dflt_value"] == "0"

    # existing rows read the later columns' defaults
    rows = query(
        db,
        "SELECT needs_reauth, reauth_reason, reauth_detected_at, consecutive_auth_failures "
        "FROM platform_connections",
    )
    assert [tuple(r) for r in rows] == [(0, None, None, 0)] * 4
    rows = query(db, "SELECT updated_at, current_phase, total_records, progress_percentage FROM sync_jobs")
    assert [tuple(r) for r in rows] == [(None, None, None, 0)] * 3

    again = invoke(["init", "--db", str(db)], env)
    assert again.returncode == 0 and f"store {db}: up to date" in again.stdout
    assert snapshot(db) == before


def test_connections_add_on_a_d1_copy_updates_the_existing_row(tmp_path):
    db = tmp_path / "d1-copy.sqlite"
    make_d1_copy(db)
    env = cli_env(tmp_path, CLEARLIFT_DB=str(db), CLEARLIFT_ACCESS_TOKEN="ya29.reconnected-token")
    assert invoke(["init", "--store-only"], env).returncode == 0
    result = invoke(
        [
            "connections",
            "add",
            "--org",
            "org-1",
            "--platform",
            "facebook",
            "--account-id",
            "act_99",
            "--connected-by",
            "user-9",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    assert "updated connection org-1-facebook-act_99" in result.stdout
    rows = query(
        db,
        "SELECT connected_at, connected_by, is_active FROM platform_connections "
        "WHERE organization_id = 'org-1' AND platform = 'facebook'",
    )
    assert [tuple(r) for r in rows] == [("2025-10-10 20:45:30", "user-9", 1)]


# -- the file ---------------------------------------------------------------------------


def test_store_file_is_created_0600_and_in_wal_mode(tmp_path):
    env = cli_env(tmp_path)
    old = os.umask(0)  # 0600 must not depend on the umask
    try:
        assert invoke(["init", "--store-only"], env).returncode == 0
    finally:
        os.umask(old)
    db = home_db(tmp_path)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert query(db, "PRAGMA journal_mode")[0][0] == "wal"


def test_a_file_that_is_not_a_database(tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StoreError, match="not a database"):
        open_store(str(bogus))
    for args in (
        ["init", "--store-only", "--db", str(bogus)],
        ["schedule", "--db", str(bogus)],
        ["connections", "list", "--db", str(bogus)],
    ):
        result = invoke(args, cli_env(tmp_path))
        assert result.returncode == 4, (args, result.stderr)
        line = one_line_error(result.stderr)
        assert str(bogus) in line and "not a database" in line
    assert bogus.read_text().startswith("these are my notes")  # left alone


def test_missing_store_tells_to_run_init(tmp_path):
    missing = tmp_path / "nowhere" / "clearlift.db"
    for args in (["schedule"], ["connections", "list"], ["status"], ["sync", "x", "--now"]):
        result = invoke([*args, "--db", str(missing)], cli_env(tmp_path))
        assert result.returncode == 4, (args, result.stderr)
        assert "clearlift init" in one_line_error(result.stderr)
    assert not missing.exists() and not missing.parent.exists()  # nothing created by a read


def test_uninitialised_database_tells_to_run_init(tmp_path):
    db = tmp_path / "empty.db"
    sqlite3.connect(str(db)).execute("CREATE TABLE unrelated (x)").connection.close()
    result = invoke(["schedule", "--db", str(db)], cli_env(tmp_path))
    assert result.returncode == 4
    assert "clearlift init" in one_line_error(result.stderr)


# -- timestamps -------------------------------------------------------------------------


def test_connected_at_is_written_as_javascript_iso(tmp_path):
    env = cli_env(tmp_path, CLEARLIFT_ACCESS_TOKEN="token-for-timestamps")
    assert invoke(["init", "--store-only"], env).returncode == 0
    result = invoke(
        [
            "connections",
            "add",
            "--org",
            "org-1",
            "--platform",
            "google",
            "--account-id",
            "42",
            "--connected-by",
            "u",
            "--expires-at",
            "2030-01-02 03:04:05",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    row = query(home_db(tmp_path), "SELECT connected_at, expires_at FROM platform_connections")[0]
    assert row["expires_at"] == "2030-01-02T03:04:05.000Z"
    connected = parse_ts(row["connected_at"])
    assert row["connected_at"] == iso_z(connected)
    assert abs((datetime.now(UTC) - connected).total_seconds()) < 120


def test_the_embedded_warehouse_and_its_wal_are_created_0600(tmp_path):
    env = cli_env(tmp_path, CLEARLIFT_WAREHOUSE_URL=None)
    proc = invoke(["init"], env)
    assert proc.returncode == 0, proc.stderr
    home = tmp_path / "home"
    made = [home / "warehouse.db", home / "warehouse.db-wal", home / "warehouse.db-shm"]
    assert made[0].exists()
    for path in made:
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
