"""Where a connection stands: the API's sync-status shape, and the operator's view."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from clearlift_cli import connsettings
from clearlift_cli.models import Connection
from clearlift_cli.redact import redact
from clearlift_cli.scheduler import plan_job
from clearlift_cli.store import Store
from clearlift_cli.timeutil import UTC, from_epoch, iso_z, parse_ts

REAUTH_HINT = (
    "The platform no longer accepts this connection's token. Ask the user to reconnect the "
    "account in ClearLift (Settings > Connections); the next sync runs within 15 minutes of "
    "reconnecting."
)


def _records(job: Any) -> int:
    """The API prefers metadata.records_synced over the column when present."""
    try:
        meta = json.loads(job["metadata"] or "{}")
        if isinstance(meta, dict) and meta.get("records_synced") is not None:
            return int(meta["records_synced"])
    except (ValueError, TypeError):
        pass
    return int(job["records_synced"] or 0)


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
    try:
        plan_job(conn, now)
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
    for (_, prev_end), (next_start, _) in zip(coverage, coverage[1:]):
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
    return ConnectionReport(conn, store.latest_job(conn.id), None if problem else next_due(conn, now), cov,
                            _gaps(cov), problem, deferrals(store, conn.id).get(conn.id))


def all_reports(
    store: Store, *, organization_id: str | None = None, platform: str | None = None,
    failing_only: bool = False,
) -> list[ConnectionReport]:
    now = store.clock.now()
    jobs = store.latest_jobs()
    waiting = deferrals(store)
    out = []
    for conn in store.list_connections(organization_id=organization_id, platform=platform):
        problem = connection_problem(conn, now)
        r = ConnectionReport(conn, jobs.get(conn.id), None if problem else next_due(conn, now), [], [], problem,
                             waiting.get(conn.id))
        if failing_only and not r.failing:
            continue
        out.append(r)
    return out
