"""Where a connection stands: the API's sync-status shape, and the operator's view."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import Any

from clearlift_cli import connsettings
from clearlift_cli.models import Connection
from clearlift_cli.redact import redact
from clearlift_cli.scheduler import plan
from clearlift_cli.store import Store
from clearlift_cli.timeutil import UTC, from_epoch, iso_z, parse_ts

REAUTH_HINT = (
    "The platform no longer accepts this connection's token. Ask the user to reconnect the "
    "account in ClearLift (Settings > Connections); the next sync runs within 15 minutes of "
    "reconnecting."
)


def _records(job: Any) -> int:
    """The API prefers metadata.records_synced over the column when present."""
    return _records_of(job["metadata"], job["records_synced"])


def _records_of(metadata: str | None, column: Any) -> int:
    if metadata and "records_synced" in metadata:
        try:
            meta = json.loads(metadata)
            if isinstance(meta, dict) and meta.get("records_synced") is not None:
                return int(meta["records_synced"])
        except (ValueError, TypeError, OverflowError):
            pass
    return int(column or 0)


def sync_status(conn: Connection, job: Any | None) -> dict[str, Any]:
    """Exactly the shape of the API's ``/v1/connectors/:connection_id/sync-status``."""
    latest = None
    if job is not None:
        latest = {
            "status": job["status"],
            "type": job["job_type"],
            "completed_at": job["completed_at"],
            "records_synced": _records(job),
            "error": redact(job["error_message"]) if job["error_message"] else None,
        }
    return {
        "connection": {
            "platform": conn.platform,
            "account_name": conn.account_name,
            "is_active": conn.is_active,
            "last_synced_at": conn.last_synced_at,
            "sync_status": conn.sync_status,
        },
        "latest_sync": latest,
    }


def connection_problem(conn: Connection, now: datetime) -> str | None:
    """Why ``schedule`` cannot plan this connection (a broken row: unknown platform,
    settings out of range or not JSON, an unreadable timestamp), or None."""
    return _problem(conn.platform, conn.settings_text, conn.last_synced_at, now)


def _problem(
    platform: str, settings_text: str | None, last_synced_at: str | None, now: datetime
) -> str | None:
    """``connection_problem`` from the columns ``plan_job`` reads (status checks every row)."""
    try:
        plan(platform, settings_text, last_synced_at, now)
    except (ValueError, TypeError) as exc:
        return redact(str(exc))
    return None


def next_due(conn: Connection, now: datetime) -> datetime | None:
    """When ``schedule`` will next enqueue this connection (None: paused, needs re-auth,
    or a broken row that ``schedule`` skips)."""
    if not conn.is_active or conn.needs_reauth:
        return None
    try:
        last = parse_ts(conn.last_synced_at)
        interval = connsettings.load(conn.settings_text).sync_interval_minutes
        return now if last is None else max(now, last + timedelta(minutes=interval))
    except (ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class Deferral:
    """Why a connection's queued job waits, and until when: a rate limit (its own, or its
    platform's app-wide pause) or a retry backoff."""

    until: datetime
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"until": iso_z(self.until), "reason": self.reason}


def deferrals(store: Store, connection_id: str | None = None) -> dict[str, Deferral]:
    """connection id -> its queued job's deferral, for connections whose job waits now."""
    pauses = store.platform_pause_reasons()
    out = {}
    for r in store.deferred_messages(connection_id, paused_platforms=pauses):
        until, reason = r["visible_at"], r["last_error"] or "waiting to retry"
        paused = pauses.get(r["platform"])
        if paused and paused[0] > until:
            until, reason = paused[0], f"platform {r['platform']} paused: {paused[1]}"
        out[r["connection_id"]] = Deferral(_from_epoch(until), redact(reason))
    return out


def _from_epoch(epoch: float) -> datetime:
    try:
        return from_epoch(epoch)
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ConnectionReport:
    connection: Connection
    latest_job: Any | None
    next_due_at: datetime | None
    coverage: list[tuple[str, str]]
    gaps: list[tuple[str, str]]
    problem: str | None = None  # a broken row `schedule` skips (connection_problem)
    deferred: Deferral | None = None  # its queued job waits (rate limit, backoff) until ...

    @property
    def failing(self) -> bool:
        c = self.connection
        return c.is_active and (c.needs_reauth or c.sync_status == "failed" or self.problem is not None)

    def to_json(self) -> dict[str, Any]:
        c = self.connection
        out = sync_status(c, self.latest_job)
        out["details"] = {
            "connection_id": c.id,
            "organization_id": c.organization_id,
            "account_id": c.account_id,
            "sync_error": redact(c.sync_error) if c.sync_error else None,
            "needs_reauth": c.needs_reauth,
            "reauth_reason": redact(c.reauth_reason) if c.reauth_reason else None,
            "next_due_at": iso_z(self.next_due_at) if self.next_due_at else None,
            "problem": redact(self.problem) if self.problem else None,
            "coverage": [{"start": s, "end": e} for s, e in self.coverage],
            "gaps": [{"start": s, "end": e} for s, e in self.gaps],
            "deferred": self.deferred.to_json() if self.deferred else None,
        }
        return out


