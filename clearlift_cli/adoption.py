"""Job rows clearlift did not create: adopt the pending ones, close the abandoned running ones.

The API worker keeps writing ``sync_jobs`` rows of its own: its manual trigger
(``POST /v1/connectors/:id/sync``) inserts a ``pending`` ``full`` row and sends the message
to a Cloudflare queue that clearlift never reads, and a D1 export from the retired workers
brings their ``pending`` and ``running`` rows along. Such a row has no live message in
``sync_queue``, and because no connection gets a second live job, it would block its
connection forever. Each ``schedule`` run therefore:

- **adopts** every ``pending`` row with no live message: enqueues it under its own job id
  (the API returned that id to the user, who may poll it), over the last 7 days, priority
  ``high`` for ``full`` (``normal`` for ``incremental``), and records ``adopted`` in the
  row's metadata next to the keys the API worker wrote. Rows of paused connections, or of
  connections waiting for a reconnect, stay pending until the connection is usable; a row
  whose connection already has a live message waits for that one to end.
- **closes** every ``running`` row with no live message whose last sign of life
  (``updated_at``, ``started_at``, ``created_at``) is older than ``STALE_RUNNING_AFTER``:
  ``failed`` with an error saying why, so its connection is due again (in the same run).

Concurrent schedulers cannot adopt a row twice: the work runs under the scheduling lock,
each row is re-checked inside the transaction, and ``sync_queue.job_id`` is unique. The
rules are here; the reads and writes are the store's (``orphan_jobs``, ``adopt_job``,
``close_job``), on every backend including the live D1.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from clearlift_cli.models import JobStatus, JobType, Priority, SyncJobMessage, SyncWindow
from clearlift_cli.platforms import registry
from clearlift_cli.store import Store
from clearlift_cli.store.queue import Queue
from clearlift_cli.timeutil import iso_z, parse_ts

log = logging.getLogger("clearlift.schedule")

# A running row nobody holds is closed once it has shown no sign of life for this long.
# clearlift's own running jobs always hold a live (leased) message, renewed by heartbeat
# however long they take, so this rule never touches them. It is for rows whose worker is
# gone: a retired Cloudflare queue consumer could run for at most 15 minutes per invocation
# (Cloudflare Queues' consumer wall-clock limit), and clearlift's default lease is 5
# minutes; an hour is four times the longest a live worker could stay silent, so a row
# still being written during the cut-over is never closed under its worker.
STALE_RUNNING_AFTER = timedelta(hours=1)

_CHUNK = 500


@dataclass
class AdoptionResult:
    adopted: list[str] = field(default_factory=list)  # job ids now queued under their own id
    closed: list[str] = field(default_factory=list)  # abandoned running jobs closed as failed
    waiting: list[tuple[str, str]] = field(default_factory=list)  # (job id, why it stays pending)


def adopted_metadata(text: str | None, *, at: str, window: SyncWindow, priority: Priority) -> str:
    """The row's metadata JSON with ``adopted`` recorded; every key already there is kept
    (metadata that is not a JSON object is kept whole under ``original_metadata``)."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {"original_metadata": text}
    data["adopted"] = {
        "at": at,
        "by": "clearlift schedule",
        "sync_window": window.to_json(),
        "priority": priority.value,
    }
    try:
        return json.dumps(data, allow_nan=False)
    except ValueError:  # NaN / Infinity: the API worker's JSON.parse refuses them, keep the text
        return json.dumps({"original_metadata": text, "adopted": data["adopted"]})


def last_sign_of_life(row: Any) -> datetime | None:
    """The newest of the row's timestamps (unparseable ones ignored); None if it has none."""
    seen = []
    for name in ("updated_at", "started_at", "created_at"):
        try:
            ts = parse_ts(row[name])
        except (ValueError, TypeError):
            continue
        if ts is not None:
            seen.append(ts)
    return max(seen) if seen else None


