"""`clearlift metrics`: the store's state in the Prometheus text exposition format (0.0.4).

Meant for node_exporter's textfile collector: a cron line writes the file every minute
(``write_atomically``: a temporary file renamed over the old one, so a scrape never reads
half a file). Names follow Prometheus' rules: a ``clearlift_`` prefix, base units
(seconds), ``_total`` for counters, HELP and TYPE for every family.

Counters (``_total``, and the duration summary's ``_sum`` / ``_count``) add up every job
recorded in the store since schema 4; the ``_last_hour`` gauges and the duration quantiles
cover consume runs that finished in the last hour (a run's jobs count when the run ends).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clearlift_cli.models import Outcome
from clearlift_cli.platforms import registry
from clearlift_cli.runs import CRON_COMMANDS, DURATION_BUCKETS
from clearlift_cli.store import Store

QUANTILES = (0.5, 0.9, 0.99)
WINDOW_SECONDS = 3600
# The statuses a consumed job can end a delivery in.
OUTCOMES = tuple(outcome.value for outcome in Outcome)


@dataclass
class Family:
    """One metric family: its HELP, TYPE and samples ``(suffix, labels, value)``."""

    name: str
    type: str  # gauge | counter | summary
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> Family:
        self.samples.append((suffix, labels, value))
        return self


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def render(families: list[Family]) -> str:
    """The text exposition format: HELP and TYPE, then one line per sample."""
    lines = []
    for f in families:
        lines.append(f"# HELP {f.name} {f.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {f.name} {f.type}")
        for suffix, labels, value in f.samples:
            label_text = ""
            if labels:
                label_text = "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"
            lines.append(f"{f.name}{suffix}{label_text} {_format_value(value)}")
    return "\n".join(lines) + "\n"


def quantile_from_buckets(q: float, counts: list[int]) -> float:
    """Estimate the ``q`` quantile from per-bucket counts (``DURATION_BUCKETS`` upper
    bounds, then the rest) by linear interpolation inside the bucket, as Prometheus'
    ``histogram_quantile`` does; NaN without observations."""
    total = sum(counts)
    if total == 0:
        return math.nan
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(DURATION_BUCKETS):
                return float(DURATION_BUCKETS[-1])  # past the last bound: as histogram_quantile
            lower = 0.0 if i == 0 else float(DURATION_BUCKETS[i - 1])
            upper = float(DURATION_BUCKETS[i])
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return float(DURATION_BUCKETS[-1])


def collect(store: Store, settings: Any) -> list[Family]:
    """Every family, read from the store in this order: the queue, connections, jobs (running
    totals, then the last hour), cron runs, platform pauses, then the configured API versions."""
    now = store.clock.time()
    return [
        *_queue_families(store),
        *_connection_families(store),
        *_job_families(store, now),
        *_cron_families(store, now),
        *_pause_families(store, now),
        _sunset_family(settings),
    ]


# -- the queue ----------------------------------------------------------------------------


def _queue_families(store: Store) -> list[Family]:
    from clearlift_cli.store.queue import Queue

    queue = Queue(store)
    depth = queue.depth()
    stats = queue.stats()
    messages = Family(
        "clearlift_queue_messages",
        "gauge",
        "Queue messages by state (ready: claimable now; delayed: waiting for a retry "
        "or a rate limit; leased: held by a consumer) and priority.",
    )
    for state in ("ready", "delayed", "leased"):
        for priority in ("high", "normal"):
            n = depth[(state, priority)] + (depth[("expired", priority)] if state == "leased" else 0)
            messages.add(n, state=state, priority=priority)
    return [
        messages,
        Family(
            "clearlift_queue_dead_letters",
            "gauge",
            "Jobs that failed for good and wait in the dead-letter list.",
        ).add(depth[("dead", "high")] + depth[("dead", "normal")]),
        Family(
            "clearlift_queue_oldest_ready_age_seconds",
            "gauge",
            "How long the oldest claimable message has waited (0 when none waits).",
        ).add(round(stats.oldest_ready_age_s or 0.0, 3)),
        Family(
            "clearlift_queue_expired_leases",
            "gauge",
            "Leased messages whose lease ran out over a minute ago: their consumer died or hangs.",
        ).add(depth[("expired", "high")] + depth[("expired", "normal")]),
    ]


# -- connections --------------------------------------------------------------------------


def _connection_families(store: Store) -> list[Family]:
    active_counts: dict[tuple[str, str], int] = {}
    paused_counts = {p: 0 for p in registry.names()}
    reauth_counts = {p: 0 for p in registry.names()}
    for platform, is_active, status, needs_reauth, n, _exp in store.connection_counts():
        if not is_active:
            paused_counts[platform] = paused_counts.get(platform, 0) + n
            continue
        active_counts[(platform, status)] = active_counts.get((platform, status), 0) + n
        if needs_reauth:
            reauth_counts[platform] = reauth_counts.get(platform, 0) + n
    by_status = Family("clearlift_connections", "gauge", "Active connections by platform and sync status.")
    for platform in sorted(set(registry.names()) | {p for p, _ in active_counts}):
        for status in sorted(
            {"pending", "syncing", "completed", "failed"} | {s for p, s in active_counts if p == platform}
        ):
            by_status.add(active_counts.get((platform, status), 0), platform=platform, sync_status=status)
    paused = Family(
        "clearlift_connections_paused", "gauge", "Paused connections (is_active = 0) by platform."
    )
    for platform, n in sorted(paused_counts.items()):
        paused.add(n, platform=platform)
    reauth = Family(
        "clearlift_connections_needing_reauth",
        "gauge",
        "Active connections whose user must reconnect the account, by platform.",
    )
    for platform, n in sorted(reauth_counts.items()):
        reauth.add(n, platform=platform)
    return [by_status, paused, reauth]


# -- jobs: running totals and the last hour -----------------------------------------------

# (platform, outcome) -> (jobs, records, seconds), since the store recorded them
Totals = dict[tuple[str, str], tuple[int, int, float]]


@dataclass
class _LastHour:
    """What the consume and sync runs that finished in the last hour add up to."""

    jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (platform, outcome) -> n
    records: dict[str, int] = field(default_factory=dict)  # platform -> rows
    buckets: dict[str, list[int]] = field(default_factory=dict)  # platform -> duration counts

    @classmethod
    def read(cls, store: Store, now: float) -> _LastHour:
        hour = cls()
        for command in ("consume", "sync"):
            for text in store.run_summaries_since(command, now - WINDOW_SECONDS):
                try:
                    by_platform = json.loads(text).get("by_platform") or {}
                except (ValueError, AttributeError):
                    continue
                for platform, data in by_platform.items():
                    hour.add(platform, data)
        return hour

    def add(self, platform: str, data: dict[str, Any]) -> None:
        for outcome, n in (data.get("outcomes") or {}).items():
            self.jobs[(platform, outcome)] = self.jobs.get((platform, outcome), 0) + int(n)
        self.records[platform] = self.records.get(platform, 0) + int(data.get("records") or 0)
        counts = data.get("durations") or []
        if len(counts) == len(DURATION_BUCKETS) + 1:
            acc = self.buckets.setdefault(platform, [0] * len(counts))
            for i, n in enumerate(counts):
                acc[i] += int(n)


def _job_families(store: Store, now: float) -> list[Family]:
    totals: Totals = {}
    for platform, outcome, n, records, seconds in store.job_totals():
        totals[(platform, outcome)] = (n, records, seconds)
    platforms = sorted(set(registry.names()) | {p for p, _ in totals})
    jobs_total, records_total = _running_totals(totals, platforms)
    hour = _LastHour.read(store, now)
    platforms = sorted(set(platforms) | {p for p, _ in hour.jobs})
    duration = _duration_family(totals, hour, platforms)
    jobs_hour, records_hour = _last_hour_families(hour, platforms)
    return [jobs_total, jobs_hour, records_total, records_hour, duration]


def _running_totals(totals: Totals, platforms: list[str]) -> tuple[Family, Family]:
    jobs_total = Family(
        "clearlift_jobs_total",
        "counter",
        "Job deliveries by platform and outcome (completed, failed, deferred by a rate "
        "limit, retry, dropped, stale), since the store recorded them.",
    )
    records_total = Family(
        "clearlift_records_synced_total", "counter", "Warehouse rows written by jobs, by platform."
    )
    for platform in platforms:
        for outcome in OUTCOMES:
            jobs_total.add(
                totals.get((platform, outcome), (0, 0, 0.0))[0], platform=platform, outcome=outcome
            )
        records_total.add(sum(r for (p, _), (_, r, _) in totals.items() if p == platform), platform=platform)
    return jobs_total, records_total


def _duration_family(totals: Totals, hour: _LastHour, platforms: list[str]) -> Family:
    duration = Family(
        "clearlift_job_duration_seconds",
        "summary",
        "Duration of completed jobs by platform: quantiles over the last hour (estimated "
        "from buckets), sum and count since the store recorded them.",
    )
    for platform in platforms:
        for q in QUANTILES:
            duration.add(
                round(quantile_from_buckets(q, hour.buckets.get(platform, [])), 3),
                platform=platform,
                quantile=str(q),
            )
        n, _, seconds = totals.get((platform, "completed"), (0, 0, 0.0))
        duration.add(round(seconds, 3), "_sum", platform=platform)
        duration.add(n, "_count", platform=platform)
    return duration


def _last_hour_families(hour: _LastHour, platforms: list[str]) -> tuple[Family, Family]:
    jobs_hour = Family(
        "clearlift_jobs_last_hour",
        "gauge",
        "Job deliveries in consume runs that finished in the last hour, by platform and outcome.",
    )
    records_hour = Family(
        "clearlift_records_synced_last_hour",
        "gauge",
        "Warehouse rows written by consume runs that finished in the last hour, by platform.",
    )
    for platform in platforms:
        for outcome in OUTCOMES:
            jobs_hour.add(hour.jobs.get((platform, outcome), 0), platform=platform, outcome=outcome)
        records_hour.add(hour.records.get(platform, 0), platform=platform)
    return jobs_hour, records_hour


# -- cron runs ----------------------------------------------------------------------------


def _cron_families(store: Store, now: float) -> list[Family]:
    last_ok = Family(
        "clearlift_last_success_timestamp_seconds",
        "gauge",
        "When the last successful run of each cron command finished (Unix time).",
    )
    last_age = Family(
        "clearlift_last_success_age_seconds",
        "gauge",
        "Seconds since the last successful run of each cron command finished.",
    )
    last_run_ok = Family(
        "clearlift_last_run_success",
        "gauge",
        "1 when the latest run of each cron command succeeded, 0 when it failed.",
    )
    for command, run in sorted(store.last_runs().items()):
        if command not in CRON_COMMANDS:
            continue
        last_run_ok.add(1 if run["ok"] else 0, command=command)
        if run["last_ok_at"] is not None:
            last_ok.add(round(run["last_ok_at"], 3), command=command)
            last_age.add(round(max(0.0, now - run["last_ok_at"]), 3), command=command)
    return [last_ok, last_age, last_run_ok]


# -- platforms: rate-limit pauses and API versions ----------------------------------------


def _pause_families(store: Store, now: float) -> list[Family]:
    pauses = store.platform_pauses()
    paused = Family(
        "clearlift_platform_rate_limit_paused",
        "gauge",
        "1 while a platform-wide rate limit pauses every job of the platform.",
    )
    remaining = Family(
        "clearlift_platform_rate_limit_pause_remaining_seconds",
        "gauge",
        "Seconds until a platform-wide rate-limit pause ends (0 when none is in force).",
    )
    for platform in sorted(set(registry.names()) | set(pauses)):
        until = pauses.get(platform)
        paused.add(1 if until else 0, platform=platform)
        remaining.add(round(max(0.0, until - now), 3) if until else 0, platform=platform)
    return [paused, remaining]


def _sunset_family(settings: Any) -> Family:
    from clearlift_cli.platforms.versions import SUNSETS, configured_versions

    sunset = Family(
        "clearlift_api_version_sunset_timestamp_seconds",
        "gauge",
        "When the configured API version of a platform stops being served (Unix time); "
        "absent when no date is published.",
    )
    for platform, version in configured_versions(settings).items():
        day = SUNSETS.get(platform, {}).get(version)
        if day is not None:
            at = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
            sunset.add(int(at), platform=platform, version=version)
    return sunset


def write_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder renamed over
    it, so a reader sees the old file or the new one, never half of one. The temporary
    name does not end in ``.prom``: node_exporter only reads files that do."""
    target = Path(path).expanduser()
    fd, tmp = tempfile.mkstemp(dir=str(target.parent), prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = ["Family", "collect", "quantile_from_buckets", "render", "write_atomically"]
