"""The record of cron runs: when ``schedule``, ``consume`` and ``refresh-tokens`` last
finished on this store, and what the jobs they ran came to.

Each run writes one ``clearlift_runs`` row when it ends (and adds its jobs to
``clearlift_job_totals``), so ``doctor`` can tell a cron that stopped from one that runs,
and ``metrics`` can count jobs without scanning ``sync_jobs``. Runs are recorded by the
store they ran on, whichever host ran them.
"""

from __future__ import annotations

import json
import logging
import socket
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from clearlift_cli.errors import StoreError
from clearlift_cli.redact import redact
from clearlift_cli.store import Store

log = logging.getLogger("clearlift.runs")


@dataclass(frozen=True)
class CronCommand:
    name: str
    interval_seconds: float  # how often crontab.example runs it
    default_run_seconds: float  # how long one run may take (consume: its --max-seconds)


# The commands whose runs are recorded, with the schedule crontab.example gives them.
CRON_COMMANDS: dict[str, CronCommand] = {
    "schedule": CronCommand("schedule", 15 * 60, 60),
    "consume": CronCommand("consume", 60, 600),
    "refresh-tokens": CronCommand("refresh-tokens", 5 * 60, 60),
}

# Upper bounds (seconds) of the job-duration buckets kept per run; one more counts the rest.
DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def outcomes_by_platform(outcomes: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Per platform: ``{"outcomes": {status: jobs}, "records": n, "seconds": s,
    "durations": [completed jobs per DURATION_BUCKETS bucket, then the rest]}``."""
    out: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        p = out.setdefault(
            o.platform,
            {"outcomes": {}, "records": 0, "seconds": 0.0, "durations": [0] * (len(DURATION_BUCKETS) + 1)},
        )
        p["outcomes"][o.status] = p["outcomes"].get(o.status, 0) + 1
        p["records"] += int(o.records)
        p["seconds"] += float(o.seconds)
        if o.status == "completed":
            p["durations"][bisect_left(DURATION_BUCKETS, o.seconds)] += 1
    return out


def _job_totals(outcomes: Iterable[Any]) -> list[tuple[str, str, int, int, float]]:
    totals: dict[tuple[str, str], list] = {}
    for o in outcomes:
        t = totals.setdefault((o.platform, o.status), [0, 0, 0.0])
        t[0] += 1
        t[1] += int(o.records)
        t[2] += float(o.seconds)
    return [(p, s, n, r, sec) for (p, s), (n, r, sec) in sorted(totals.items())]


def record(
    store: Store,
    command: str,
    *,
    started_at: float,
    ok: bool,
    summary: dict[str, Any],
    outcomes: Iterable[Any] = (),
) -> None:
    """Record a finished run (never raises: a run that did its work is not failed for
    want of its record; the failure to record is logged)."""
    outcomes = list(outcomes)
    if outcomes:
        summary = {**summary, "by_platform": outcomes_by_platform(outcomes)}
    try:
        store.record_run(
            command,
            host=socket.gethostname(),
            started_at=started_at,
            finished_at=store.clock.time(),
            ok=ok,
            summary_json=json.dumps(summary, default=str),
            job_totals=_job_totals(outcomes),
        )
    except StoreError as exc:
        log.warning("could not record this %s run in the store: %s", command, redact(exc))


def failed_summary(exc: BaseException) -> dict[str, Any]:
    return {"error": redact(f"{type(exc).__name__}: {exc}")}


__all__ = [
    "CRON_COMMANDS",
    "DURATION_BUCKETS",
    "CronCommand",
    "failed_summary",
    "outcomes_by_platform",
    "record",
]
