"""The scheduler as a library: which connections are due, what job each gets, and `sync
--now`'s job. Real SQLite files and the PostgreSQL control plane; rows are written with
plain SQL the way the API worker writes them; only the clock is frozen. Through the
command: tests/cli/test_schedule.py; overlapping runs: tests/e2e/test_schedule.py."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from clearlift_cli import scheduler
from clearlift_cli.errors import Conflict, NotFound, UsageError
from clearlift_cli.models import SyncJobMessage
from clearlift_cli.store import scheduling
from clearlift_cli.store.queue import Queue
from clearlift_cli.timeutil import iso_z, parse_ts
from tests.helpers import (
    BROKEN_CONNECTIONS,
    frozen,
    insert_connection,
    insert_connections,
    jobs_by_connection,
    message_for,
    new_store,
    query,
    raw,
)

UTC = UTC


def sqlite_spelling(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S")


SPELLINGS = {"sqlite": sqlite_spelling, "javascript": iso_z}
# A second short of the edge in each spelling's own resolution.
JUST_UNDER = {"sqlite": timedelta(seconds=1), "javascript": timedelta(milliseconds=1)}
# Instants chosen so that some land where SQLite's julianday() and a float computed in
# Python disagree in the last bit (20:46:08 is one): the edge must hold for all of them.
NOWS = [
    datetime(2025, 10, 10, 20, 45, 30, tzinfo=UTC),
    datetime(2025, 10, 10, 20, 46, 8, tzinfo=UTC),
    datetime(2025, 10, 10, 20, 54, 25, tzinfo=UTC),
    datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC),
]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    """The store under test: a SQLite file, or the PostgreSQL control plane."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_schema_url")
    return tmp_path / "clearlift.db"


def run_schedule(db, now, **kwargs):
    store = new_store(db, clock=frozen(now))
    try:
        return scheduler.schedule(store, Queue(store), **kwargs)
    finally:
        store.close()


# -- due / not due ----------------------------------------------------------------------


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("now", NOWS, ids=lambda d: d.strftime("%Y%m%dT%H%M%S"))
def test_due_exactly_at_the_interval_edge(db, now, spelling):
    fmt = SPELLINGS[spelling]
    hour = timedelta(minutes=60)
    new_store(db).close()
    under, edge, over = insert_connections(
        db,
        [
            {"account_id": "under", "last_synced_at": fmt(now - hour + JUST_UNDER[spelling])},
            {"account_id": "edge", "last_synced_at": fmt(now - hour)},
            {"account_id": "over", "last_synced_at": fmt(now - hour - timedelta(seconds=1))},
        ],
    )
    result = run_schedule(db, now)
    jobs = jobs_by_connection(db)
    assert set(jobs) == {edge, over}, (fmt(now - hour), result.summary())
    assert len(result.enqueued) == 2 and result.skipped == []


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("minutes", [30, 120])
def test_interval_override_in_settings(db, spelling, minutes):
    fmt = SPELLINGS[spelling]
    now = NOWS[1]
    interval = timedelta(minutes=minutes)
    new_store(db).close()
    settings = json.dumps({"sync_interval_minutes": minutes})
    under, edge, default_due = insert_connections(
        db,
        [
            {
                "account_id": "under",
                "settings": settings,
                "last_synced_at": fmt(now - interval + JUST_UNDER[spelling]),
            },
            {"account_id": "edge", "settings": settings, "last_synced_at": fmt(now - interval)},
            # due by the default hour; only due for the override when that is shorter
            {"account_id": "hour", "settings": settings, "last_synced_at": fmt(now - timedelta(minutes=61))},
        ],
    )
    result = run_schedule(db, now)
    expected = {edge} | ({default_due} if minutes < 61 else set())
    assert set(jobs_by_connection(db)) == expected
    assert result.not_due == 3 - len(expected)


def test_not_due_connections_are_not_even_read(db):
    # the due query is selective: cost follows the due connections, not all of them
    now = NOWS[0]
    new_store(db).close()
    recent = sqlite_spelling(now - timedelta(minutes=10))
    insert_connections(db, [{"account_id": f"r{i}", "last_synced_at": recent} for i in range(400)])
    due = insert_connections(
        db, [{"account_id": f"d{i}", "last_synced_at": iso_z(now - timedelta(hours=2))} for i in range(3)]
    )
    result = run_schedule(db, now)
    assert result.found == 3
    assert set(jobs_by_connection(db)) == set(due)