def _gaps(coverage: list[tuple[str, str]]) -> list[tuple[str, str]]:
    from datetime import date

    out = []
    for (_, prev_end), (next_start, _) in pairwise(coverage):
        a = date.fromisoformat(prev_end) + timedelta(days=1)
        b = date.fromisoformat(next_start) - timedelta(days=1)
        if a <= b:
            out.append((a.isoformat(), b.isoformat()))
    return out


def connection_report(store: Store, connection_id: str) -> ConnectionReport:
    conn = store.get_connection(connection_id)
    cov = store.coverage(conn.id)
    now = store.clock.now()
    problem = connection_problem(conn, now)
    return ConnectionReport(
        conn,
        store.latest_job(conn.id),
        None if problem else next_due(conn, now),
        cov,
        _gaps(cov),
        problem,
        deferrals(store, conn.id).get(conn.id),
    )


def _latest_job(row: Any) -> dict[str, Any] | None:
    """The latest job of a ``connections_with_latest_job`` row, keyed like a sync_jobs row."""
    if row["job_id"] is None:
        return None
    return {
        "id": row["job_id"],
        "status": row["job_status"],
        "job_type": row["job_type"],
        "completed_at": row["job_completed_at"],
        "records_synced": row["job_records_synced"],
        "metadata": row["job_metadata"],
        "error_message": row["job_error_message"],
        "created_at": row["job_created_at"],
    }


def all_reports(
    store: Store,
    *,
    organization_id: str | None = None,
    platform: str | None = None,
    failing_only: bool = False,
) -> list[ConnectionReport]:
    """A report per connection (no coverage), in ``list_connections`` order."""
    now = store.clock.now()
    waiting = deferrals(store)
    out = []
    rows = store.connections_with_latest_job(organization_id=organization_id, platform=platform)
    keys = frozenset(rows[0].keys()) if rows else frozenset()
    for row in rows:
        r = _report(row, now, waiting, keys)
        if failing_only and not r.failing:
            continue
        out.append(r)
    return out


_UNCHECKED: Any = object()  # _report: the row's problem is not known yet


def _report(
    row: Any,
    now: datetime,
    waiting: dict[str, Deferral],
    keys: frozenset[str] | None = None,
    problem: str | None = _UNCHECKED,
) -> ConnectionReport:
    conn = Connection.from_row(row, keys)
    if problem is _UNCHECKED:
        problem = connection_problem(conn, now)
    return ConnectionReport(
        conn,
        _latest_job(row),
        None if problem else next_due(conn, now),
        [],
        [],
        problem,
        waiting.get(conn.id),
    )


def _positions(rows: list[Any], names: tuple[str, ...]) -> list[int]:
    """Where each of ``names`` is in the rows of one query (reading by position is several
    times cheaper than by name, which compares the names of every column before it)."""
    if not rows:
        return []
    index = {k: i for i, k in enumerate(rows[0].keys())}
    return [index[k] for k in names]


# A connection's columns, then its latest job's (the first is its id: None when it has none).
_JSON_COLUMNS = (
    "id",
    "platform",
    "settings",
    "account_name",
    "is_active",
    "last_synced_at",
    "sync_status",
    "needs_reauth",
    "job_id",
    "job_status",
    "job_type",
    "job_completed_at",
    "job_records_synced",
    "job_metadata",
    "job_error_message",
)


def status_json(
    store: Store,
    *,
    organization_id: str | None = None,
    platform: str | None = None,
    failing_only: bool = False,
) -> tuple[list[dict[str, Any]], bool, set[str]]:
    """``status --json`` with no argument: ``{"connection_id": …, **sync-status shape,
    "problem": …, "deferred": …}`` per connection, whether any active connection is failing, needs re-auth
    or cannot be scheduled (a broken row), and the
    platforms of the active ones. The 10k-connection path: plain tuples read by position,
    no per-row objects (the same shape as ``sync_status``, which a test holds it to)."""
    rows = store.connections_with_latest_job(organization_id=organization_id, platform=platform)
    out: list[dict[str, Any]] = []
    failing, platforms = False, set[str]()
    if not rows:
        return out, failing, platforms
    at = _positions(rows, _JSON_COLUMNS)
    now = store.clock.now()
    waiting = deferrals(store)
    for row in rows:
        cid, plat, settings_text, name, active, last, status, reauth, *job = [row[i] for i in at]
        problem = _problem(plat, settings_text, last, now)
        bad = bool(active) and (bool(reauth) or status == "failed" or problem is not None)
        failing = failing or bad
        if active:
            platforms.add(plat)
        if failing_only and not bad:
            continue
        out.append(
            {
                "connection_id": cid,
                "connection": {
                    "platform": plat,
                    "account_name": name,
                    "is_active": bool(active),
                    "last_synced_at": last,
                    "sync_status": status,
                },
                "latest_sync": None if job[0] is None else _latest_json(job),
                "problem": problem,
                "deferred": waiting[cid].to_json() if cid in waiting else None,
            }
        )
    return out, failing, platforms