def adopt_orphan_jobs(
    store: Store,
    queue: Queue,
    now: datetime,
    *,
    window_days: int,
    stale_after: timedelta = STALE_RUNNING_AFTER,
) -> AdoptionResult:
    """Adopt pending rows with no live queue message and close abandoned running ones."""
    result = AdoptionResult()
    rows = store.orphan_jobs()
    if not rows:
        return result
    rows = sorted(rows, key=lambda r: (_sort_key(r["created_at"]), r["id"]))
    for i in range(0, len(rows), _CHUNK):
        with store.write() as c:
            store.lock_scheduling(c)
            for row in rows[i : i + _CHUNK]:
                if row["status"] == JobStatus.PENDING:
                    _adopt_one(store, c, queue, row, now, window_days, result)
                else:
                    _close_if_abandoned(store, c, row, now, stale_after, result)
    return result


def _sort_key(value: Any) -> float:
    try:
        ts = parse_ts(value)
    except (ValueError, TypeError):
        ts = None
    return ts.timestamp() if ts else float("-inf")


def _adopt_one(
    store: Store, c: Any, queue: Queue, row: Any, now: datetime, window_days: int, result: AdoptionResult
) -> None:
    job_id = row["id"]
    if row["conn_id"] is None:
        _fail(
            store, c, row, now, "Connection no longer exists; job dropped", result, status=JobStatus.PENDING
        )
        return
    if not registry.is_known(row["platform"]):
        _fail(
            store,
            c,
            row,
            now,
            f"Connection has unknown platform {row['platform']!r}; job dropped",
            result,
            status=JobStatus.PENDING,
        )
        return
    if not row["is_active"]:
        result.waiting.append((job_id, "connection is paused (is_active = 0)"))
        return
    if row["needs_reauth"]:
        result.waiting.append((job_id, "connection needs re-authorisation"))
        return
    job_type = JobType.INCREMENTAL if row["job_type"] == JobType.INCREMENTAL.value else JobType.FULL
    priority = Priority.HIGH if job_type is JobType.FULL else Priority.NORMAL
    window = SyncWindow(now - timedelta(days=window_days), now)
    stamp = iso_z(now)
    try:
        created = iso_z(parse_ts(row["created_at"]) or now)
    except (ValueError, TypeError):
        created = stamp
    message = SyncJobMessage(
        job_id=job_id,
        connection_id=row["conn_id"],
        organization_id=row["conn_org"],
        platform=row["platform"],
        account_id=str(row["account_id"]),
        job_type=job_type,
        sync_window=window,
        retry_count=0,
        created_at=created,
        priority=priority,
    )
    metadata = adopted_metadata(row["metadata"], at=stamp, window=window, priority=priority)
    outcome = store.adopt_job(c, queue, job_id, message, metadata)
    if outcome == "busy":
        result.waiting.append((job_id, "connection already has a queued or running job"))
    elif outcome == "adopted":
        result.adopted.append(job_id)
        log.info(
            "adopted pending job %s of %s (no queue message): queued, %s .. %s",
            job_id,
            row["conn_id"],
            *message.sync_window.to_json().values(),
        )


def _close_if_abandoned(
    store: Store, c: Any, row: Any, now: datetime, stale_after: timedelta, result: AdoptionResult
) -> None:
    seen = last_sign_of_life(row)
    if seen is not None and now - seen < stale_after:
        return
    since = f"since {iso_z(seen)}" if seen else "with no timestamps"
    hours = stale_after.total_seconds() / 3600
    error = (
        f"Abandoned: running {since} with no worker holding it (its worker died, or it "
        f"belongs to the retired Cloudflare workers); closed by clearlift after {hours:g} h "
        "without a sign of life, the connection is synced again"
    )
    _fail(store, c, row, now, error, result, status=JobStatus.RUNNING)


def _fail(
    store: Store, c: Any, row: Any, now: datetime, error: str, result: AdoptionResult, *, status: str
) -> None:
    """Close the job as failed (the store guards it: still ``status``, no live message, not
    moved since it was read)."""
    if store.close_job(c, row, error, status=status):
        result.closed.append(row["id"])
        log.warning("closed job %s of %s as failed: %s", row["id"], row["connection_id"], error)


__all__ = [
    "AdoptionResult",
    "STALE_RUNNING_AFTER",
    "adopt_orphan_jobs",
    "adopted_metadata",
    "last_sign_of_life",
]