# -- what job ---------------------------------------------------------------------------


def test_never_synced_gets_a_full_seven_day_high_priority_job(db):
    now = NOWS[0]
    new_store(db).close()
    cid = insert_connection(db, account_id="new", last_synced_at=None)
    result = run_schedule(db, now)
    (job,) = jobs_by_connection(db)[cid]
    assert result.enqueued == [job["id"]]
    assert (job["status"], job["job_type"]) == ("pending", "full")
    assert job["created_at"] == iso_z(now)
    window = json.loads(job["metadata"])["sync_window"]
    assert window == {"start": iso_z(now - timedelta(days=7)), "end": iso_z(now)}
    body, row = message_for(db, job["id"])
    assert body["job_type"] == "full" and body["metadata"]["priority"] == "high"
    assert body["sync_window"] == window
    assert row["priority"] == 0 and row["state"] == "ready"


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_incremental_window_starts_lookback_before_last_sync(db, spelling):
    now = NOWS[0]
    last = now - timedelta(hours=2, minutes=17)
    new_store(db).close()
    default, own = insert_connections(
        db,
        [
            {"account_id": "a", "last_synced_at": SPELLINGS[spelling](last)},
            {
                "account_id": "b",
                "last_synced_at": SPELLINGS[spelling](last),
                "settings": '{"lookback_days": 5}',
            },
        ],
    )
    run_schedule(db, now)
    jobs = jobs_by_connection(db)
    for cid, days in ((default, 3), (own, 5)):
        (job,) = jobs[cid]
        assert job["job_type"] == "incremental"
        window = json.loads(job["metadata"])["sync_window"]
        assert window == {"start": iso_z(last - timedelta(days=days)), "end": iso_z(now)}
        body, row = message_for(db, job["id"])
        assert body["metadata"]["priority"] == "normal" and row["priority"] == 1
        assert body["sync_window"] == window


def test_configured_per_platform_lookback(db):
    now = NOWS[0]
    last = now - timedelta(hours=3)
    new_store(db).close()
    cid = insert_connection(db, platform="tiktok", account_id="7", last_synced_at=iso_z(last))
    run_schedule(db, now, configured_lookback={"tiktok": 1})
    window = json.loads(jobs_by_connection(db)[cid][0]["metadata"])["sync_window"]
    assert parse_ts(window["start"]) == last - timedelta(days=1)


def test_facebook_rereads_its_attribution_window_once_a_day(db):
    now = NOWS[0]
    new_store(db).close()
    cid = insert_connection(
        db, platform="facebook", account_id="act_1", last_synced_at=iso_z(now - timedelta(hours=2))
    )
    run_schedule(db, now)
    (job,) = jobs_by_connection(db)[cid]
    assert parse_ts(json.loads(job["metadata"])["sync_window"]["start"]) == now - timedelta(days=28)
    # the job completes; two hours later the next one re-reads only the lookback
    c = raw(db)
    with c:
        c.execute("UPDATE sync_jobs SET status = 'completed'")
        c.execute("UPDATE sync_queue SET state = 'done'")
        c.execute("UPDATE platform_connections SET last_synced_at = ?", (iso_z(now),))
    c.close()
    later = now + timedelta(hours=2)
    run_schedule(db, later)
    second = jobs_by_connection(db)[cid][1]
    assert parse_ts(json.loads(second["metadata"])["sync_window"]["start"]) == now - timedelta(days=3)


# -- what is not scheduled --------------------------------------------------------------


@pytest.mark.parametrize(
    "status, scheduled", [("pending", False), ("running", False), ("completed", True), ("failed", True)]
)
def test_no_second_job_while_one_is_pending_or_running(db, status, scheduled):
    now = NOWS[0]
    new_store(db).close()
    cid = insert_connection(db, account_id="x", last_synced_at="2025-10-01 00:00:00")
    c = raw(db)
    with c:  # written ten minutes ago: a running row that young is not abandoned (see test_adoption)
        c.execute(
            "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at) "
            "VALUES ('api-job', 'org-1', ?, ?, 'full', ?)",
            (cid, status, iso_z(now - timedelta(minutes=10))),
        )
    c.close()
    result = run_schedule(db, now)
    assert len(jobs_by_connection(db)[cid]) == (2 if scheduled else 1)
    assert len(result.enqueued) == (1 if scheduled else 0)


