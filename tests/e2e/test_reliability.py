"""Reliability (issue 9): consumers killed with SIGKILL at precise points, frozen with
SIGSTOP, overlapping consumer processes, a warehouse connection killed mid-slice.
Everything is real: the installed command or a child Python process running the library
(tests/e2e/children.py), a SQLite store, SQLite and PostgreSQL warehouses, the sandboxes
over loopback HTTP. After each scenario no job is
lost, no warehouse row is duplicated, and every job is completed or pending/dead with a
reason.

Where a crash must land at an exact point, a child process runs the real ``Consumer`` and
kills itself from a hook the product already has (``Consumer(on_progress=...)``) or from
sqlite3's statement trace on the store connection the consumer really uses. Platform
faults and an unreachable warehouse, which need no process to kill:
tests/cli/test_faults.py; the backoff: tests/unit/test_backoff.py."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from tests.expected import CAMPAIGNS, METRICS, assert_job_landed_exactly, expected_ads, stored_ads
from tests.harness import (
    Env,
    consume_json,
    coverage,
    make_visible,
    popen,
    queue_row,
    seed,
    wait_for,
    without_synced_at,
)
from tests.helpers import PG_URL, REPO

UTC = UTC


# `env` (conftest) with the embedded SQLite warehouse.
pytestmark = pytest.mark.sqlite_warehouse


@pytest.fixture
def pg_env(tmp_path, sandbox, pg_schema_url):
    """The warehouse in PostgreSQL under an application_name of its own, so the test can
    find this consumer's backend among those of the tests running in parallel."""
    app_name = f"clearlift-r9-{os.urandom(4).hex()}"
    e = Env(
        home=tmp_path / "home", warehouse_url=f"{pg_schema_url}&application_name={app_name}", sandbox=sandbox
    )
    e.app_name = app_name
    e.run("init")
    return e


# --- helpers ----------------------------------------------------------------------------------


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def backfill(env: Env, cid: str, since: date, until: date) -> str:
    """`sync CONN --now --since --until`; the new job's id."""
    out = env.run("sync", cid, "--now", "--since", since.isoformat(), "--until", until.isoformat()).stdout
    return out.split("enqueued full job ", 1)[1].split()[0]


def yesterday() -> date:
    return datetime.now(UTC).date() - timedelta(days=1)


def start_child(
    env: Env, kill_at: str, *, lease: float = 2.0, job: str | None = None, marker: Path | None = None
) -> subprocess.Popen:
    spec = json.dumps({"kill_at": kill_at, "lease": lease, "job": job, "marker": str(marker)})
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from tests.e2e.children import child_main; child_main(sys.argv[1])",
            spec,
        ],
        cwd=REPO,
        env=env.environ(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_child(env: Env, kill_at: str, **kw) -> None:
    proc = start_child(env, kill_at, **kw)
    out, err = finish(proc, timeout=90)
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}\n{out}\n{err}"


def wait_lease_expiry(env: Env, job_id: str) -> None:
    row = queue_row(env, job_id)
    assert row["state"] == "leased"
    wait_for(lambda: time.time() > row["visible_at"] + 0.05, 30, "the lease to expire", 0.05)


# --- 1. eight consumers at once, through the whole consumer --------------------------------


