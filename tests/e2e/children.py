"""Child processes the end-to-end tests start, and the helpers that start them. Not a
test module: test modules import from here (never from each other), and a child started
with ``python -c "from tests.e2e.children import ..."`` imports only this.

- ``child_main``: the real ``Consumer`` on one job, killing itself with SIGKILL at an exact
  point (tests/e2e/test_reliability.py);
- ``consume_worker``: a bare queue consumer (claim, ack) in its own process, started by
  ``run_consumers`` over a queue ``fill_queue`` filled (competing consumers on one store)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clearlift_cli import commands
from clearlift_cli.models import JobType, Priority, SyncJobMessage, SyncWindow
from clearlift_cli.settings import resolve
from clearlift_cli.store import open_store
from clearlift_cli.store.queue import Queue
from clearlift_cli.timeutil import iso_z
from tests.helpers import new_store

# --- the real consumer, killed at an exact point ---------------------------------------------


def child_main(raw_spec: str) -> None:
    """Run the real ``Consumer`` on one job and SIGKILL this process at ``kill_at``:

    - ``claim-commit``: the claim's UPDATE ran inside BEGIN IMMEDIATE, its COMMIT not yet;
    - ``claim-wait``: about to wait for the store's write lock (the test holds it) at the
      claim's BEGIN IMMEDIATE; the test kills the process while it waits;
    - ``before-ack``: every slice is committed to the warehouse and recorded, not acked;
    - ``before-coverage``: slice 1 is committed to the warehouse, its coverage row not;
    - ``mid-write``: inside slice 1's warehouse transaction (campaigns written, metrics
      streaming);
    - ``never``: run to the end (the test kills it from outside)."""
    from clearlift_cli.consumer import Consumer

    spec = json.loads(raw_spec)
    kill_at = spec["kill_at"]
    settings = resolve(read_config=False)
    store = commands.store_for(settings)

    def die(*_: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if kill_at == "claim-commit":
        claimed = []

        def trace(sql: str) -> None:
            if "SET state = 'leased'" in sql:
                claimed.append(sql)
            elif sql.strip().upper() == "COMMIT" and claimed:
                die()

        store.engine.conn().set_trace_callback(trace)  # the main thread's connection claims
    elif kill_at == "claim-wait":

        def trace(sql: str) -> None:
            if sql.strip().upper() == "BEGIN IMMEDIATE":
                Path(spec["marker"]).write_text("waiting")

        store.engine.conn().set_trace_callback(trace)

    def on_progress(job_id: str, phase: str, done: int, total: int | None) -> None:
        if kill_at == "before-ack" and phase == "completed":
            die()
        elif kill_at == "mid-write" and phase == "metrics":
            die()
        elif kill_at == "before-coverage" and phase.startswith("slice 1/"):
            # on the job's thread: the same store connection record_slice will use
            store.engine.conn().set_trace_callback(
                lambda sql: die() if "INSERT INTO clearlift_coverage" in sql else None
            )

    consumer = Consumer(settings, store, lease_seconds=spec["lease"], on_progress=on_progress)
    result = consumer.run(concurrency=1, max_seconds=60, only_job=spec.get("job"))
    print(json.dumps(result.summary()))
    sys.exit(0 if kill_at == "never" else 3)  # 3: the kill point was never reached


# --- competing consumers on one store -------------------------------------------------------


def fill_queue(db: Path, count: int, *, max_attempts: int = 4) -> list[str]:
    store = new_store(db)
    queue = Queue(store)
    now = datetime.now(UTC)
    window = SyncWindow(now - timedelta(days=1), now)
    job_ids = []
    with store.write() as c:
        for i in range(count):
            msg = SyncJobMessage(
                job_id=str(uuid.uuid4()),
                connection_id=f"org-{i % 7}-google-{i}",
                organization_id=f"org-{i % 7}",
                platform="google",
                account_id=str(i),
                job_type=JobType.INCREMENTAL,
                sync_window=window,
                retry_count=0,
                created_at=iso_z(now),
                priority=Priority.HIGH if i % 5 == 0 else Priority.NORMAL,
            )
            c.execute(
                "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at) "
                "VALUES (?, ?, ?, 'pending', 'incremental', ?)",
                (msg.job_id, msg.organization_id, msg.connection_id, msg.created_at),
            )
            queue.enqueue(c, msg, max_attempts=max_attempts)
            job_ids.append(msg.job_id)
    store.close()
    return job_ids


def consume_worker(
    db: str, owner: str, out_dir: str, barrier, batch: int, lease: float, work_s: float
) -> None:
    """One consumer process: claim a batch, 'work', ack each in its own transaction (as
    the consumer does), until the queue is empty. Records what it acked and what was stale."""
    acked, stale = [], []
    try:
        store = open_store(db)
        queue = Queue(store)
        barrier.wait(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            claimed = queue.claim(owner, limit=batch, lease_seconds=lease)
            if not claimed:
                # done when nothing is left that a peer could still fail to ack
                if not store.read("SELECT 1 FROM sync_queue WHERE state IN ('ready', 'leased') LIMIT 1"):
                    break
                time.sleep(0.02)
                continue
            for m in claimed:
                if work_s:
                    time.sleep(work_s)
                with store.write() as c:
                    if queue.ack(c, m):
                        c.execute(
                            "UPDATE sync_jobs SET status = 'completed', records_synced = 1 WHERE id = ?",
                            (m.message.job_id,),
                        )
                        acked.append(m.message.job_id)
                    else:
                        stale.append(m.message.job_id)
        store.close()
    except BaseException:
        Path(out_dir, f"{owner}.error").write_text(traceback.format_exc())
        raise
    finally:
        Path(out_dir, f"{owner}.json").write_text(json.dumps({"acked": acked, "stale": stale}))


def run_consumers(tmp_path, db, *, processes, batch, lease, work_s):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    procs = [
        ctx.Process(
            target=consume_worker,
            args=(str(db), f"consumer-{n}", str(out_dir), barrier, batch, lease, work_s),
        )
        for n in range(processes)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    errors = {p.name: p.read_text() for p in out_dir.glob("*.error")}
    assert errors == {}, errors  # e.g. no "database is locked" surfaced in any process
    assert [p.exitcode for p in procs] == [0] * processes
    return [json.loads((out_dir / f"consumer-{n}.json").read_text()) for n in range(processes)]