def test_running_schedule_again_adds_nothing(db):
    now = NOWS[0]
    new_store(db).close()
    insert_connections(db, [{"account_id": f"a{i}", "last_synced_at": None} for i in range(5)])
    assert len(run_schedule(db, now).enqueued) == 5
    again = run_schedule(db, now + timedelta(hours=3))
    assert again.enqueued == []
    assert len(query(db, "SELECT * FROM sync_jobs")) == 5
    assert len(query(db, "SELECT * FROM sync_queue")) == 5


def test_paused_and_reauth_connections_are_not_scheduled(db):
    now = NOWS[0]
    new_store(db).close()
    active, paused, reauth = insert_connections(
        db,
        [
            {"account_id": "on", "last_synced_at": None},
            {"account_id": "off", "last_synced_at": None, "is_active": 0},
            {"account_id": "reauth", "last_synced_at": "2025-10-01 00:00:00", "needs_reauth": 1},
        ],
    )
    result = run_schedule(db, now)
    assert set(jobs_by_connection(db)) == {active}
    assert result.skipped == []


def test_broken_rows_are_reported_and_the_others_scheduled(db):
    now = NOWS[0]
    new_store(db).close()
    good = insert_connections(
        db,
        [
            {"account_id": "g1", "last_synced_at": None},
            {"account_id": "g2", "last_synced_at": "2025-10-01T00:00:00.000Z"},
        ],
    )
    broken = insert_connections(db, BROKEN_CONNECTIONS)
    result = run_schedule(db, now)
    assert set(jobs_by_connection(db)) == set(good)
    reasons = dict(result.skipped)
    assert set(reasons) == set(broken)
    assert "myspace" in reasons[broken[0]]
    assert "settings" in reasons[broken[2]] and "sync_interval_minutes" in reasons[broken[4]]
    assert "lookback_days" in reasons[broken[5]]
    assert (
        reasons[broken[6]]
        == "settings.sync_interval_minutes must be from 1 to 43200 minutes (30 days), not 10000000000.0"
    )
    assert reasons[broken[7]] == "settings.sync_interval_minutes must be a finite number, not inf"
    assert (
        reasons[broken[8]]
        == "settings.lookback_days must be a whole number of days from 0 to 365, not 10000000"
    )
    assert reasons[broken[9]] == (
        "settings.attribution_window_days must be a whole number of days from 0 to 90, not 100000000"
    )
    assert reasons[broken[10]] == "last_synced_at column '9999-12-31T23:59:00.000Z' is out of range"
    assert reasons[broken[11]] == "last_synced_at column '0001-01-01T00:00:00.000Z' is out of range"
    assert reasons[broken[12]] == "settings.sync_interval_minutes must be a number, not '30'"
    summary = result.summary()
    assert summary["enqueued"] == 2 and summary["skipped"] == len(BROKEN_CONNECTIONS)


# -- job row and message together -------------------------------------------------------


def test_job_row_and_message_are_written_together(db):
    now = NOWS[0]
    new_store(db).close()
    insert_connections(
        db,
        [
            {"account_id": "n", "last_synced_at": None},
            {"account_id": "i", "last_synced_at": iso_z(now - timedelta(hours=5))},
        ],
    )
    result = run_schedule(db, now)
    assert len(result.enqueued) == 2
    for job_id in result.enqueued:
        job = query(db, "SELECT * FROM sync_jobs WHERE id = ?", (job_id,))[0]
        body, row = message_for(db, job_id)
        assert (
            body["job_id"] == job_id and row["connection_id"] == job["connection_id"] == body["connection_id"]
        )
        meta = json.loads(job["metadata"])
        assert meta["sync_window"] == body["sync_window"]
        assert meta["priority"] == body["metadata"]["priority"]
        assert body["metadata"]["created_at"] == job["created_at"] == iso_z(now)
        assert body["job_type"] == job["job_type"] and job["status"] == "pending"
        assert body["organization_id"] == job["organization_id"]


