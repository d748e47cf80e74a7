"""Scheduling: which connections are due, and enqueueing their jobs.

Rules (from the system this replaces): only active connections; never synced -> a
``full`` job over the last 7 days at priority ``high``; otherwise due
``settings.sync_interval_minutes`` (default 60) after ``last_synced_at``, as an
``incremental`` job whose window starts a lookback before the last sync; never a second
job while one is pending or running; connections flagged ``needs_reauth`` wait for a
reconnect. The job row and its queue message are written in one transaction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from clearlift_cli import connsettings
from clearlift_cli.adoption import AdoptionResult, adopt_orphan_jobs
from clearlift_cli.connsettings import DEFAULT_INTERVAL_MINUTES, ConnectionSettings
from clearlift_cli.errors import Conflict, UsageError
from clearlift_cli.models import (
    MAX_WINDOW_DAYS,
    Connection,
    JobType,
    Priority,
    SyncJobMessage,
    SyncWindow,
)
from clearlift_cli.platforms import registry
from clearlift_cli.queue import SqliteQueue
from clearlift_cli.store import CONNECTION_COLUMNS, Store, new_job_id
from clearlift_cli.timeutil import UTC, iso_z, julian_day, parse_ts

log = logging.getLogger("clearlift.schedule")

FULL_SYNC_DAYS = 7
ATTRIBUTION_EVERY = timedelta(hours=24)


class AlreadyQueued(Conflict):
    """The connection got a job from an overlapping run meanwhile (safe by design)."""


@dataclass
class ScheduleResult:
    found: int = 0
    enqueued: list[str] = field(default_factory=list)  # job ids
    skipped: list[tuple[str, str]] = field(default_factory=list)  # broken rows: (connection id, reason)
    not_due: int = 0
    adoption: AdoptionResult = field(default_factory=AdoptionResult)  # job rows clearlift did not create
    # Given a job meanwhile by an overlapping run (safe by design): counted, not reported.
    already_queued: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "enqueued": len(self.enqueued),
            "not_due": self.not_due,
            "already_queued": self.already_queued,
            "skipped": len(self.skipped),
            "skipped_reasons": [{"connection_id": c, "reason": r} for c, r in self.skipped],
            "adopted": len(self.adoption.adopted),
            "abandoned_closed": len(self.adoption.closed),
            "adoption_waiting": [{"job_id": j, "reason": r} for j, r in self.adoption.waiting],
        }


def _candidates(store: Store, now: datetime) -> list[sqlite3.Row]:
    """Rows that may be due, found through indexes so the cost follows the due ones:
    never synced (or unparseable), synced longer than the default interval ago, or with
    their own interval. No live job, no pending re-auth."""
    # A prefilter only (plan_job decides exactly): one second of slack absorbs julianday()'s
    # float rounding, which otherwise drops some rows that are due at exactly the interval.
    cutoff = julian_day(now - timedelta(minutes=DEFAULT_INTERVAL_MINUTES) + timedelta(seconds=1))
    live = (
        "NOT EXISTS (SELECT 1 FROM sync_jobs j WHERE j.connection_id = c.id "
        "AND j.status IN ('pending', 'running')) AND coalesce(c.needs_reauth, 0) = 0"
    )
    cols = ", ".join(f"c.{col.strip()}" for col in CONNECTION_COLUMNS.split(","))
    # `+c.is_active` in the last branch keeps SQLite on the partial override index; on the
    # is_active index it would test instr() on every active connection.
    sql = f"""
        SELECT {cols} FROM platform_connections c
         WHERE c.is_active = 1 AND julianday(c.last_synced_at) IS NULL AND {live}
        UNION
        SELECT {cols} FROM platform_connections c
         WHERE c.is_active = 1 AND julianday(c.last_synced_at) <= ? AND {live}
        UNION
        SELECT {cols} FROM platform_connections c
         WHERE instr(c.settings, 'sync_interval_minutes') > 0 AND +c.is_active = 1 AND {live}
    """
    return store.read(sql, (cutoff,))


def _attribution_state(store: Store, connection_ids: list[str]) -> dict[str, datetime | None]:
    """When each of these connections last had an attribution-window job (read for the
    candidates only: every synced Facebook connection has a row)."""
    out: dict[str, datetime | None] = {}
    for i in range(0, len(connection_ids), 500):
        chunk = connection_ids[i : i + 500]
        for r in store.read(
            "SELECT connection_id, last_attribution_window_at FROM clearlift_connection_state "
            f"WHERE connection_id IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            out[r[0]] = parse_ts(r[1])
    return out


def lookback_days(conn: Connection, settings: ConnectionSettings, configured: dict[str, int]) -> int:
    return _lookback_days(conn.platform, settings, configured)


def _lookback_days(platform: str, settings: ConnectionSettings, configured: dict[str, int]) -> int:
    if settings.lookback_days is not None:
        return settings.lookback_days
    return configured.get(platform, registry.get(platform).client.default_lookback_days)


def plan_job(
    conn: Connection,
    now: datetime,
    *,
    configured_lookback: dict[str, int] | None = None,
    last_attribution_at: datetime | None = None,
) -> tuple[JobType, Priority, SyncWindow, bool] | None:
    """What job (type, priority, window, is_attribution_window) ``conn`` needs now, or None
    when it is not due. Raises ValueError for a broken row (settings, timestamps), naming
    the column."""
    return plan(
        conn.platform,
        conn.settings_text,
        conn.last_synced_at,
        now,
        configured_lookback=configured_lookback,
        last_attribution_at=last_attribution_at,
    )


def plan(
    platform: str,
    settings_text: str | None,
    last_synced_at: str | None,
    now: datetime,
    *,
    configured_lookback: dict[str, int] | None = None,
    last_attribution_at: datetime | None = None,
) -> tuple[JobType, Priority, SyncWindow, bool] | None:
    """``plan_job`` from the only columns it reads (``status`` checks every connection
    with it, without building a ``Connection`` per row)."""
    if not registry.is_known(platform):
        raise ValueError(f"unknown platform {platform!r}")
    settings = connsettings.load(settings_text)
    try:
        last = parse_ts(last_synced_at)
    except ValueError as exc:
        raise ValueError(f"last_synced_at column is not a timestamp ({exc})") from None
    if last is None:
        return JobType.FULL, Priority.HIGH, SyncWindow(now - timedelta(days=FULL_SYNC_DAYS), now), False
    try:
        if now < last + timedelta(minutes=settings.sync_interval_minutes):
            return None
        start = last - timedelta(days=_lookback_days(platform, settings, configured_lookback or {}))
    except OverflowError:  # the year 1 or 9999: the row was written by something broken
        raise ValueError(f"last_synced_at column {last_synced_at!r} is out of range") from None
    attribution = settings.attribution_window_days
    if attribution is None:
        attribution = registry.get(platform).client.attribution_window_days
    is_attr = False
    if attribution and (last_attribution_at is None or now - last_attribution_at >= ATTRIBUTION_EVERY):
        start = min(start, now - timedelta(days=attribution))
        is_attr = True
    return JobType.INCREMENTAL, Priority.NORMAL, SyncWindow(start, now), is_attr


def _insert_job(
    c: sqlite3.Connection,
    queue: SqliteQueue,
    conn: Connection,
    job_type: JobType,
    priority: Priority,
    window: SyncWindow,
    now: datetime,
    *,
    triggered_by: str,
) -> str:
    job_id = new_job_id()
    created = iso_z(now)
    metadata = {
        "sync_window": window.to_json(),
        "priority": priority.value,
        "retry_count": 0,
        "triggered_by": triggered_by,
    }
    # The guard makes a second live job impossible even if two schedulers raced here.
    n = c.execute(
        _LIVE_JOB_INSERT,
        (
            job_id,
            conn.organization_id,
            conn.id,
            job_type.value,
            created,
            created,
            json.dumps(metadata, allow_nan=False),
            conn.id,
        ),
    ).rowcount
    if n == 0:
        raise AlreadyQueued(f"connection {conn.id} already has a pending or running job")
    message = SyncJobMessage(
        job_id=job_id,
        connection_id=conn.id,
        organization_id=conn.organization_id,
        platform=conn.platform,
        account_id=conn.account_id,
        job_type=job_type,
        sync_window=window,
        retry_count=0,
        created_at=created,
        priority=priority,
    )
    try:
        queue.enqueue(c, message)
    except Conflict:
        # no message, no job: take back the uncommitted row (schedule's transaction goes on)
        c.execute("DELETE FROM sync_jobs WHERE id = ?", (job_id,))
        raise
    return job_id


class _Raced(Exception):
    """A bulk insert created fewer rows than planned: another writer got there first."""


_LIVE_JOB_INSERT = """
    INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at,
                           updated_at, metadata, records_synced, progress_percentage)
    SELECT ?, ?, ?, 'pending', ?, ?, ?, ?, 0, 0
     WHERE NOT EXISTS (SELECT 1 FROM sync_jobs WHERE connection_id = ?
                        AND status IN ('pending', 'running'))
