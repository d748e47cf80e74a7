"""Schedule at scale: ``scheduler.schedule`` over a store of 100k connections of which 10k are
due, then 1M of which 10k are due (quick: 20k and 200k, 2k due).

The store is created by ``commands.init`` and filled straight with SQL the way years of the API
worker leave it (half the due connections never synced, half synced two hours ago; the rest
synced within the hour or paused; one completed job per synced connection; the attribution
state of Facebook connections). Only ``scheduler.schedule`` is timed: finding the due
connections, planning and enqueueing their jobs. Baseline: the smaller store; the cost
should follow the due connections, not the total. A full scan of the connections table is
shown for scale. Target: <= 1.5 s each (issue 19; it was 2 s).
"""

from __future__ import annotations

import sqlite3

from benchmarks._common import (
    Stopwatch,
    emit,
    fill_store,
    heading,
    machine,
    parse_args,
    rnd,
    settings_for,
    show,
    temp_home,
)
from clearlift_cli import commands, scheduler
from clearlift_cli.store import open_store
from clearlift_cli.store.queue import Queue

TARGET_S = 1.5


def run_size(total: int, due: int) -> dict:
    with temp_home() as home:
        s = settings_for(home)
        commands.init(s, warehouse=False)
        filled = fill_store(s.db, total, due)
        with sqlite3.connect(s.db) as c, Stopwatch() as scan:
            # What any plan that looked at every connection would pay at least once.
            c.execute(
                "SELECT count(*), max(last_synced_at) FROM platform_connections WHERE settings != 'x'"
            ).fetchone()
        store = open_store(s.db)
        try:
            with Stopwatch() as sw:
                result = scheduler.schedule(store, Queue(store))
            with Stopwatch() as again:
                rerun = scheduler.schedule(store, Queue(store))
            queued = store.read("SELECT count(*) FROM sync_queue WHERE state = 'ready'")[0][0]
        finally:
            store.close()
    assert len(result.enqueued) == due and queued == due, (result.summary(), queued)
    assert not rerun.enqueued, rerun.summary()
    return {
        "total": total,
        "due": due,
        "seconds": sw.seconds,
        "rerun_s": again.seconds,
        "scan_s": scan.seconds,
        "fill_s": filled.seconds,
        "found": result.found,
        "skipped": len(result.skipped),
    }


def main() -> None:
    args = parse_args(__doc__)
    sizes = ((20_000, 2_000), (200_000, 2_000)) if args.quick else ((100_000, 10_000), (1_000_000, 10_000))
    results = []
    for total, due in sizes:
        heading(f"{total:,} connections, {due:,} due")
        r = run_size(total, due)
        results.append(r)
        show("store filled in (not timed)", f"{r['fill_s']:.1f} s")
        show(
            "scheduler.schedule",
            f"{r['seconds']:.3f} s",
            f"{r['due'] / r['seconds']:,.0f} jobs enqueued/s "
            f"(target <= {TARGET_S:g} s: {'met' if r['seconds'] <= TARGET_S else 'MISSED'})",
        )
        show("schedule again at once (all jobs pending)", f"{r['rerun_s']:.3f} s")
        show("for scale: one full scan of the connections", f"{r['scan_s']:.3f} s")
    small, large = results
    growth = large["seconds"] / small["seconds"]
    heading("scaling")
    show(
        f"{large['total'] // small['total']}x the connections, same due count",
        f"{growth:.2f}x the time",
        "(1.0 = cost follows due connections only)",
    )
    met = all(r["seconds"] <= TARGET_S for r in results)
    emit(
        "schedule_scale",
        quick=args.quick,
        **machine(),
        due=small["due"],
        sizes=[r["total"] for r in results],
        seconds={str(r["total"]): rnd(r["seconds"]) for r in results},
        rerun_seconds={str(r["total"]): rnd(r["rerun_s"]) for r in results},
        scan_seconds={str(r["total"]): rnd(r["scan_s"]) for r in results},
        ratio_large_vs_small=rnd(growth),
        target_s=TARGET_S,
        target_met=met,
    )


if __name__ == "__main__":
    main()
