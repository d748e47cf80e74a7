"""Status at scale: the installed ``clearlift status`` over a store of 10k connections with
ten jobs each (quick: 2k), 1% of them failing and 0.5% needing re-auth.

Timed as cron or an operator runs it (wall time of the command, median of several runs
after a warm-up; the baseline, ``status`` and ``status --json`` taken in turn, so load from
other work on a shared machine falls on each alike; CPU time too, which such load moves
less): ``status`` (counts, failing rows first, a screenful of the others),
``status --json`` (every connection) and ``status --all`` (every row of the table).
Baseline, measured in the same run: ``clearlift status`` over an empty store, i.e. start-up
and argument parsing, which no amount of rows can make cheaper. Target: ``status`` and
``status --json`` <= 0.5 s at 10k. The package's bytecode is written first, as pip does
when it installs it.
"""

from __future__ import annotations

import sqlite3

from benchmarks._common import (
    CLEARLIFT,
    app_init_store,
    cli_environ,
    compile_bytecode,
    emit,
    fill_store,
    heading,
    interleaved_times,
    machine,
    median,
    parse_args,
    rnd,
    show,
    temp_home,
    wall_times,
)

TARGET_S = 0.5
JOBS_PER_CONNECTION = 10


def add_history(db: str, failing_every: int = 100, reauth_every: int = 200) -> int:
    """Older jobs behind each connection's latest one (years of hourly syncs leave many),
    and some failing / re-auth connections. Returns the number of job rows."""
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("BEGIN")
    c.execute(
        "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, started_at, "
        "completed_at, created_at, records_synced, metadata) "
        "SELECT j.id || '-' || n.k, j.organization_id, j.connection_id, 'completed', 'incremental', "
        "'2025-01-01T00:00:00.000Z', '2025-01-01T00:01:00.000Z', "
        "strftime('%Y-%m-%dT%H:%M:%fZ', '2025-01-01', '-' || n.k || ' hours'), 40, '{\"records_synced\": 40}' "
        "FROM sync_jobs j, (WITH RECURSIVE k(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM k WHERE k < ?) "
        "SELECT k FROM k) n",
        (JOBS_PER_CONNECTION - 1,),
    )
    c.execute(
        "UPDATE platform_connections SET sync_status = 'failed', sync_error = 'HTTP 500 from the platform' "
        "WHERE is_active = 1 AND rowid % ? = 0",
        (failing_every,),
    )
    c.execute(
        "UPDATE platform_connections SET sync_status = 'failed', needs_reauth = 1, "
        "reauth_reason = 'invalid_grant', reauth_detected_at = '2026-01-01T00:00:00.000Z' "
        "WHERE is_active = 1 AND rowid % ? = 1",
        (reauth_every,),
    )
    c.execute("COMMIT")
    c.execute("ANALYZE")
    jobs = c.execute("SELECT count(*) FROM sync_jobs").fetchone()[0]
    c.close()
    return jobs


def main() -> None:
    args = parse_args(__doc__)
    connections = 2_000 if args.quick else 10_000
    runs = 3 if args.quick else 7
    compile_bytecode()
    with temp_home() as empty_home, temp_home() as home:
        empty_env = cli_environ(empty_home)
        app_init_store(empty_home)
        env = cli_environ(home)
        db = app_init_store(home)
        fill_store(db, connections, connections // 10)
        jobs = add_history(db)
        heading(f"{connections:,} connections, {jobs:,} jobs; median of {runs} runs, taken in turn")
        times = interleaved_times(
            {
                "baseline": ([CLEARLIFT, "status"], empty_env),
                "status": ([CLEARLIFT, "status"], env),
                "status_json": ([CLEARLIFT, "status", "--json"], env),
            },
            runs=runs,
            ok_codes=(0, 1),
        )
        figures = {label: median([wall for wall, _ in values]) for label, values in times.items()}
        cpu = {label: median([c for _, c in values]) for label, values in times.items()}
        # --all lays out every row with rich (seconds at 10k): a few runs show it well enough
        all_runs = wall_times([CLEARLIFT, "status", "--all"], runs=min(runs, 3), env=env, ok_codes=(0, 1))
        figures["status_all"] = median(all_runs)
        baseline = figures["baseline"]
        show(
            "clearlift status, empty store",
            f"{baseline:.3f} s",
            f"(baseline: start-up; CPU {cpu['baseline']:.3f} s)",
        )
        for label, argv in (
            ("status", ["status"]),
            ("status_json", ["status", "--json"]),
            ("status_all", ["status", "--all"]),
        ):
            wall = figures[label]
            note = f"{wall / baseline:.1f}x the baseline, {(wall - baseline) / connections * 1e6:.0f} µs per connection"
            if label != "status_all":
                verdict = "met" if wall <= TARGET_S else "MISSED"
                note += f"; CPU {cpu[label]:.3f} s; target <= {TARGET_S} s: {verdict}"
            show("clearlift " + " ".join(argv), f"{figures[label]:.3f} s", note)
    met = figures["status"] <= TARGET_S and figures["status_json"] <= TARGET_S
    emit(
        "status_scale",
        quick=args.quick,
        **machine(),
        connections=connections,
        jobs=jobs,
        runs=runs,
        baseline_s=rnd(baseline),
        status_s=rnd(figures["status"]),
        status_json_s=rnd(figures["status_json"]),
        status_all_s=rnd(figures["status_all"]),
        cpu_baseline_s=rnd(cpu["baseline"]),
        cpu_status_s=rnd(cpu["status"]),
        cpu_status_json_s=rnd(cpu["status_json"]),
        ratio_status_vs_baseline=rnd(figures["status"] / baseline),
        ratio_json_vs_baseline=rnd(figures["status_json"] / baseline),
        ratio_all_vs_baseline=rnd(figures["status_all"] / baseline),
        target_s=TARGET_S,
        target_met=met,
    )


if __name__ == "__main__":
    main()