"""

_ATTRIBUTION_UPSERT = (
    "INSERT INTO clearlift_connection_state (connection_id, last_attribution_window_at) "
    "VALUES (?, ?) ON CONFLICT (connection_id) DO UPDATE SET "
    "last_attribution_window_at = excluded.last_attribution_window_at"
)


def _live_connections(c: sqlite3.Connection, ids: list[str]) -> tuple[set[str], set[str]]:
    """Of ``ids``, those with a pending/running job row and those with a live message."""
    marks = ",".join("?" * len(ids))
    jobs = {
        r[0]
        for r in c.execute(
            f"SELECT connection_id FROM sync_jobs WHERE status IN ('pending', 'running') "
            f"AND connection_id IN ({marks})",
            ids,
        ).fetchall()
    }
    messages = {
        r[0]
        for r in c.execute(
            f"SELECT connection_id FROM sync_queue WHERE state IN ('ready', 'leased') "
            f"AND connection_id IN ({marks})",
            ids,
        ).fetchall()
    }
    return jobs, messages


def _create_jobs(
    c: sqlite3.Connection,
    queue: SqliteQueue,
    chunk: list[tuple[Connection, Any]],
    now: datetime,
    result: ScheduleResult,
) -> None:
    """Create the chunk's jobs and their messages in a handful of statements (one per
    table, not two per job): the connections that got a live job meanwhile are counted, the
    rest inserted together. Raises _Raced, rolling the chunk back, if any insert found a
    live row after all."""
    jobs_live, messages_live = _live_connections(c, [conn.id for conn, _ in chunk])
    created = iso_z(now)
    job_rows, messages, attribution, job_ids = [], [], [], []
    for conn, (job_type, priority, window, is_attr) in chunk:
        if conn.id in jobs_live:
            log.debug("not enqueued: connection %s already has a pending or running job", conn.id)
            result.already_queued += 1
            continue
        if conn.id in messages_live:  # a live message whose job row is not live: worth a look
            reason = f"connection {conn.id} already has a queued or running job"
            result.skipped.append((conn.id, reason))
            log.warning("skipped %s: %s", conn.id, reason)
            continue
        job_id = new_job_id()
        window_json = window.to_json()
        metadata = {
            "sync_window": window_json,
            "priority": priority.value,
            "retry_count": 0,
            "triggered_by": "schedule",
        }
        job_rows.append(
            (
                job_id,
                conn.organization_id,
                conn.id,
                job_type.value,
                created,
                created,
                json.dumps(metadata, allow_nan=False),
                conn.id,
            )
        )
        messages.append(
            SyncJobMessage(
                job_id=job_id,
                connection_id=conn.id,
                organization_id=conn.organization_id,
                platform=conn.platform,
                account_id=conn.account_id,
                job_type=job_type,
                sync_window=window,
                retry_count=0,
                created_at=created,
                priority=priority,
            )
        )
        if is_attr:
            attribution.append((conn.id, created))
        job_ids.append(job_id)
    if not job_rows:
        return
    if c.executemany(_LIVE_JOB_INSERT, job_rows).rowcount != len(job_rows):
        raise _Raced()
    if queue.enqueue_many(c, messages) != len(messages):
        raise _Raced()
    if attribution:
        c.executemany(_ATTRIBUTION_UPSERT, attribution)
    result.enqueued.extend(job_ids)


def _create_jobs_one_by_one(
    c: sqlite3.Connection,
    queue: SqliteQueue,
    chunk: list[tuple[Connection, Any]],
    now: datetime,
    result: ScheduleResult,
) -> None:
    """The careful path: one job at a time, each insert guarded on its own."""
    for conn, (job_type, priority, window, is_attr) in chunk:
        try:
            job_id = _insert_job(c, queue, conn, job_type, priority, window, now, triggered_by="schedule")
        except AlreadyQueued as exc:
            log.debug("not enqueued: %s", exc)
            result.already_queued += 1
            continue
        except Conflict as exc:  # a live message whose job row is not live: worth a look
            result.skipped.append((conn.id, str(exc)))
            log.warning("skipped %s: %s", conn.id, exc)
            continue
        if is_attr:
            c.execute(_ATTRIBUTION_UPSERT, (conn.id, iso_z(now)))
        result.enqueued.append(job_id)


def schedule(
    store: Store, queue: SqliteQueue, *, configured_lookback: dict[str, int] | None = None
) -> ScheduleResult:
    """Enqueue a job for every due connection. Broken rows are reported and skipped."""
    now = store.clock.now()
    result = ScheduleResult()
    # First: a closed abandoned job leaves its connection due in this very run.
    result.adoption = adopt_orphan_jobs(store, queue, now, window_days=FULL_SYNC_DAYS)
    rows = _candidates(store, now)
    result.found = len(rows)
    attribution_at = _attribution_state(store, [r["id"] for r in rows])
    plans = []
    keys = frozenset(rows[0].keys()) if rows else frozenset()
    for row in rows:
        try:
            conn = Connection.from_row(row, keys)
            plan = plan_job(
                conn,
                now,
                configured_lookback=configured_lookback,
                last_attribution_at=attribution_at.get(conn.id),
            )
        except (ValueError, TypeError, KeyError) as exc:
            # one line per broken row (a warning: worth a mail even under -q), said once
            result.skipped.append((row["id"], str(exc)))
            log.warning("skipped %s: %s", row["id"], exc)
            continue
        if plan is None:
            result.not_due += 1
            continue
        plans.append((conn, plan))
    # One short transaction per chunk keeps other writers (consumers) moving.
    for i in range(0, len(plans), 500):
        chunk = plans[i : i + 500]
        try:
            with store.write() as c:
                store.lock_scheduling(c)
                _create_jobs(c, queue, chunk, now, result)
        except _Raced:
            # Something wrote live jobs between our look and our insert (the chunk was
            # rolled back whole): do it again one connection at a time.
            with store.write() as c:
                store.lock_scheduling(c)
                _create_jobs_one_by_one(c, queue, chunk, now, result)
    return result


def enqueue_manual(
    store: Store,
    queue: SqliteQueue,
    connection_id: str,
    *,
    since: date | None = None,
    until: date | None = None,
) -> tuple[str, SyncWindow]:
    """``sync CONN --now``: a ``full`` job at priority ``high`` (default: the last 7 days;
    ``since``/``until`` are inclusive dates for a backfill)."""
    conn = store.get_connection(connection_id)
    if not conn.is_active:
        raise UsageError(
            f"connection {connection_id} is paused (is_active = 0): `clearlift connections resume {connection_id}` first"
        )
    if not registry.is_known(conn.platform):
        raise UsageError(f"connection {connection_id} has unknown platform {conn.platform!r}")
    now = store.clock.now()
    if since and until and since > until:
        raise UsageError(f"--since {since} is after --until {until}")
    start = datetime.combine(since, time.min, UTC) if since else now - timedelta(days=FULL_SYNC_DAYS)
    end = min(now, datetime.combine(until + timedelta(days=1), time.min, UTC)) if until else now
    if start >= end:
        raise UsageError("the window is empty (is --since in the future?)")
    if end - start > timedelta(days=MAX_WINDOW_DAYS):
        raise UsageError(
            f"--since {since} is more than {MAX_WINDOW_DAYS} days (about ten years) before the "
            "window's end: one job syncs at most that much"
        )
    window = SyncWindow(start, end)
    with store.write() as c:
        store.lock_scheduling(c)
        job_id = _insert_job(c, queue, conn, JobType.FULL, Priority.HIGH, window, now, triggered_by="manual")
    return job_id, window
