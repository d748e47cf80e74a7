"""Issue 16, the command in-process: `consume --max-seconds` holds for a request in flight
(the job goes back to the queue, its attempt unused, and completes next run); an endless
--stop-grace is refused."""

from __future__ import annotations

import json
import time

import pytest

from tests.expected import assert_released_then_completes, slow_google_job

# `env` (conftest) with the embedded SQLite warehouse.
pytestmark = pytest.mark.sqlite_warehouse


def test_max_seconds_holds_for_a_request_in_flight(env, sandbox):
    cid, job_id = slow_google_job(env, sandbox)
    t0 = time.monotonic()
    proc = env.run("consume", "--json", "--max-seconds", "1", "--stop-grace", "1")  # HTTP timeout: 5 s
    took = time.monotonic() - t0
    assert took < 2 + 4, took  # max-seconds + grace + start-up, not the body's ten minutes
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["stopped_by"] == "max-seconds"
    assert_released_then_completes(env, sandbox, cid, job_id, summary)


def test_an_endless_stop_grace_is_refused(env):
    proc = env.run("consume", "--stop-grace", "inf", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --stop-grace must be a finite number"), (
        proc.stderr
    )
