"""`clearlift status` with many connections: counts first, failing and re-auth rows first, a
screenful of the others (`--all`: every row); the same exit code with and without --json;
a warning line for a configured API version that is sunset or ending soon; and the JSON
every reporting command prints, pinned against its documentation in --help."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from clearlift_cli import status as st
from clearlift_cli.settings import resolve
from clearlift_cli.timeutil import FrozenClock
from tests.helpers import cli_env, home_db, insert_connections, new_store, raw, run_cli

UTC = UTC


def fill(db, n: int = 120) -> dict[str, list[str]]:
    """``n`` connections over four platforms: every 10th failed, every 25th needing
    re-auth, every 30th paused (a paused one never counts as failing); one job each."""
    rows, kinds = [], {"failed": [], "reauth": [], "paused": [], "ok": []}
    for i in range(n):
        platform = ("google", "facebook", "tiktok", "stripe")[i % 4]
        row = {
            "organization_id": f"org-{i:03d}",
            "platform": platform,
            "account_id": f"{1000 + i}",
            "sync_status": "completed",
            "last_synced_at": "2025-10-10T19:00:00.000Z",
        }
        kind = "ok"
        if i % 30 == 7:
            row.update(is_active=0, sync_status="failed")
            kind = "paused"
        elif i % 25 == 3:
            row.update(needs_reauth=1, sync_status="failed", reauth_reason="invalid_grant")
            kind = "reauth"
        elif i % 10 == 5:
            row.update(sync_status="failed", sync_error="HTTP 500")
            kind = "failed"
        rows.append(row)
        kinds[kind].append(f"org-{i:03d}-{platform}-{1000 + i}")
    insert_connections(db, rows)
    c = raw(db)
    with c:
        for r in rows:
            cid = f"{r['organization_id']}-{r['platform']}-{r['account_id']}"
            for k, created in enumerate(("2025-10-09T19:00:00.000Z", "2025-10-10T19:00:00.000Z")):
                c.execute(
                    "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at, "
                    "completed_at, records_synced, metadata) VALUES (?, ?, ?, ?, 'incremental', ?, ?, ?, ?)",
                    (
                        f"job-{cid}-{k}",
                        r["organization_id"],
                        cid,
                        "failed" if k and r["sync_status"] == "failed" else "completed",
                        created,
                        created,
                        10 + k,
                        json.dumps({"records_synced": 10 + k}),
                    ),
                )
    c.close()
    return kinds


@pytest.fixture
def store(tmp_path):
    s = new_store(tmp_path / "store.db")
    kinds = fill(s.engine.path)
    yield s, kinds
    s.close()


def test_overview_counts_everything_and_shows_failing_rows_first(store):
    s, kinds = store
    ov = st.overview(s, limit=20)
    assert ov.total == 120 and ov.paused == len(kinds["paused"]) and ov.active == 120 - len(kinds["paused"])
    assert ov.failing == len(kinds["failed"]) + len(kinds["reauth"]) and ov.needs_reauth == len(
        kinds["reauth"]
    )
    assert ov.by_status == {
        "completed": len(kinds["ok"]),
        "failed": len(kinds["failed"]) + len(kinds["reauth"]),
    }
    shown = [r.connection.id for r in ov.reports]
    assert len(shown) == 20
    assert shown[: len(kinds["reauth"])] == sorted(kinds["reauth"])
    failing = len(kinds["reauth"]) + len(kinds["failed"])
    assert shown[len(kinds["reauth"]) : failing] == sorted(kinds["failed"])
    assert all(not r.failing for r in ov.reports[failing:])
    assert ov.hidden == 100 and ov.hidden_failing == 0
    # the latest job of each connection, not an older one
    assert all(r.latest_job["created_at"] == "2025-10-10T19:00:00.000Z" for r in ov.reports)
    # fewer rows than failing connections: failing ones fill the screen, the rest are counted
    small = st.overview(s, limit=5)
    assert [r.failing for r in small.reports] == [True] * 5 and small.hidden_failing == failing - 5
    # --failing: every failing row, nothing else; --all: every row
    assert [r.connection.id for r in st.overview(s, failing_only=True).reports] == shown[:failing]
    assert len(st.overview(s, limit=None).reports) == 120


def test_a_row_schedule_cannot_plan_counts_as_failing(store):
    s, kinds = store
    ok_id = kinds["ok"][0]
    c = raw(s.engine.path)
    with c:
        c.execute("UPDATE platform_connections SET settings = 'not json' WHERE id = ?", (ok_id,))
    c.close()
    ov = st.overview(s, limit=200)
    failing = len(kinds["failed"]) + len(kinds["reauth"]) + 1
    assert ov.failing == failing and ok_id in [r.connection.id for r in ov.reports[:failing]]
    broken = next(r for r in ov.reports if r.connection.id == ok_id)
    assert broken.failing and "settings column is not valid JSON" in broken.problem
    rows, _, _ = st.status_json(s, failing_only=True)
    assert (
        "settings column is not valid JSON" in next(r for r in rows if r["connection_id"] == ok_id)["problem"]
    )


def test_status_json_rows_match_the_single_connection_shape(store):
    s, kinds = store
    rows, failing, platforms = st.status_json(s)
    assert failing is True and platforms == {"google", "facebook", "tiktok", "stripe"}
    assert len(rows) == 120
    one = next(r for r in rows if r["connection_id"] == kinds["failed"][0])
    report = st.connection_report(s, kinds["failed"][0])
    assert {
        k: v for k, v in one.items() if k not in ("connection_id", "problem", "deferred")
    } == st.sync_status(report.connection, report.latest_job)
    assert one["problem"] is None
    assert one["latest_sync"]["records_synced"] == 11 and one["latest_sync"]["status"] == "failed"
    only, _, _ = st.status_json(s, failing_only=True)
    assert {r["connection_id"] for r in only} == set(kinds["failed"] + kinds["reauth"])


@pytest.fixture
def cli(tmp_path):
    env = cli_env(tmp_path)
    store = new_store(home_db(tmp_path))
    kinds = fill(store.engine.path)
    store.close()
    return env, kinds, home_db(tmp_path)


def test_status_shows_a_screenful_and_all_rows_on_request(cli):
    env, kinds, db = cli
    proc = run_cli(["status"], env)
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
    every = run_cli(["status", "--all"], env)
    assert every.returncode == 1
    assert len([ln for ln in every.stdout.splitlines() if re.match(r"^│ org-\d{3}-", ln)]) == 120
    assert "not shown" not in every.stdout
    failing_only = run_cli(["status", "--failing"], env)
    assert len([ln for ln in failing_only.stdout.splitlines() if re.match(r"^│ org-\d{3}-", ln)]) == failing


def test_status_json_exits_1_exactly_when_the_table_does(cli):
    env, kinds, db = cli
    table, as_json = run_cli(["status"], env), run_cli(["status", "--json"], env)
    assert table.returncode == as_json.returncode == 1
    assert len(json.loads(as_json.stdout)) == 120
    for org in ("org-005", "org-001"):  # org-005 holds a failing connection, org-001 none
        codes = {run_cli(["status", "--org", org, *flag], env).returncode for flag in ((), ("--json",))}
        assert codes == ({1} if org == "org-005" else {0})
    # a paused failing connection does not count
    c = raw(db)
    with c:
        c.execute("UPDATE platform_connections SET is_active = 0 WHERE sync_status = 'failed'")
    c.close()
    assert run_cli(["status"], env).returncode == 0 and run_cli(["status", "--json"], env).returncode == 0


def test_a_sunset_or_ending_api_version_is_one_warning_line(cli, tmp_path):
    env, kinds, db = cli
    old = dict(env, CLEARLIFT_GOOGLE_ADS_API_VERSION="v22")
    expected = (
        "warning: Google Ads API v22 is no longer served (sunset 2026-10-07): set "
        "CLEARLIFT_GOOGLE_ADS_API_VERSION to v23 or newer"
    )
    table = run_cli(["status"], old)
    assert table.stdout.splitlines()[1] == expected
    assert sum("warning:" in ln for ln in table.stdout.splitlines()) == 1
    as_json = run_cli(["status", "--json"], old)
    assert as_json.stderr.strip() == expected and len(json.loads(as_json.stdout)) == 120
    google_id = next(i for i in kinds["ok"] if "-google-" in i)
    assert run_cli(["status", google_id], old).stdout.splitlines()[0] == expected
    assert run_cli(["status", google_id, "--json"], old).stderr.strip() == expected
    stripe_id = next(i for i in kinds["ok"] if "-stripe-" in i)
    assert "warning" not in run_cli(["status", stripe_id], old).stdout  # not this platform's version
    assert "warning" not in run_cli(["status", "--platform", "stripe"], old).stdout
    assert "warning" not in run_cli(["status"], env).stdout  # today's defaults are current
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


# -- the JSON of every reporting command, as documented in its --help ---------------------


def documented_keys(env, *command: str) -> set[str]:
    help_text = run_cli([*command, "--help"], env).stdout
    return set(re.findall(r'"([a-z_]+)"\s*[:,}]', help_text.split("JSON (--json)", 1)[1]))


def test_every_reporting_command_prints_the_json_its_help_documents(cli):
    env, kinds, db = cli
    failing_id = kinds["failed"][0]

    rows = json.loads(run_cli(["status", "--json"], env).stdout)
    assert list(rows[0]) == ["connection_id", "connection", "latest_sync", "problem", "deferred"]
    assert list(rows[0]["connection"]) == [
        "platform",
        "account_name",
        "is_active",
        "last_synced_at",
        "sync_status",
    ]
    assert list(rows[0]["latest_sync"]) == ["status", "type", "completed_at", "records_synced", "error"]
    one = json.loads(run_cli(["status", failing_id, "--json"], env).stdout)
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

    queue = json.loads(run_cli(["queue", "--json"], env).stdout)
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
    dead = json.loads(run_cli(["queue", "dead", "--json"], env).stdout)
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

    conns = json.loads(run_cli(["connections", "list", "--json"], env).stdout)
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

    proc = run_cli(["doctor", "--json"], env)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1  # the warehouse was never created
    assert list(report) == ["ok", "counts", "settings", "checks"]
    assert list(report["counts"]) == ["ok", "warn", "fail"]
    assert list(report["settings"][0]) == ["name", "value", "source"]
    assert list(report["checks"][0]) == ["name", "status", "message", "fix"]
    assert set(report) | set(report["counts"]) | set(report["settings"][0]) | set(
        report["checks"][0]
    ) <= documented_keys(env, "doctor")
    documented_checks = run_cli(["doctor", "--help"], env).stdout.replace("\n", " ")
    for check in report["checks"]:
        generic = re.sub(r"\.(google|facebook|tiktok|stripe)$", ".PLATFORM", check["name"])
        assert generic in documented_checks, check["name"]


def test_every_row_is_checked_as_one_connection_is(store):
    """``overview`` and ``status_json`` check every row from its columns; each verdict is
    the one ``status CONNECTION`` gives (``connection_problem`` of the whole connection)."""
    s, kinds = store
    ok = kinds["ok"]
    broken = {
        ok[0]: "settings = '{\"sync_interval_minutes\": 1e10}'",
        ok[1]: "settings = 'not json'",
        ok[2]: "last_synced_at = 'yesterday'",
        ok[3]: "last_synced_at = '0001-01-02T00:00:00.000Z'",  # due, and its window starts before year 1
        ok[4]: "last_synced_at = '9999-12-31T23:00:00.000Z'",
        ok[5]: "settings = '[1]', needs_reauth = 1",
        ok[6]: "settings = '{\"lookback_days\": 3.5}', is_active = 0",
        ok[7]: "settings = '{\"attribution_window_days\": 0}'",  # fine
        kinds["failed"][0]: "settings = 'null'",
    }
    c = raw(s.engine.path)
    with c:
        for cid, change in broken.items():
            c.execute(f"UPDATE platform_connections SET {change} WHERE id = ?", (cid,))
        c.execute("UPDATE platform_connections SET platform = 'myspace' WHERE id = ?", (ok[8],))
    c.close()
    expected = {cid: st.connection_report(s, cid).problem for cid in broken}
    expected[ok[8]] = st.connection_report(s, ok[8]).problem
    assert expected[ok[8]] == "unknown platform 'myspace'"
    assert sum(p is not None for p in expected.values()) == 9  # all but the fine one
    shown = {r.connection.id: r.problem for r in st.overview(s, limit=None).reports}
    assert {cid: shown[cid] for cid in expected} == expected
    rows = {r["connection_id"]: r["problem"] for r in st.status_json(s)[0]}
    assert {cid: rows[cid] for cid in expected} == expected
    # an active broken row counts as failing (six more, and one more needing re-auth); a
    # paused one does not
    ov = st.overview(s, limit=0)
    assert ov.failing == len(kinds["failed"]) + len(kinds["reauth"]) + 7
