"""Issue 16: a consumer that is stopping (``--max-seconds`` reached, SIGTERM) keeps its
running jobs safe, and stops within a bounded time even when a platform stalls.

Real things only: SQLite stores and warehouses in files, the sandboxes over loopback
HTTP, consumers as threads over the same store file or as the installed command."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from clearlift_cli import app as core
from clearlift_cli.consumer import Consumer
from clearlift_cli.sandbox import Sandbox
from clearlift_cli.settings import resolve
from tests.e2e import Env, queue_row
from tests.test_reliability import assert_job_landed_exactly, popen, seed, wait_for


@pytest.fixture
def sandbox():
    with Sandbox() as sb:
        yield sb


@pytest.fixture
def env(tmp_path, sandbox):
    e = Env(home=tmp_path / "home", warehouse_url=f"sqlite:///{tmp_path}/warehouse.db", sandbox=sandbox)
    e.run("init")
    return e


def consumer(env: Env, owner: str, lease: float) -> Consumer:
    settings = resolve(environ=env.environ(), read_config=False)
    return Consumer(settings, core.store_for(settings), owner=owner, lease_seconds=lease)


# --- leases of running jobs are renewed until each job ends -----------------------------------


@pytest.mark.parametrize("stop", ["max-seconds", "signal"])
def test_a_stopping_consumer_renews_its_running_jobs_lease_so_no_one_runs_it_twice(env, sandbox, stop):
    cid = seed(env, "google", "1234567890")
    env.run("schedule")
    (job,) = env.jobs(cid)
    sandbox.google.faults.add("latency", path="googleAds", times=1, seconds=4)  # the job takes ~4 s
    lease = 1.5
    first = consumer(env, "first", lease)
    results = []
    runner = threading.Thread(target=lambda: results.append(
        first.run(concurrency=1, max_seconds=0.2 if stop == "max-seconds" else None)))
    runner.start()
    try:
        wait_for(lambda: sandbox.google.requests, 10, "the first consumer's first request")
        if stop == "signal":
            first.stop()  # what the SIGTERM handler calls
        # Stopped: no longer claiming. Wait until its lease would have run out twice over had
        # it stopped renewing it, while the job is still running.
        time.sleep(2 * lease + 0.2)
        assert runner.is_alive() and queue_row(env, job["id"])["state"] == "leased"
        second = consumer(env, "second", lease)
        try:
            assert second.run(concurrency=1, max_seconds=5).outcomes == []
        finally:
            second.store.close()
    finally:
        runner.join(timeout=30)
        first.store.close()
    (result,) = results
    assert result.stopped_by == stop and [o.status for o in result.outcomes] == ["completed"]
    row = queue_row(env, job["id"])
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("done", 1, "first")
    assert len(sandbox.google.requests) == 3  # account, campaigns, metrics: one job's worth
    assert_job_landed_exactly(env, "google", cid, job["id"])