def _latest_json(job: list[Any]) -> dict[str, Any]:
    """A connection's latest job in ``status --json``, from the job columns of ``_JSON_COLUMNS``."""
    _job_id, status, job_type, completed, records, metadata, error = job
    return {
        "status": status,
        "type": job_type,
        "completed_at": completed,
        "records_synced": _records_of(metadata, records),
        "error": redact(error) if error else None,
    }


@dataclass(frozen=True)
class StatusOverview:
    """``status`` with no argument: counts over every matching connection, the rows to
    show (failing and re-auth ones first) and one-line notices for the operator."""

    total: int
    active: int
    paused: int
    by_status: dict[str, int]  # active connections by sync_status
    failing: int  # active, and failed, needing re-auth or not schedulable (a broken row)
    needs_reauth: int
    reports: list[ConnectionReport]  # the rows shown, failing first
    hidden: int  # matching rows not shown (``--all`` shows them)
    hidden_failing: int  # of which failing or needing re-auth (``--failing`` shows them)
    notices: list[str] = field(default_factory=list)

    @property
    def any_failing(self) -> bool:
        return self.failing > 0


def overview(
    store: Store,
    *,
    organization_id: str | None = None,
    platform: str | None = None,
    failing_only: bool = False,
    limit: int | None = None,
    settings: Any = None,
) -> StatusOverview:
    """Counts over every matching connection; every failing one (re-auth first) and then
    the others, ``limit`` rows in all (None: every row; ``failing_only``: every failing
    row and no other). With ``settings``, a notice for each configured API version of an
    active connection's platform that is sunset or ending soon."""
    rows = store.connections_with_latest_job(organization_id=organization_id, platform=platform)
    now = store.clock.now()
    sorted_rows = _RowsByState.of(rows, now)
    failing_rows = sorted_rows.reauth + sorted_rows.failed
    other_rows = sorted_rows.other
    if failing_only:
        chosen = failing_rows
    elif limit is None:
        chosen = failing_rows + other_rows
    else:
        chosen = failing_rows[:limit] + other_rows[: max(0, limit - len(failing_rows))]
    matching = len(failing_rows) if failing_only else len(rows)
    waiting = deferrals(store)
    keys = frozenset(rows[0].keys()) if rows else frozenset()
    problems = sorted_rows.problems
    reports = [_report(rows[n], now, waiting, keys, problems.get(n, _UNCHECKED)) for n in chosen]
    return StatusOverview(
        total=len(rows),
        active=sorted_rows.active,
        paused=len(rows) - sorted_rows.active,
        by_status=sorted_rows.by_status,
        failing=len(failing_rows),
        needs_reauth=len(sorted_rows.reauth),
        reports=reports,
        hidden=matching - len(reports),
        hidden_failing=len(failing_rows) - sum(r.failing for r in reports),
        notices=version_notices(settings, sorted_rows.platforms, now.date()) if settings is not None else [],
    )


@dataclass
class _RowsByState:
    """The positions of an overview's rows by what they show: re-auth, failed (or not
    schedulable), the others (paused ones too); the problem of each row checked, and the
    counts over the active ones. Positions, not Row objects: every row is classified (read
    by position, checked with ``_problem``), and only the rows shown become reports."""

    reauth: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    other: list[int] = field(default_factory=list)
    problems: dict[int, str | None] = field(default_factory=dict)  # position -> problem
    by_status: dict[str, int] = field(default_factory=dict)  # active connections by sync_status
    active: int = 0
    platforms: set[str] = field(default_factory=set)  # of the active connections

    @classmethod
    def of(cls, rows: list[Any], now: datetime) -> _RowsByState:
        out = cls()
        reauth_rows, failed_rows, other_rows = out.reauth, out.failed, out.other
        problems, by_status, platforms = out.problems, out.by_status, out.platforms
        active = 0
        at = _positions(
            rows, ("is_active", "platform", "sync_status", "needs_reauth", "settings", "last_synced_at")
        )
        for n, row in enumerate(rows):
            is_active, plat, status, reauth, settings_text, last = [row[i] for i in at]
            if not is_active:
                other_rows.append(n)
                continue
            active += 1
            platforms.add(plat)
            status = status or "pending"
            by_status[status] = by_status.get(status, 0) + 1
            if reauth:
                reauth_rows.append(n)
            elif status == "failed":
                failed_rows.append(n)
            else:
                problem = problems[n] = _problem(plat, settings_text, last, now)
                (other_rows if problem is None else failed_rows).append(n)
        out.active = active
        return out


def version_notices(settings: Any, platforms: set[str], today: date) -> list[str]:
    """One line per configured API version, of a platform in ``platforms``, that is sunset
    or ends within ``versions.WARN_DAYS`` days."""
    from clearlift_cli.platforms.versions import check, configured_versions

    out = []
    for platform, version in configured_versions(settings).items():
        if platform in platforms:
            vc = check(platform, version, today)
            if vc.state in ("ending", "sunset") and vc.message:
                out.append(vc.message)
    return out
