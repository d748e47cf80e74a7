"""Start-up: wall time of the installed command, as cron starts it.

``clearlift --help`` and ``clearlift status`` / ``status --json`` over a store of 10k
connections (quick: 2k), against ``python -c pass`` (the interpreter alone) as the baseline. Medians of
several runs after one warm-up. The slowest imports of ``--help`` (``-X importtime``) are
listed to show where the time goes. Target: ``--help`` <= 0.3 s.
"""

from __future__ import annotations

import re
import subprocess
import sys

from benchmarks._common import (
    CLEARLIFT,
    app_init_store,
    cli_environ,
    emit,
    fill_store,
    heading,
    machine,
    median,
    parse_args,
    rnd,
    show,
    temp_home,
    wall_times,
)

TARGET_S = 0.3


def slowest_imports(env: dict[str, str], top: int = 6) -> list[tuple[str, float]]:
    """The packages ``clearlift --help`` spends the most import time in (their modules'
    own times added up, so nothing is counted twice)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", CLEARLIFT, "--help"], env=env, capture_output=True, text=True
    )
    per_package: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            package = m.group(2).split(".")[0]
            per_package[package] = per_package.get(package, 0.0) + int(m.group(1)) / 1e6
    return sorted(per_package.items(), key=lambda kv: -kv[1])[:top]


def main() -> None:
    args = parse_args(__doc__)
    runs = 5 if args.quick else 20
    status_runs = 2 if args.quick else 5
    connections = 2_000 if args.quick else 10_000
    with temp_home() as home:
        env = cli_environ(home)
        db = app_init_store(home)
        fill_store(db, connections, connections // 10)
        heading(f"median of {runs} runs")
        python = median(wall_times([sys.executable, "-c", "pass"], runs=runs, env=env))
        help_s = median(wall_times([CLEARLIFT, "--help"], runs=runs, env=env))
        show("python -c pass", f"{python:.3f} s", "(baseline)")
        show(
            "clearlift --help",
            f"{help_s:.3f} s",
            f"{help_s / python:.1f}x python; target <= {TARGET_S} s: "
            f"{'met' if help_s <= TARGET_S else 'MISSED'}",
        )
        heading(f"{connections:,} connections, median of {status_runs} runs")
        status_s = median(wall_times([CLEARLIFT, "status"], runs=status_runs, env=env, ok_codes=(0, 1)))
        status_json_s = median(
            wall_times([CLEARLIFT, "status", "--json"], runs=status_runs, env=env, ok_codes=(0, 1))
        )
        show("clearlift status (table)", f"{status_s:.3f} s", f"{status_s / python:.1f}x python")
        show("clearlift status --json", f"{status_json_s:.3f} s", f"{status_json_s / python:.1f}x python")
        heading("where --help spends its import time (one run, by package)")
        imports = slowest_imports(env)
        for package, seconds in imports:
            show(package, f"{seconds:.3f} s")
    emit(
        "startup",
        quick=args.quick,
        **machine(),
        runs=runs,
        python_s=rnd(python),
        help_s=rnd(help_s),
        ratio_help_vs_python=rnd(help_s / python),
        connections=connections,
        status_s=rnd(status_s),
        status_json_s=rnd(status_json_s),
        ratio_status_vs_python=rnd(status_s / python),
        slowest_imports={p: rnd(s) for p, s in imports},
        target_help_s=TARGET_S,
        target_met=help_s <= TARGET_S,
    )


if __name__ == "__main__":
    main()
