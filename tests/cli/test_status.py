"""`clearlift status` with many connections, the command in-process: a screenful of rows
(`--all`: every row, `--failing`: those), the same exit code with and without --json, one
warning line for a configured API version that is sunset or ending soon, and the JSON every
reporting command prints, pinned against its documentation in --help."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from clearlift_cli import status as st
from clearlift_cli.settings import resolve
from clearlift_cli.timeutil import FrozenClock
from tests.helpers import (
    cli_env,
    fill_status_connections,
    home_db,
    invoke,
    new_store,
    raw,
)


@pytest.fixture
def cli(tmp_path):
    env = cli_env(tmp_path)
    store = new_store(home_db(tmp_path))
    kinds = fill_status_connections(store.engine.path)
    store.close()
    return env, kinds, home_db(tmp_path)


def test_status_shows_a_screenful_and_all_rows_on_request(cli):
    env, kinds, db = cli
    proc = invoke(["status"], env)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    failing = len(kinds["failed"]) + len(kinds["reauth"])
    assert lines[0] == (
        f"120 connection(s): {120 - len(kinds['paused'])} active ({len(kinds['ok'])} completed, "
        f"{failing} failed), {len(kinds['paused'])} paused; {failing} failing "
        f"({len(kinds['reauth'])} need re-auth)"
    )
    table_rows = [ln for ln in lines if re.match(r"^│ org-\d{3}-", ln)]
    assert len(table_rows) == 50  # a screenful when not on a terminal
    assert kinds["reauth"][0] in table_rows[0] and "needs re-auth" in table_rows[0]
    assert lines[-1] == "… 70 other(s) not shown (clearlift status --all lists every row)"
    every = invoke(["status", "--all"], env)
    assert every.returncode == 1
    assert len([ln for ln in every.stdout.splitlines() if re.match(r"^│ org-\d{3}-", ln)]) == 120
    assert "not shown" not in every.stdout
    failing_only = invoke(["status", "--failing"], env)
    assert len([ln for ln in failing_only.stdout.splitlines() if re.match(r"^│ org-\d{3}-", ln)]) == failing


def test_status_json_exits_1_exactly_when_the_table_does(cli):
    env, kinds, db = cli
    table, as_json = invoke(["status"], env), invoke(["status", "--json"], env)
    assert table.returncode == as_json.returncode == 1
    assert len(json.loads(as_json.stdout)) == 120
    for org in ("org-005", "org-001"):  # org-005 holds a failing connection, org-001 none
        codes = {invoke(["status", "--org", org, *flag], env).returncode for flag in ((), ("--json",))}
        assert codes == ({1} if org == "org-005" else {0})
    # a paused failing connection does not count
    c = raw(db)
    with c:
        c.execute("UPDATE platform_connections SET is_active = 0 WHERE sync_status = 'failed'")
    c.close()
    assert invoke(["status"], env).returncode == 0 and invoke(["status", "--json"], env).returncode == 0


def test_a_sunset_or_ending_api_version_is_one_warning_line(cli, tmp_path):
    env, kinds, db = cli
    old = dict(env, CLEARLIFT_GOOGLE_ADS_API_VERSION="v22")
    expected = (
        "warning: Google Ads API v22 is no longer served (sunset 2026-10-07): set "
        "CLEARLIFT_GOOGLE_ADS_API_VERSION to v23 or newer"
    )
    table = invoke(["status"], old)
    assert table.stdout.splitlines()[1] == expected
    assert sum("warning:" in ln for ln in table.stdout.splitlines()) == 1
    as_json = invoke(["status", "--json"], old)
    assert as_json.stderr.strip() == expected and len(json.loads(as_json.stdout)) == 120
    google_id = next(i for i in kinds["ok"] if "-google-" in i)
    assert invoke(["status", google_id], old).stdout.splitlines()[0] == expected
    assert invoke(["status", google_id, "--json"], old).stderr.strip() == expected
    stripe_id = next(i for i in kinds["ok"] if "-stripe-" in i)
    assert "warning" not in invoke(["status", stripe_id], old).stdout  # not this platform's version
    assert "warning" not in invoke(["status", "--platform", "stripe"], old).stdout
    assert "warning" not in invoke(["status"], env).stdout  # today's defaults are current
    # ending within 45 days, on a frozen clock
    settings = resolve({}, environ=env, read_config=False)
    store = new_store(home_db(tmp_path), clock=FrozenClock(datetime(2027, 10, 1, tzinfo=UTC)))
    try:
        ov = st.overview(store, limit=10, settings=settings)
    finally:
        store.close()
    assert ov.notices == [
        "Google Ads API v26 is sunset on 2027-11-01 (31 days): set "
        "CLEARLIFT_GOOGLE_ADS_API_VERSION to a newer version (and upgrade clearlift)"
    ]


def documented_keys(env, *command: str) -> set[str]:
    help_text = invoke([*command, "--help"], env).stdout
    return set(re.findall(r'"([a-z_]+)"\s*[:,}]', help_text.split("JSON (--json)", 1)[1]))


def test_every_reporting_command_prints_the_json_its_help_documents(cli):
    env, kinds, db = cli
    failing_id = kinds["failed"][0]

    rows = json.loads(invoke(["status", "--json"], env).stdout)
    assert list(rows[0]) == ["connection_id", "connection", "latest_sync", "problem", "deferred"]
    assert list(rows[0]["connection"]) == [
        "platform",
        "account_name",
        "is_active",
        "last_synced_at",
        "sync_status",
    ]
    assert list(rows[0]["latest_sync"]) == ["status", "type", "completed_at", "records_synced", "error"]
    one = json.loads(invoke(["status", failing_id, "--json"], env).stdout)
    assert list(one) == ["connection", "latest_sync"]
    assert {
        "connection_id",
        "connection",
        "latest_sync",
        "problem",
        "deferred",
        *rows[0]["connection"],
        *rows[0]["latest_sync"],
    } <= documented_keys(env, "status")

    queue = json.loads(invoke(["queue", "--json"], env).stdout)
    assert list(queue) == [
        "ready",
        "delayed",
        "leased",
        "dead",
        "done",
        "oldest_ready_age_seconds",
        "paused_platforms",
    ]
    assert list(queue["ready"]) == ["high", "normal"]
    assert set(queue) | set(queue["ready"]) <= documented_keys(env, "queue")

    c = raw(db)
    with c:
        c.execute(
            "INSERT INTO sync_queue (job_id, connection_id, platform, body, priority, state, visible_at, "
            "attempts, last_error, created_at, updated_at, finished_at) VALUES ('j1', ?, 'google', '{}', 1, "
            "'dead', 0, 4, 'HTTP 400', 'x', 'x', '2025-10-10T20:00:00.000Z')",
            (failing_id,),
        )
    c.close()
    dead = json.loads(invoke(["queue", "dead", "--json"], env).stdout)
    assert list(dead[0]) == [
        "id",
        "job_id",
        "connection_id",
        "platform",
        "attempts",
        "last_error",
        "finished_at",
    ]
    assert set(dead[0]) <= documented_keys(env, "queue", "dead")

    conns = json.loads(invoke(["connections", "list", "--json"], env).stdout)
    assert list(conns[0]) == [
        "id",
        "organization_id",
        "platform",
        "account_id",
        "account_name",
        "is_active",
        "sync_status",
        "last_synced_at",
        "expires_at",
        "needs_reauth",
    ]
    assert set(conns[0]) <= documented_keys(env, "connections", "list")

    proc = invoke(["doctor", "--json"], env)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1  # the warehouse was never created
    assert list(report) == ["ok", "counts", "settings", "checks"]
    assert list(report["counts"]) == ["ok", "warn", "fail"]
    assert list(report["settings"][0]) == ["name", "value", "source"]
    assert list(report["checks"][0]) == ["name", "status", "message", "fix"]
    assert set(report) | set(report["counts"]) | set(report["settings"][0]) | set(
        report["checks"][0]
    ) <= documented_keys(env, "doctor")
    documented_checks = invoke(["doctor", "--help"], env).stdout.replace("\n", " ")
    for check in report["checks"]:
        generic = re.sub(r"\.(google|facebook|tiktok|stripe)$", ".PLATFORM", check["name"])
        assert generic in documented_checks, check["name"]
