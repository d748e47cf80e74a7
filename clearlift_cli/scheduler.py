"""Scheduling: which connections are due, and enqueueing their jobs.

Rules (from the system this replaces): only active connections; never synced -> a
``full`` job over the last 7 days at priority ``high``; otherwise due
``settings.sync_interval_minutes`` (default 60) after ``last_synced_at``, as an
``incremental`` job whose window starts a lookback before the last sync; never a second
job while one is pending or running; connections flagged ``needs_reauth`` wait for a
reconnect. The job row and its queue message are written in one transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from operator import itemgetter
from typing import Any

from clearlift_cli import connsettings
from clearlift_cli.adoption import AdoptionResult, adopt_orphan_jobs
from clearlift_cli.connsettings import DEFAULT_INTERVAL_MINUTES, ConnectionSettings
from clearlift_cli.errors import InvalidInput, UsageError
from clearlift_cli.models import (
    MAX_WINDOW_DAYS,
    Connection,
    JobType,
    Priority,
    SyncJobMessage,
    SyncWindow,
)
from clearlift_cli.platforms import registry
from clearlift_cli.store import Store, new_job_id
from clearlift_cli.store.queue import Queue
from clearlift_cli.store.scheduling import DUE_POSITIONS, NewJob
from clearlift_cli.timeutil import UTC, iso_z, julian_day, parse_ts

log = logging.getLogger("clearlift.schedule")

FULL_SYNC_DAYS = 7
ATTRIBUTION_EVERY = timedelta(hours=24)


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


def _candidates(store: Store, now: datetime) -> list[Any]:
    """Rows that may be due (the store's prefilter; plan_job decides exactly)."""
    # One second of slack absorbs julianday()'s float rounding, which otherwise drops some
    # rows that are due at exactly the interval.
    return store.due_candidates(
        julian_day(now - timedelta(minutes=DEFAULT_INTERVAL_MINUTES) + timedelta(seconds=1))
    )


def _attribution_state(store: Store, connection_ids: list[str]) -> dict[str, datetime | None]:
    """When each of these connections last had an attribution-window job (read for the
    candidates only: every synced Facebook connection has a row)."""
    return {cid: parse_ts(text) for cid, text in store.attribution_state(connection_ids).items()}


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


def _new_job(
    conn: Connection,
    job_type: JobType,
    priority: Priority,
    window: SyncWindow,
    created: str,
    *,
    triggered_by: str,
    attribution: bool = False,
) -> NewJob:
    return _job(
        conn.id,
        conn.organization_id,
        conn.platform,
        conn.account_id,
        job_type,
        priority,
        window,
        created,
        triggered_by=triggered_by,
        attribution=attribution,
    )


def _job(
    connection_id: str,
    organization_id: str,
    platform: str,
    account_id: str,
    job_type: JobType,
    priority: Priority,
    window: SyncWindow,
    created: str,
    *,
    triggered_by: str,
    attribution: bool = False,
) -> NewJob:
    message = SyncJobMessage(
        job_id=new_job_id(),
        connection_id=connection_id,
        organization_id=organization_id,
        platform=platform,
        account_id=account_id,
        job_type=job_type,
        sync_window=window,
        retry_count=0,
        created_at=created,
        priority=priority,
    )
    metadata = {
        "sync_window": window.to_json(),
        "priority": priority.value,
        "retry_count": 0,
        "triggered_by": triggered_by,
    }
    return NewJob(message, metadata, attribution)


def schedule(
    store: Store, queue: Queue, *, configured_lookback: dict[str, int] | None = None
) -> ScheduleResult:
    """Enqueue a job for every due connection. Broken rows are reported and skipped."""
    now = store.clock.now()
    result = ScheduleResult()
    # First: a closed abandoned job leaves its connection due in this very run.
    result.adoption = adopt_orphan_jobs(store, queue, now, window_days=FULL_SYNC_DAYS)
    rows = _candidates(store, now)
    result.found = len(rows)
    # by position: the columns planning reads, no Connection per row
    due = list(map(itemgetter(*DUE_POSITIONS), rows))
    attribution_at = _attribution_state(store, [d[0] for d in due])
    created = iso_z(now)
    # Jobs planned alike share one window, so each distinct window is formatted once.
    windows: dict[SyncWindow, SyncWindow] = {}
    jobs = []
    for cid, org, platform, account_id, last_synced_at, settings_text, auth_failures in due:
        try:
            if auth_failures and not isinstance(auth_failures, int):
                int(auth_failures)  # the check Connection.from_row makes (the consumer builds one)
            planned = plan(
                platform,
                settings_text,
                last_synced_at,
                now,
                configured_lookback=configured_lookback,
                last_attribution_at=attribution_at.get(cid),
            )
        except (ValueError, TypeError, KeyError) as exc:
            # one line per broken row (a warning: worth a mail even under -q), said once
            result.skipped.append((cid, str(exc)))
            log.warning("skipped %s: %s", cid, exc)
            continue
        if planned is None:
            result.not_due += 1
            continue
        job_type, priority, window, is_attr = planned
        jobs.append(
            _job(
                cid,
                org,
                platform,
                str(account_id),
                job_type,
                priority,
                windows.setdefault(window, window),
                created,
                triggered_by="schedule",
                attribution=is_attr,
            )
        )
    made = store.create_jobs(queue, jobs)
    result.enqueued.extend(made.jobs)
    result.already_queued += len(made.already_live)
    for cid in made.message_live:  # a live message whose job row is not live: worth a look
        reason = f"connection {cid} already has a queued or running job"
        result.skipped.append((cid, reason))
        log.warning("skipped %s: %s", cid, reason)
    return result


def enqueue_manual(
    store: Store,
    queue: Queue,
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
        raise InvalidInput("since", f"{since} is after <until> {until}")
    start = datetime.combine(since, time.min, UTC) if since else now - timedelta(days=FULL_SYNC_DAYS)
    end = min(now, datetime.combine(until + timedelta(days=1), time.min, UTC)) if until else now
    if start >= end:
        raise InvalidInput("since", "leaves an empty window (is it in the future?)")
    if end - start > timedelta(days=MAX_WINDOW_DAYS):
        raise InvalidInput(
            "since",
            f"{since} is more than {MAX_WINDOW_DAYS} days (about ten years) before the "
            "window's end: one job syncs at most that much",
        )
    window = SyncWindow(start, end)
    job = _new_job(conn, JobType.FULL, Priority.HIGH, window, iso_z(now), triggered_by="manual")
    return store.create_job(queue, job), window