def test_never_a_job_row_without_its_message(db):
    # A live message left for a connection whose job row the API worker already closed:
    # the message cannot be added, so the job row must not be added either.
    now = NOWS[0]
    store = new_store(db, clock=frozen(now))
    stuck, fine = insert_connections(
        db, [{"account_id": "stuck", "last_synced_at": None}, {"account_id": "fine", "last_synced_at": None}]
    )
    with store.write() as c:
        c.execute(
            "INSERT INTO sync_queue (job_id, connection_id, platform, body, priority, state, visible_at, "
            "created_at, updated_at) VALUES ('old-job', ?, 'google', '{}', 1, 'ready', 0, 'x', 'x')",
            (stuck,),
        )
    store.close()
    result = run_schedule(db, now)
    assert [cid for cid, _ in result.skipped] == [stuck]
    assert set(jobs_by_connection(db)) == {fine}
    orphans = query(
        db, "SELECT j.id FROM sync_jobs j LEFT JOIN sync_queue q ON q.job_id = j.id WHERE q.id IS NULL"
    )
    assert orphans == []


def test_many_jobs_across_chunks_and_multi_row_inserts(db, monkeypatch):
    """More due connections than one transaction or one insert statement takes: every one
    gets one job row and its message (alike, field for field), Facebook ones their
    attribution state, a connection with a stray live message none; a second run adds
    nothing."""
    monkeypatch.setattr(scheduling, "CHUNK", 120)
    now = NOWS[0]
    new_store(db).close()
    rows = [
        {
            "account_id": f"a{i:03d}",
            "platform": ("google", "facebook", "tiktok", "stripe")[i % 4],
            "last_synced_at": None if i % 3 == 0 else iso_z(now - timedelta(hours=2, minutes=i)),
        }
        for i in range(250)
    ]
    ids = insert_connections(db, rows)
    stray = ids[130]
    store = new_store(db, clock=frozen(now))
    with store.write() as c:
        c.execute(
            "INSERT INTO sync_queue (job_id, connection_id, platform, body, priority, state, visible_at, "
            "created_at, updated_at) VALUES ('old-job', ?, 'facebook', '{}', 1, 'ready', 0, 'x', 'x')",
            (stray,),
        )
    store.close()
    result = run_schedule(db, now)
    assert len(result.enqueued) == 249 and result.skipped[0][0] == stray
    jobs = jobs_by_connection(db)
    assert set(jobs) == set(ids) - {stray} and all(len(j) == 1 for j in jobs.values())
    for cid, (job,) in jobs.items():
        body, row = message_for(db, job["id"])
        assert SyncJobMessage.loads(row["body"]).job_id == job["id"]
        assert (body["connection_id"], body["job_type"], row["state"]) == (cid, job["job_type"], "ready")
        assert json.loads(job["metadata"])["sync_window"] == body["sync_window"]
        assert job["status"] == "pending" and job["created_at"] == job["updated_at"] == iso_z(now)
    attributed = {r["connection_id"] for r in query(db, "SELECT * FROM clearlift_connection_state")}
    assert attributed == {
        cid for cid, r in zip(ids, rows, strict=True) if r["platform"] == "facebook" and r["last_synced_at"]
    } - {stray}
    again = run_schedule(db, now)
    assert again.enqueued == [] and again.adoption.adopted == []


def test_a_row_the_consumer_could_not_read_is_skipped(tmp_path):
    """A consecutive_auth_failures that is no number: the consumer's Connection.from_row
    refuses the row, so schedule skips it and says why (it reads only the columns it plans
    from, but checks this one as building a Connection did)."""
    db = tmp_path / "clearlift.db"
    new_store(db).close()
    good, bad = insert_connections(
        db,
        [
            {"account_id": "g", "last_synced_at": None, "consecutive_auth_failures": "2"},
            {"account_id": "b", "last_synced_at": None, "consecutive_auth_failures": "many"},
        ],
    )
    result = run_schedule(db, NOWS[0])
    assert set(jobs_by_connection(db)) == {good}
    assert result.skipped == [(bad, "invalid literal for int() with base 10: 'many'")]


# -- sync --now -------------------------------------------------------------------------


