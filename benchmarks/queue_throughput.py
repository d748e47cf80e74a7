"""Queue throughput: enqueue, then claim + ack with 1 and 4 consumer processes.

Enqueue: ``Queue.enqueue`` in store transactions of 500 messages (as the scheduler
writes them) and one message per transaction (as ``sync --now`` does). Claim + ack: each
process claims batches of 50 (``Queue.claim``) and acks every message in its own
store transaction, as the consumer does; every claimed message id is collected to check
that none was delivered twice and none was left behind. Once more with 1 process over a
queue that also holds many messages acked on earlier days (nothing is ever deleted).
Baseline: the queue's essential SQL run bare (INSERT of prepared rows in batches; UPDATE
... LIMIT 50, then one UPDATE per ack) on the same store schema. Target: >= 5,000 jobs/s,
0 duplicates.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks._common import (
    Stopwatch,
    emit,
    heading,
    machine,
    parse_args,
    pg_schema,
    rnd,
    settings_for,
    show,
    temp_home,
)

TARGET = 5_000
BATCH = 50
ENQUEUE_TX = 500


def messages(n: int, start: int = 0):
    from clearlift_cli.models import JobType, Priority, SyncJobMessage, SyncWindow

    now = datetime.now(UTC)
    window = SyncWindow(now - timedelta(days=3), now)
    created = now.isoformat()
    return [
        SyncJobMessage(
            job_id=f"job-{i:08d}",
            connection_id=f"org-{i // 4}-google-{1_000_000_000 + i}",
            organization_id=f"org-{i // 4}",
            platform="google",
            account_id=str(1_000_000_000 + i),
            job_type=JobType.INCREMENTAL,
            sync_window=window,
            retry_count=0,
            created_at=created,
            priority=Priority.HIGH if i % 10 == 0 else Priority.NORMAL,
        )
        for i in range(start, start + n)
    ]


def new_store(home: Path):
    from clearlift_cli import commands
    from clearlift_cli.store import open_store

    s = settings_for(home)
    commands.init(s, warehouse=False)
    return s.db, open_store(s.db)


def enqueue_all(store, msgs, per_tx: int) -> float:
    from clearlift_cli.store.queue import Queue

    queue = Queue(store)
    with Stopwatch() as sw:
        for i in range(0, len(msgs), per_tx):
            with store.write() as c:
                for m in msgs[i : i + per_tx]:
                    queue.enqueue(c, m)
    return sw.seconds


def _consumer(db: str, name: str, ready, go, results) -> None:
    """One consumer process: claim batches and ack each message, until the queue is empty."""
    from clearlift_cli.store import open_store
    from clearlift_cli.store.queue import Queue

    store = open_store(db)
    queue = Queue(store)
    ids: list[int] = []
    stale = 0
    ready.set()
    go.wait()
    while True:
        batch = queue.claim(name, limit=BATCH, lease_seconds=300)
        if not batch:
            break
        for claimed in batch:
            with store.write() as c:
                if not queue.ack(c, claimed):
                    stale += 1
            ids.append(claimed.id)
    results.put((name, ids, stale, time.perf_counter()))
    store.close()


def add_history(db: str, count: int) -> None:
    """``count`` messages acked on earlier days: nothing is ever deleted from the queue."""
    stamp = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    body = messages(1)[0].dumps()
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("BEGIN IMMEDIATE")
    c.executemany(
        "INSERT INTO sync_queue (job_id, connection_id, platform, body, priority, state, "
        "visible_at, attempts, max_attempts, created_at, updated_at, finished_at) "
        "VALUES (?, ?, 'google', ?, 1, 'done', ?, 1, 4, ?, ?, ?)",
        (
            (f"old-{i:09d}", f"org-old-google-{i}", body, time.time() - 86_400, stamp, stamp, stamp)
            for i in range(count)
        ),
    )
    c.execute("COMMIT")
    c.close()


def claim_and_ack(db: str, processes: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    results = ctx.Queue()
    readies, procs = [], []
    for p in range(processes):
        ready = ctx.Event()
        proc = ctx.Process(target=_consumer, args=(db, f"bench-{p}", ready, go, results))
        proc.start()
        readies.append(ready)
        procs.append(proc)
    for ready in readies:
        ready.wait(60)
    t0 = time.perf_counter()
    go.set()
    got = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(30)
    ids = [i for _, part, _, _ in got for i in part]
    return {
        "seconds": max(end for *_, end in got) - t0,
        "claimed": len(ids),
        "duplicates": len(ids) - len(set(ids)),
        "stale_acks": sum(s for _, _, s, _ in got),
        "per_process": sorted(len(part) for _, part, _, _ in got),
    }


def bare_baseline(home: Path, n: int) -> dict:
    """The queue's essential SQL alone, on a ``sync_queue`` table made by ``commands.init`` (same
    indexes): INSERT of prepared rows in batches of 500, then the claim UPDATE (LIMIT 50)
    and one fenced UPDATE per ack, each in its own BEGIN IMMEDIATE transaction."""
    db, store = new_store(home / "bare")
    store.close()
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA synchronous = NORMAL")
    stamp = datetime.now(UTC).isoformat()
    now = time.time()
    rows = [
        (m.job_id, m.connection_id, m.platform, m.dumps(), m.priority.rank, now, stamp, stamp)
        for m in messages(n)
    ]
    with Stopwatch() as enq:
        for i in range(0, n, ENQUEUE_TX):
            c.execute("BEGIN IMMEDIATE")
            c.executemany(
                "INSERT INTO sync_queue (job_id, connection_id, platform, body, priority, state, "
                "visible_at, attempts, max_attempts, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'ready', ?, 0, 4, ?, ?)",
                rows[i : i + ENQUEUE_TX],
            )
            c.execute("COMMIT")
    with Stopwatch() as work:
        while True:
            c.execute("BEGIN IMMEDIATE")
            claimed = c.execute(
                "UPDATE sync_queue SET state = 'leased', lease_token = 't' || id, "
                "attempts = attempts + 1, visible_at = ? WHERE id IN (SELECT id FROM sync_queue "
                "WHERE state IN ('ready', 'leased') AND visible_at <= ? "
                "ORDER BY priority, visible_at, id LIMIT ?) RETURNING id, lease_token, body",
                (now + 300, now + 1, BATCH),
            ).fetchall()
            c.execute("COMMIT")
            if not claimed:
                break
            for message_id, token, _body in claimed:
                c.execute("BEGIN IMMEDIATE")
                c.execute(
                    "UPDATE sync_queue SET state = 'done', lease_token = NULL "
                    "WHERE id = ? AND lease_token = ? AND state = 'leased'",
                    (message_id, token),
                )
                c.execute("COMMIT")
    c.close()
    return {"enqueue_per_s": n / enq.seconds, "claim_ack_per_s": n / work.seconds}


def postgres_runs(n: int) -> dict:
    """The same enqueue and claim + ack on the PostgreSQL control plane (a fresh schema):
    claims there are one UPDATE ... FOR UPDATE SKIP LOCKED, so processes do not queue up
    behind one writer lock as they do on a SQLite file."""
    from clearlift_cli.store import open_store

    out: dict = {}
    with pg_schema("benchq") as url:
        store = open_store(url)
        store.migrate()
        out["enqueue_per_s"] = n / enqueue_all(store, messages(n), ENQUEUE_TX)
        store.close()
        for k, processes in enumerate((1, 4), start=1):
            if k > 1:
                store = open_store(url)
                enqueue_all(store, messages(n, start=k * n), ENQUEUE_TX)
                store.close()
            r = claim_and_ack(url, processes)
            store = open_store(url)
            r["left_behind"] = store.read("SELECT count(*) FROM sync_queue WHERE state != 'done'")[0][0]
            store.close()
            r["per_s"] = n / r["seconds"]
            assert r["claimed"] == n and r["duplicates"] == 0 and r["left_behind"] == 0, r
            out[processes] = r
    return out


def main() -> None:
    args = parse_args(__doc__)
    n = 5_000 if args.quick else 50_000
    singles = n // 10
    heading(f"{n:,} messages")
    figures: dict = {}
    with temp_home() as home:
        bare = bare_baseline(home, n)
        _db, store = new_store(home / "enqueue")
        batched_s = enqueue_all(store, messages(n), ENQUEUE_TX)
        single_s = enqueue_all(store, messages(singles, start=n), 1)
        store.close()
    figures["enqueue_per_s"] = n / batched_s
    figures["enqueue_single_per_s"] = singles / single_s
    show("bare INSERT, 500 per transaction", f"{bare['enqueue_per_s']:>9,.0f} /s", "(baseline)")
    show(
        f"enqueue, {ENQUEUE_TX} per transaction",
        f"{figures['enqueue_per_s']:>9,.0f} /s",
        f"{figures['enqueue_per_s'] / bare['enqueue_per_s']:.0%} of bare",
    )
    show("enqueue, one per transaction", f"{figures['enqueue_single_per_s']:>9,.0f} /s")

    show(f"bare claim {BATCH} + ack each, 1 process", f"{bare['claim_ack_per_s']:>9,.0f} /s", "(baseline)")
    runs = {}
    history = 50_000 if args.quick else 500_000
    for processes, old in ((1, 0), (4, 0), (1, history)):
        with temp_home() as home:
            db, store = new_store(home)
            enqueue_all(store, messages(n), ENQUEUE_TX)
            store.close()
            add_history(db, old)
            r = claim_and_ack(db, processes)
            left = (
                sqlite3.connect(db)
                .execute("SELECT count(*) FROM sync_queue WHERE state != 'done'")
                .fetchone()[0]
            )
        r["left_behind"] = left
        r["per_s"] = n / r["seconds"]
        runs[(processes, old)] = r
        label = f"claim {BATCH} + ack each, {processes} process{'es' if processes > 1 else ''}"
        if old:
            label = f"{label}, {old:,} done before"
        show(
            label,
            f"{r['per_s']:>9,.0f} /s",
            f"{r['per_s'] / bare['claim_ack_per_s']:.0%} of bare; {r['duplicates']} duplicates, "
            f"{left} left, split {r['per_process']}",
        )
        assert r["claimed"] == n and r["duplicates"] == 0 and left == 0 and not r["stale_acks"], r
    pg_n = n // 5 if args.quick else n // 2
    pg = postgres_runs(pg_n)
    show(
        f"PostgreSQL: enqueue, {ENQUEUE_TX} per transaction",
        f"{pg['enqueue_per_s']:>9,.0f} /s",
        f"{pg_n:,} messages",
    )
    for processes in (1, 4):
        r = pg[processes]
        show(
            f"PostgreSQL: claim {BATCH} + ack each, {processes} process{'es' if processes > 1 else ''}",
            f"{r['per_s']:>9,.0f} /s",
            f"{r['duplicates']} duplicates, 0 left, split {r['per_process']}",
        )
    one, four, aged = runs[(1, 0)], runs[(4, 0)], runs[(1, history)]
    slowest = min(figures["enqueue_per_s"], one["per_s"], four["per_s"], aged["per_s"])
    met = slowest >= TARGET and all(r["duplicates"] == 0 for r in runs.values())
    show(
        f"target >= {TARGET:,} jobs/s, 0 duplicates",
        "met" if met else "MISSED",
        f"(slowest {slowest:,.0f} /s)",
    )
    emit(
        "queue_throughput",
        jobs=n,
        batch=BATCH,
        quick=args.quick,
        **machine(),
        enqueue_per_s=rnd(figures["enqueue_per_s"], 0),
        enqueue_single_per_s=rnd(figures["enqueue_single_per_s"], 0),
        claim_ack_per_s_1=rnd(one["per_s"], 0),
        claim_ack_per_s_4=rnd(four["per_s"], 0),
        history=history,
        claim_ack_per_s_1_with_history=rnd(aged["per_s"], 0),
        duplicates=sum(r["duplicates"] for r in runs.values()),
        bare_enqueue_per_s=rnd(bare["enqueue_per_s"], 0),
        bare_claim_ack_per_s=rnd(bare["claim_ack_per_s"], 0),
        ratio_enqueue_vs_bare=rnd(figures["enqueue_per_s"] / bare["enqueue_per_s"]),
        ratio_claim_ack_vs_bare=rnd(one["per_s"] / bare["claim_ack_per_s"]),
        pg_jobs=pg_n,
        pg_enqueue_per_s=rnd(pg["enqueue_per_s"], 0),
        pg_claim_ack_per_s_1=rnd(pg[1]["per_s"], 0),
        pg_claim_ack_per_s_4=rnd(pg[4]["per_s"], 0),
        pg_duplicates=pg[1]["duplicates"] + pg[4]["duplicates"],
        target_per_s=TARGET,
        target_met=met,
    )


if __name__ == "__main__":
    main()
