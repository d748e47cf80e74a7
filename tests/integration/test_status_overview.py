"""The status overview as a library, over many connections (the same store the API worker
writes): counts first, failing and re-auth rows first, a row schedule cannot plan counted
as failing, JSON rows shaped as the single-connection answer, every row checked as one
connection is. Through the command: tests/cli/test_status.py."""

from __future__ import annotations

from datetime import UTC

import pytest

from clearlift_cli import status as st
from tests.helpers import (
    fill_status_connections,
    new_store,
    raw,
)

UTC = UTC


@pytest.fixture
def store(tmp_path):
    s = new_store(tmp_path / "store.db")
    kinds = fill_status_connections(s.engine.path)
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


# -- the JSON of every reporting command, as documented in its --help ---------------------


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