def manual(db, now, cid, **kwargs):
    store = new_store(db, clock=frozen(now))
    try:
        return scheduler.enqueue_manual(store, Queue(store), cid, **kwargs)
    finally:
        store.close()


def test_sync_now_default_window_is_the_last_seven_days(db):
    now = NOWS[0]
    new_store(db).close()
    cid = insert_connection(db, account_id="m", last_synced_at=iso_z(now - timedelta(minutes=5)))
    job_id, window = manual(db, now, cid)
    assert (window.start, window.end) == (now - timedelta(days=7), now)
    (job,) = jobs_by_connection(db)[cid]
    assert job["id"] == job_id and job["job_type"] == "full"
    assert json.loads(job["metadata"])["triggered_by"] == "manual"
    body, row = message_for(db, job_id)
    assert body["metadata"]["priority"] == "high" and row["priority"] == 0
    assert body["sync_window"] == {"start": iso_z(now - timedelta(days=7)), "end": iso_z(now)}


def test_sync_now_backfill_window_covers_whole_days(db):
    now = NOWS[0]
    new_store(db).close()
    cid = insert_connection(db, account_id="m", last_synced_at=None)
    _, window = manual(db, now, cid, since=date(2025, 1, 1), until=date(2025, 3, 31))
    assert window.start == datetime(2025, 1, 1, tzinfo=UTC)
    assert window.end == datetime(2025, 4, 1, tzinfo=UTC)  # until is inclusive
    # an until of today stops at now
    c = raw(db)
    with c:
        c.execute("UPDATE sync_jobs SET status = 'completed'")
        c.execute("UPDATE sync_queue SET state = 'done'")
    c.close()
    _, window = manual(db, now, cid, since=date(2025, 10, 1), until=now.date())
    assert window.end == now


def test_sync_now_refusals(db):
    now = NOWS[0]
    new_store(db).close()
    active, paused, odd = insert_connections(
        db,
        [
            {"account_id": "a", "last_synced_at": None},
            {"account_id": "p", "last_synced_at": None, "is_active": 0},
            {"account_id": "o", "platform": "myspace"},
        ],
    )
    with pytest.raises(NotFound):
        manual(db, now, "org-1-google-nope")
    with pytest.raises(UsageError, match="paused"):
        manual(db, now, paused)
    with pytest.raises(UsageError, match="myspace"):
        manual(db, now, odd)
    with pytest.raises(UsageError, match="after"):
        manual(db, now, active, since=date(2025, 5, 2), until=date(2025, 5, 1))
    with pytest.raises(UsageError, match="empty"):
        manual(db, now, active, since=now.date() + timedelta(days=1))
    assert query(db, "SELECT * FROM sync_jobs") == [] and query(db, "SELECT * FROM sync_queue") == []
    manual(db, now, active)
    with pytest.raises(Conflict):
        manual(db, now, active)
    assert len(query(db, "SELECT * FROM sync_jobs")) == 1 and len(query(db, "SELECT * FROM sync_queue")) == 1


def test_bulk_job_creation_that_finds_a_live_row_rolls_back_and_goes_one_by_one(db):
    """The bulk path counts its inserts: a connection that already had a live job by the
    time of the insert (here: the same connection twice in one chunk) makes it roll the
    chunk back, and the careful path then creates exactly one job for it."""
    now = NOWS[0]
    new_store(db).close()
    conn_id = insert_connection(db, account_id="1", last_synced_at=None)
    store = new_store(db, clock=frozen(now))
    try:
        queue = Queue(store)
        conn = store.get_connection(conn_id)
        plan = scheduler.plan_job(conn, now)
        assert plan is not None
        job_type, priority, window, _ = plan
        jobs = [
            scheduler._new_job(
                conn, job_type, priority, window, "2025-01-01T00:00:00.000Z", triggered_by="schedule"
            )
            for _ in range(2)
        ]
        made = store.create_jobs(queue, jobs)
    finally:
        store.close()
    assert len(made.jobs) == 1 and made.already_live == [conn_id]
    assert query(db, "SELECT count(*) AS n FROM sync_jobs")[0]["n"] == 1
    assert query(db, "SELECT count(*) AS n FROM sync_queue WHERE state = 'ready'")[0]["n"] == 1
