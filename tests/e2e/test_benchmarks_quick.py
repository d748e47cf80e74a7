"""Every benchmark runs with --quick and ends with its JSON line.

CI reports the figures; it never fails on them (the machine it runs on decides them). What
is checked is that each benchmark still runs to the end against the current code and
prints a last line of JSON naming itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

ROOT = REPO
_PG = pytest.mark.postgres
BENCHMARKS = [
    pytest.param("warehouse_load", marks=_PG),
    pytest.param("consume_latency", marks=_PG),
    "schedule_scale",
    "queue_throughput",
    pytest.param("memory_backfill", marks=_PG),
    "startup",
    "status_scale",
    "d1_requests",
]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_quick_run_ends_with_its_json_line(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARLIFT_")}
    if "CLEARLIFT_TEST_DATABASE_URL" in os.environ:
        env["CLEARLIFT_TEST_DATABASE_URL"] = os.environ["CLEARLIFT_TEST_DATABASE_URL"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=170,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    figures = json.loads(lines[-1])
    assert figures["benchmark"] == name
    print(lines[-1])  # shown with -s, so CI logs keep the figures
