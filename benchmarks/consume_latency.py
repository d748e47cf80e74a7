"""Consume under latency: N Google connections against the sandbox with 100 ms added to every
request, consumed by ``clearlift_cli.commands.consume`` at concurrency 1, 4, 16 and 32.

Baseline: the latency bound, requests x latency / concurrency, with the requests counted in
the sandbox's request log; nothing can finish sooner while ``concurrency`` requests wait in
parallel. Target at concurrency 16: wall <= 1.15 x bound, consumer CPU < 5 ms a job;
the scale figure is jobs/s per core of consumer CPU (1000 / CPU ms per job). The sandbox runs in a process of
its own. The warehouse is PostgreSQL (a fresh schema); the embedded SQLite warehouse is
measured at concurrency 16 too, for comparison.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

from benchmarks._common import (
    SandboxProcess,
    Stopwatch,
    emit,
    heading,
    machine,
    machine_busy,
    new_key,
    parse_args,
    pg_schema,
    process_cpu_s,
    rnd,
    settings_for,
    show,
    temp_home,
)
from clearlift_cli import commands

LATENCY = 0.1
TARGET = 1.15  # issue 19 (it was 1.25)
CPU_TARGET_MS = 5.0  # consumer CPU per job
TARGET_CONCURRENCY = 16


def run_level(sandbox: SandboxProcess, connections: int, concurrency: int, backend: str) -> dict:
    schema = pg_schema("bench_consume") if backend == "postgres" else nullcontext(None)
    with temp_home() as home, schema as pg_url:
        s = settings_for(
            home, environ=sandbox.env, encryption_key=new_key(), http_timeout=30, warehouse_url=pg_url
        )
        commands.init(s)
        for i in range(connections):
            access, refresh = sandbox.issue_token("google", ttl=None)
            commands.add_connection(
                s,
                commands.NewConnection(
                    organization_id=f"org-{i:04d}",
                    platform="google",
                    account_id=str(5_000_000_000 + i),
                    account_name=None,
                    connected_by=f"user-{i}",
                    access_token=access,
                    refresh_token=refresh,
                ),
            )
        scheduled = commands.schedule(s)
        assert len(scheduled.enqueued) == connections, scheduled.summary()
        sandbox.reset_requests()
        cpu, sandbox_cpu, busy = time.process_time(), process_cpu_s(sandbox.pid), machine_busy()
        with Stopwatch() as sw:
            result = commands.consume(s, concurrency=concurrency, max_seconds=None)
        cpu = time.process_time() - cpu
        sandbox_cpu = process_cpu_s(sandbox.pid) - sandbox_cpu
        busy_after = machine_busy()
        requests = sandbox.request_count()
    counts = result.counts()
    assert counts.get("completed") == connections, counts
    bound = requests * LATENCY / concurrency
    return {
        "backend": backend,
        "concurrency": concurrency,
        "jobs": connections,
        "requests": requests,
        "wall_s": sw.seconds,
        "bound_s": bound,
        "ratio_vs_bound": sw.seconds / bound,
        "records": result.summary()["records"],
        "consumer_cpu_s": cpu,
        "sandbox_cpu_s": sandbox_cpu,
        # Share of both cores busy during the run (every process on the machine).
        "machine_busy": (busy_after[0] - busy[0]) / (busy_after[1] - busy[1]),
    }


def main() -> None:
    args = parse_args(__doc__)
    connections = 40 if args.quick else 500
    levels = (1, 4, 16, 32)
    heading(
        f"{connections} Google connections, {LATENCY * 1000:.0f} ms per request, full 7-day jobs, "
        "PostgreSQL warehouse"
    )
    results = []
    with SandboxProcess() as sandbox:
        sandbox.set_latency(LATENCY)
        for concurrency in levels:
            r = run_level(sandbox, connections, concurrency, "postgres")
            results.append(r)
            _show(r)
        heading("the embedded SQLite warehouse instead")
        lite = run_level(sandbox, connections, TARGET_CONCURRENCY, "sqlite")
        _show(lite)
    at_target = next(r for r in results if r["concurrency"] == TARGET_CONCURRENCY)
    serial = results[0]["wall_s"]
    heading("scaling")
    for r in results:
        show(
            f"concurrency {r['concurrency']:>2}",
            f"{serial / r['wall_s']:5.1f}x faster than 1",
            f"{r['jobs'] / r['wall_s']:6.1f} jobs/s",
        )
    met = at_target["ratio_vs_bound"] <= TARGET
    show(
        f"target at concurrency {TARGET_CONCURRENCY}: wall <= {TARGET} x bound",
        "met" if met else "MISSED",
        f"({at_target['ratio_vs_bound']:.2f}x)",
    )
    show("SQLite warehouse at the same concurrency", f"{lite['ratio_vs_bound']:.2f}x bound")
    cpu_ms = at_target["consumer_cpu_s"] * 1000 / at_target["jobs"]
    show(
        f"consumer CPU at concurrency {TARGET_CONCURRENCY}",
        f"{cpu_ms:.1f} ms/job",
        f"{1000 / cpu_ms:,.0f} jobs/s per core (target < {CPU_TARGET_MS:g} ms: "
        f"{'met' if cpu_ms < CPU_TARGET_MS else 'MISSED'})",
    )
    emit(
        "consume_latency",
        connections=connections,
        latency_s=LATENCY,
        quick=args.quick,
        **machine(),
        requests=at_target["requests"],
        wall_s=rnd(at_target["wall_s"]),
        bound_s=rnd(at_target["bound_s"]),
        ratio_vs_bound=rnd(at_target["ratio_vs_bound"]),
        target_ratio=TARGET,
        target_met=met,
        cpu_ms_per_job=rnd(cpu_ms, 1),
        jobs_per_s_per_core=rnd(1000 / cpu_ms, 0),
        cpu_target_ms=CPU_TARGET_MS,
        by_concurrency={str(r["concurrency"]): _figures(r) for r in results},
        sqlite_wall_s=rnd(lite["wall_s"]),
        sqlite_ratio_vs_bound=rnd(lite["ratio_vs_bound"]),
    )


def _figures(r: dict) -> dict:
    return {
        "wall_s": rnd(r["wall_s"]),
        "bound_s": rnd(r["bound_s"]),
        "ratio_vs_bound": rnd(r["ratio_vs_bound"]),
        "consumer_cpu_ms_per_job": rnd(r["consumer_cpu_s"] * 1000 / r["jobs"], 1),
        "machine_busy": rnd(r["machine_busy"]),
    }


def _show(r: dict) -> None:
    show(
        f"concurrency {r['concurrency']:>2}: {r['requests']} requests",
        f"wall {r['wall_s']:7.2f} s",
        f"bound {r['bound_s']:6.2f} s -> {r['ratio_vs_bound']:.2f}x bound",
    )
    show(
        "",
        f"CPU: consumer {r['consumer_cpu_s'] * 1000 / r['jobs']:.1f} ms/job, "
        f"sandbox {r['sandbox_cpu_s'] * 1000 / r['jobs']:.1f} ms/job; "
        f"machine {r['machine_busy']:.0%} busy",
    )


if __name__ == "__main__":
    main()