@pytest.mark.slow
def test_eight_consume_processes_at_once_run_each_job_once_with_no_lock_errors(env, sandbox):
    # The queue-level version (5,000 jobs) is in tests/e2e/test_pg_control_plane.py; this one goes through
    # the sandboxes and the shared SQLite warehouse, where eight writers contend.
    conns = {}
    for i in range(8):
        conns[seed(env, "google", f"10000000{i:02d}", org=f"org-g{i}")] = "google"
        conns[seed(env, "tiktok", f"70000000{i:02d}", org=f"org-t{i}")] = "tiktok"
        conns[seed(env, "facebook", f"30000000{i:02d}", org=f"org-f{i}")] = "facebook"
    assert json.loads(env.run("schedule", "--json").stdout)["enqueued"] == 24
    procs = [popen(env, "consume", "--json", "--concurrency", "2") for _ in range(8)]
    outs = [finish(p) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [e for _, e in outs]
    for _, err in outs:
        assert "locked" not in err.lower() and "Traceback" not in err, err
    summaries = [json.loads(o) for o, _ in outs]
    assert sum(s["jobs"] for s in summaries) == 24 and sum(s.get("completed", 0) for s in summaries) == 24
    assert sum(1 for s in summaries if s["jobs"]) >= 2  # the work really was shared
    with env.store() as c:
        assert [
            tuple(r) for r in c.execute("SELECT state, attempts, count(*) FROM sync_queue GROUP BY 1, 2")
        ] == [("done", 1, 24)]
        errors = [
            r[0] for r in c.execute("SELECT error_message FROM sync_jobs WHERE error_message IS NOT NULL")
        ]
    assert errors == []
    for cid, platform in conns.items():
        (job,) = env.jobs(cid)
        assert_job_landed_exactly(env, platform, cid, job["id"])


# --- 2. killed inside the claim transaction ----------------------------------------------------


@pytest.mark.parametrize("kill_at", ["claim-commit", "claim-wait"])
def test_consumer_killed_inside_its_claim_leaves_the_job_claimable_at_once(env, sandbox, tmp_path, kill_at):
    cid = seed(env, "google", "1234567890")
    env.run("schedule")
    (job,) = env.jobs(cid)
    before = queue_row(env, job["id"])
    assert (before["state"], before["attempts"]) == ("ready", 0)
    if kill_at == "claim-commit":
        run_child(env, kill_at)
    else:
        marker = tmp_path / "waiting"
        holder = sqlite3.connect(env.db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the store's write lock: the claim must wait for it
        try:
            proc = start_child(env, kill_at, marker=marker)
            wait_for(marker.exists, 30, "the child to reach the claim")
            time.sleep(0.3)  # now blocked inside BEGIN IMMEDIATE
            assert proc.poll() is None
            sigkill(proc)
        finally:
            holder.execute("ROLLBACK")
            holder.close()

    after = queue_row(env, job["id"])
    assert tuple(after) == tuple(before)  # rolled back: not leased, attempts unchanged
    assert env.job(job["id"])["status"] == "pending"
    assert sandbox.google.requests == []
    # Claimable at once: no lease to wait out.
    summary = consume_json(env)
    assert (summary["jobs"], summary.get("completed")) == (1, 1)
    assert queue_row(env, job["id"])["attempts"] == 1
    assert_job_landed_exactly(env, "google", cid, job["id"])


# --- 3. killed after the claim, before the ack ----------------------------------------------


@pytest.mark.slow
def test_consumer_killed_inside_a_request_is_redelivered_after_its_lease(env, sandbox):
    cid = seed(env, "google", "1234567890")
    env.run("schedule")
    (job,) = env.jobs(cid)
    sandbox.google.faults.add("latency", path="googleAds", times=1, seconds=30)
    proc = popen(env, "consume", "--lease-seconds", "5")
    try:
        wait_for(lambda: sandbox.google.requests_to("googleAds"), 30, "the job's first request")
    finally:
        sigkill(proc)

    row = queue_row(env, job["id"])
    assert (row["state"], row["attempts"]) == ("leased", 1)
    assert env.job(job["id"])["status"] == "running"
    # Invisible while the dead consumer's lease lasts: another run claims nothing.
    assert consume_json(env)["jobs"] == 0
    assert len(sandbox.google.requests) == 1
    assert time.time() < row["visible_at"]
    wait_lease_expiry(env, job["id"])
    summary = consume_json(env)
    assert (summary["jobs"], summary.get("completed")) == (1, 1)
    row = queue_row(env, job["id"])
    assert (row["state"], row["attempts"]) == ("done", 2)
    assert_job_landed_exactly(env, "google", cid, job["id"])


# --- 4. crash after the warehouse commit, before the ack -------------------------------------


@pytest.mark.parametrize("kill_at", ["before-ack", "before-coverage"])
def test_crash_after_the_warehouse_commit_then_redelivery_writes_nothing_new(env, sandbox, kill_at):
    tt = sandbox.tiktok
    adv = "7009008007006005004"
    tt.configure_account(adv, campaigns=3)
    cid = seed(env, "tiktok", adv)
    until = yesterday()
    since = until - timedelta(days=44)  # two slices of at most 30 days
    job_id = backfill(env, cid, since, until)
    run_child(env, kill_at, job=job_id)

    first = {
        t: env.warehouse_rows(t, organization_id="org-1") for t in (METRICS["tiktok"], CAMPAIGNS["tiktok"])
    }
    reports_first = [r.query["start_date"] for r in tt.requests_to("report/integrated")]
    if kill_at == "before-ack":
        assert first[METRICS["tiktok"]] and len(coverage(env, job_id)) == 2
        assert stored_ads(env, "tiktok", "org-1") == expected_ads(env, "tiktok", adv, since, until)
    else:  # slice 1 is in the warehouse, but not recorded as done
        assert coverage(env, job_id) == []
        assert {r["metric_date"] for r in first[METRICS["tiktok"]]} <= {
            since + timedelta(days=d) for d in range(30)
        }
        assert first[METRICS["tiktok"]] and first[CAMPAIGNS["tiktok"]]
    assert env.job(job_id)["status"] == "running"

    wait_lease_expiry(env, job_id)
    assert consume_json(env).get("completed") == 1
    assert queue_row(env, job_id)["attempts"] == 2
    assert_job_landed_exactly(env, "tiktok", cid, job_id)
    again = {t: env.warehouse_rows(t, organization_id="org-1") for t in first}
    reports_again = [r.query["start_date"] for r in tt.requests_to("report/integrated")][len(reports_first) :]
    if kill_at == "before-ack":
        assert again == first  # not one row rewritten, not even its last_synced_at
        assert reports_again == []
    else:
        # Slice 1 is fetched and written again: the same rows with the same values.
        assert reports_again == [since.isoformat(), (since + timedelta(days=30)).isoformat()]
        old = {(r["campaign_id"], r["metric_date"]): r for r in without_synced_at(first[METRICS["tiktok"]])}
        new = {(r["campaign_id"], r["metric_date"]): r for r in without_synced_at(again[METRICS["tiktok"]])}
        assert {k: new[k] for k in old} == old
        assert without_synced_at(again[CAMPAIGNS["tiktok"]]) == without_synced_at(first[CAMPAIGNS["tiktok"]])


# --- 5. a stale owner wakes up ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("late", ["ack", "failure"])
def test_a_consumer_that_wakes_up_after_losing_its_lease_changes_nothing(env, sandbox, late):
    # The queue-level fencing is in tests/integration/test_queue.py; here a real consumer is frozen (SIGSTOP)
    # inside a request until its lease runs out, another one completes the job, then the
    # first wakes up (SIGCONT) and finishes its own delivery with an ack or a failure.
    cid = seed(env, "google", "1234567890")
    env.run("schedule")
    (job,) = env.jobs(cid)
    sandbox.google.faults.add("latency", path="googleAds", times=1, seconds=3)
    stale = start_child(env, "never", job=job["id"])
    try:
        wait_for(lambda: sandbox.google.requests, 30, "the first consumer's request")
        os.kill(stale.pid, signal.SIGSTOP)
        wait_lease_expiry(env, job["id"])
        assert consume_json(env).get("completed") == 1
        done = queue_row(env, job["id"])
        finished = env.job(job["id"])
        rows = env.warehouse_rows(METRICS["google"])
        if late == "failure":  # the woken consumer's next request fails for good
            sandbox.google.faults.add(
                "status",
                path="googleAds",
                times=1,
                status=400,
                body={"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Bad request"}},
            )
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    out, err = finish(stale)
    assert stale.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) | {"records": 0} == {
        "jobs": 1,
        "stale": 1,
        "records": 0,
        "stopped_by": "empty",
    }
    assert tuple(queue_row(env, job["id"])) == tuple(done)  # still done, by the second delivery
    assert (done["state"], done["attempts"]) == ("done", 2)
    assert tuple(env.job(job["id"])) == tuple(finished)
    assert env.connection(cid)["sync_status"] == "completed" and env.connection(cid)["sync_error"] is None
    # A late write of the same rows never replaces the newer ones (older last_synced_at).
    assert env.warehouse_rows(METRICS["google"]) == rows
    assert_job_landed_exactly(env, "google", cid, job["id"])


# --- 6. a job longer than its lease ------------------------------------------------------------


@pytest.mark.slow
def test_a_job_longer_than_its_lease_keeps_it_by_heartbeat_and_runs_once(env, sandbox):
    cid = seed(env, "google", "1234567890")
    env.run("schedule")
    (job,) = env.jobs(cid)
    sandbox.google.faults.latency_seconds = 3.0  # three requests: ~9 s against a 5 s lease
    first = popen(env, "consume", "--json", "--lease-seconds", "5")
    try:
        wait_for(lambda: sandbox.google.requests, 30, "the job's first request")
        started = time.monotonic()
        wait_for(lambda: time.monotonic() - started > 6.0, 10, "the first lease to have run out")
        assert first.poll() is None  # still working on the job
        # Without heartbeats the job would be claimable now; the second consumer finds nothing.
        assert consume_json(env, "--lease-seconds", "5")["jobs"] == 0
        out, err = finish(first)
    finally:
        if first.poll() is None:
            sigkill(first)
    assert first.returncode == 0, err
    assert json.loads(out).get("completed") == 1
    row = queue_row(env, job["id"])
    assert (row["state"], row["attempts"]) == ("done", 1)
    assert len(sandbox.google.requests) == 3  # account, campaigns, metrics: one job's worth
    assert_job_landed_exactly(env, "google", cid, job["id"])


# --- 7. killed in the middle of a write, then two consumers together ------------------------


@pytest.mark.slow
def test_consumer_killed_mid_write_then_two_consumers_recover_and_finish(env, sandbox):
    victim_account = "7100000000000000009"
    sandbox.tiktok.configure_account(victim_account, campaigns=4)
    victim = seed(env, "tiktok", victim_account, org="org-v")
    others = {seed(env, "tiktok", f"71000000000000000{i:02d}", org=f"org-t{i}"): "tiktok" for i in range(3)}
    others.update({seed(env, "google", f"20000000{i:02d}", org=f"org-g{i}"): "google" for i in range(3)})
    victim_job = backfill(env, victim, yesterday() - timedelta(days=44), yesterday())
    assert json.loads(env.run("schedule", "--json").stdout)["enqueued"] == 6

    run_child(env, "mid-write", job=victim_job)
    # The slice's transaction died with the process: nothing of it is in the warehouse.
    assert env.warehouse_rows(CAMPAIGNS["tiktok"], organization_id="org-v") == []
    assert env.warehouse_rows(METRICS["tiktok"], organization_id="org-v") == []
    assert coverage(env, victim_job) == []
    wait_lease_expiry(env, victim_job)

    procs = [popen(env, "consume", "--json", "--concurrency", "2") for _ in range(2)]
    outs = [finish(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    assert all("locked" not in e.lower() and "Traceback" not in e for _, e in outs), outs
    summaries = [json.loads(o) for o, _ in outs]
    assert sum(s.get("completed", 0) for s in summaries) == sum(s["jobs"] for s in summaries) == 7
    with env.store() as c:
        attempts = dict(c.execute("SELECT job_id, attempts FROM sync_queue WHERE state = 'done'").fetchall())
    assert len(attempts) == 7 and attempts.pop(victim_job) == 2 and set(attempts.values()) == {1}
    assert_job_landed_exactly(env, "tiktok", victim, victim_job)
    for cid, platform in others.items():
        (job,) = env.jobs(cid)
        assert_job_landed_exactly(env, platform, cid, job["id"])


# --- 8. killed during a 100-slice backfill -------------------------------------------------------


@pytest.mark.slow
def test_a_killed_100_slice_backfill_resumes_from_the_slices_not_yet_done(env, sandbox):
    tt = sandbox.tiktok
    adv = "7200000000000000001"
    tt.configure_account(adv, campaigns=1)
    cid = seed(env, "tiktok", adv)
    until = yesterday()
    since = until - timedelta(days=2999)  # 3,000 days: 100 slices of 30
    job_id = backfill(env, cid, since, until)
    slices = [(since + timedelta(days=30 * i)).isoformat() for i in range(100)]
    tt.faults.latency_seconds = 0.03  # the whole backfill takes seconds: time to kill it midway

    proc = start_child(env, "never", job=job_id)
    try:
        wait_for(lambda: len(coverage(env, job_id)) >= 30, 60, "30 slices to be committed", 0.01)
    finally:
        sigkill(proc)
    time.sleep(0.2)  # a request sent just before the kill is logged by now
    done_before = {s for s, _, _ in coverage(env, job_id)}
    assert 30 <= len(done_before) < 100
    requested_before = len(tt.requests)

    wait_lease_expiry(env, job_id)
    assert consume_json(env).get("completed") == 1
    refetched = [
        r.query["start_date"] for r in tt.requests[requested_before:] if "report/integrated" in r.path
    ]
    assert not set(refetched) & done_before  # done slices are not fetched again
    assert sorted(refetched) == sorted(set(slices) - done_before)  # each missing one exactly once
    cov = coverage(env, job_id)
    assert [s for s, _, _ in cov] == slices
    assert all(date.fromisoformat(e) == date.fromisoformat(s) + timedelta(days=29) for s, e, _ in cov)
    for s in done_before:  # fetched once in all
        assert sum(1 for r in tt.requests_to("report/integrated") if r.query["start_date"] == s) == 1
    assert_job_landed_exactly(env, "tiktok", cid, job_id)


# --- 9. the PostgreSQL warehouse goes away -----------------------------------------------------


def backends(app_name: str) -> list[tuple[int, str]]:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as c:
        return c.execute(
            "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s", (app_name,)
        ).fetchall()


@pytest.mark.slow
def test_warehouse_connection_killed_mid_slice_rolls_back_and_the_job_is_retried(pg_env, sandbox):
    env = pg_env
    tt = sandbox.tiktok
    adv = "7300000000000000001"
    tt.configure_account(adv, campaigns=3)
    cid = seed(env, "tiktok", adv)
    until = yesterday()
    job_id = backfill(env, cid, until - timedelta(days=44), until)
    # Slice 1's report hangs: its campaigns are already written in the open transaction.
    tt.faults.add("latency", path="report/integrated", times=1, seconds=3)
    proc = popen(env, "consume", "--json")
    try:
        wait_for(lambda: tt.requests_to("report/integrated"), 30, "slice 1's report request")
        open_txn = wait_for(
            lambda: [pid for pid, state in backends(env.app_name) if state == "idle in transaction"],
            5,
            "the warehouse transaction",
        )
        assert len(open_txn) == 1
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as c:
            assert c.execute("SELECT pg_terminate_backend(%s)", (open_txn[0],)).fetchone()[0] is True
        out, err = finish(proc)
    finally:
        if proc.poll() is None:
            sigkill(proc)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert json.loads(out).get("retry") == 1
    job = env.job(job_id)
    assert job["status"] == "pending" and "warehouse" in job["error_message"], job["error_message"]
    row = queue_row(env, job_id)
    assert (row["state"], row["attempts"]) == ("ready", 1) and row["visible_at"] > time.time()
    # All or nothing: the campaigns written before the kill are gone with the transaction.
    assert env.warehouse_rows(CAMPAIGNS["tiktok"]) == [] and env.warehouse_rows(METRICS["tiktok"]) == []
    assert coverage(env, job_id) == []

    make_visible(env)
    assert consume_json(env).get("completed") == 1
    assert queue_row(env, job_id)["attempts"] == 2
    assert len(coverage(env, job_id)) == 2
    assert_job_landed_exactly(env, "tiktok", cid, job_id)


# --- what the crashes leave behind ----------------------------------------------------------------


def test_no_job_is_lost_after_all_the_crashes(env, sandbox):
    """Every job of a store that lived through kills at each point ends completed."""
    cids = [seed(env, "tiktok", f"74000000000000000{i:02d}", org=f"org-{i}") for i in range(3)]
    until = yesterday()
    jobs = [backfill(env, cid, until - timedelta(days=44), until) for cid in cids]
    for job_id, kill_at in zip(jobs, ["claim-commit", "mid-write", "before-ack"], strict=True):
        run_child(env, kill_at, job=job_id)
    states = Counter(queue_row(env, j)["state"] for j in jobs)
    assert states == Counter({"ready": 1, "leased": 2})
    for job_id in jobs:
        if queue_row(env, job_id)["state"] == "leased":
            wait_lease_expiry(env, job_id)
    assert consume_json(env).get("completed") == 3
    for cid, job_id in zip(cids, jobs, strict=True):
        assert_job_landed_exactly(env, "tiktok", cid, job_id)
