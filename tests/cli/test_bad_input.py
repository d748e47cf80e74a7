"""Bad input (issue 9, scenarios 13 and 15): wrong keys, unusable stores, bad warehouse URLs
and configuration, rows the API worker wrote badly. Every refusal is exactly one
``error:`` line with no traceback and the exit code of its class (2 usage, 3
configuration, 4 store, 5 warehouse), and leaves the store as it was. The command
runs in-process (its entry point, ``cli.main``), configured by environment only, against a
real SQLite store and the sandboxes; tests/e2e/test_entry_point.py runs the installed one.

Tests run as root, which ignores file modes: a read-only store is made with ``chattr +i``
(the immutable flag binds root too), or with plain modes when not root."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clearlift_cli.crypto import FieldCipher
from clearlift_cli.timeutil import iso_z
from tests.harness import Env, closed_port, queue_row, refused, seed
from tests.helpers import one_line_error, store_snapshot

UTC = UTC
TOKEN = "tok-never-stored-0123456789"


@pytest.fixture
def env(tmp_path, sandbox):
    """A store with two Google connections whose jobs are queued."""
    e = Env(home=tmp_path / "home", warehouse_url=f"sqlite:///{tmp_path}/warehouse.db", sandbox=sandbox)
    e.run("init")
    e.conns = [seed(e, "google", f"100000000{i}") for i in range(2)]
    e.run("schedule")
    return e


def file_state(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` cannot be written, even by root: the immutable flag (``chattr +i``) as root,
    plain modes otherwise."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if result.returncode != 0:  # e.g. a filesystem without attributes, or no CAP_LINUX_IMMUTABLE
        pytest.skip(f"cannot make {path} read-only as root here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def add_args(account: str = "1000000009") -> list[str]:
    return [
        "connections",
        "add",
        "--org",
        "org-9",
        "--platform",
        "google",
        "--account-id",
        account,
        "--connected-by",
        "user-9",
    ]


# --- the encryption key ---------------------------------------------------------------------------

KEY_PROBLEMS = {
    "not base64": ({"ENCRYPTION_KEY": "this is not base64 at all!!"}, "not valid base64"),
    "wrong length": ({"ENCRYPTION_KEY": base64.b64encode(b"sixteen byte key").decode()}, "32 bytes"),
    "missing": ({"ENCRYPTION_KEY": ""}, "ENCRYPTION_KEY is not set"),
    "unreadable key file": (
        {"ENCRYPTION_KEY": "", "ENCRYPTION_KEY_FILE": "/nonexistent/clearlift.key"},
        "/nonexistent/clearlift.key cannot be read",
    ),
    "not the worker's key": (
        {"ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode()},
        "decrypts none of the 2",
    ),
}


@pytest.mark.parametrize("problem", list(KEY_PROBLEMS))
def test_a_bad_encryption_key_is_refused_before_anything_is_claimed_or_written(env, problem):
    bad, says = KEY_PROBLEMS[problem]
    soon = iso_z(datetime.now(UTC) + timedelta(seconds=60))
    with env.store() as c:  # both tokens due for a refresh
        c.execute("UPDATE platform_connections SET expires_at = ?", (soon,))
    outputs = []
    for args in (["consume"], ["refresh-tokens"], add_args()):
        line = refused(env, *args, code=3, says=says, CLEARLIFT_ACCESS_TOKEN=TOKEN, **bad)
        outputs.append(line)
    # The jobs were not touched: not failed, not dead-lettered, no attempt used.
    for cid in env.conns:
        (job,) = env.jobs(cid)
        assert job["status"] == "pending" and job["error_message"] is None
        assert (queue_row(env, job["id"])["state"], queue_row(env, job["id"])["attempts"]) == ("ready", 0)
    for line in outputs:
        assert bad["ENCRYPTION_KEY"] == "" or bad["ENCRYPTION_KEY"] not in line
        assert TOKEN not in line
    assert env.sandbox.google.requests == []
    # With the right key, the same run works.
    assert "2 completed" in env.run("consume").stdout


def test_one_corrupted_ciphertext_fails_only_its_own_job(env, sandbox):
    good, bad = env.conns
    sealed = env.connection(bad)["credentials_encrypted"]
    raw = bytearray(base64.b64decode(sealed))
    raw[20] ^= 0x01  # one flipped bit in the ciphertext
    with env.store() as c:
        c.execute(
            "UPDATE platform_connections SET credentials_encrypted = ? WHERE id = ?",
            (base64.b64encode(bytes(raw)).decode(), bad),
        )
    proc = env.run("consume", "--json")
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout) | {"records": 0} == {
        "jobs": 2,
        "completed": 1,
        "failed": 1,
        "records": 0,
        "stopped_by": "empty",
    }
    assert env.jobs(good)[0]["status"] == "completed"
    job = env.jobs(bad)[0]
    assert job["status"] == "failed"
    assert (
        job["error_message"]
        == "credentials_encrypted failed authentication: wrong ENCRYPTION_KEY or tampered data"
    )
    assert queue_row(env, job["id"])["state"] == "dead"
    latest = env.run_json("status", bad)["latest_sync"]
    assert (latest["status"], latest["error"]) == ("failed", job["error_message"])


# --- the store ----------------------------------------------------------------------------------


def unusable_stores(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    missing = tmp_path / "nowhere" / "clearlift.db"
    notes = tmp_path / "notes.db"
    notes.write_text("these are my notes, not a database\n" * 100)
    bare = tmp_path / "bare.db"
    sqlite3.connect(bare).execute("CREATE TABLE unrelated (x)").connection.close()
    return {
        "missing": (missing, "clearlift init"),
        "not a database": (notes, "not a database"),
        "lacking tables": (bare, "clearlift init"),
    }


def test_unusable_stores_are_refused_with_exit_4_and_left_as_they_are(tmp_path, sandbox):
    # schedule, status, connections list, init and sync are checked in test_store.py
    env = Env(home=tmp_path / "home", warehouse_url=f"sqlite:///{tmp_path}/warehouse.db", sandbox=sandbox)
    commands = [
        ["consume"],
        ["refresh-tokens"],
        ["queue", "dead"],
        ["queue", "retry", "--all"],
        ["connections", "pause", "x"],
        add_args(),
    ]
    for n, (name, (db, says)) in enumerate(unusable_stores(tmp_path).items()):
        before = file_state(db)
        for args in [["queue"], *commands[n::3]]:  # each command meets one of the three stores
            proc = env.run(*args, check=False, CLEARLIFT_DB=str(db), CLEARLIFT_ACCESS_TOKEN=TOKEN)
            assert proc.returncode == 4, (name, args, proc.stderr)
            line = one_line_error(proc.stderr)
            assert str(db) in line and says in line, (name, line)
        assert file_state(db) == before, name
    assert not (tmp_path / "nowhere").exists()


def test_a_read_only_store_refuses_writes_with_exit_4_and_still_answers_reads(env, sandbox):
    third = seed(env, "google", "1000000007")  # no job yet: `sync --now` would write one
    before = store_snapshot(env.db)
    with read_only(env.db):
        for args in (
            ["consume"],
            ["sync", third, "--now"],
            ["schedule"],
            ["connections", "pause", third],
            add_args(),
        ):
            proc = env.run(*args, check=False, CLEARLIFT_ACCESS_TOKEN=TOKEN)
            assert proc.returncode == 4, (args, proc.stderr)
            assert "is read-only" in one_line_error(proc.stderr), args
        for args in (["status", "--json"], ["queue", "--json"], ["connections", "list", "--json"]):
            proc = env.run(*args, check=False)
            assert proc.returncode == 0 and json.loads(proc.stdout), (args, proc.stderr)
    assert store_snapshot(env.db) == before
    assert sandbox.google.requests == []  # refused before any job ran
    assert "2 completed" in env.run("consume").stdout  # writable again: nothing was harmed


def test_a_store_where_wal_cannot_work_is_refused_with_a_clear_error(env, tmp_path):
    """Scenario 15. WAL needs ``<store>-wal`` and ``<store>-shm`` beside the file: in a
    directory that cannot be written they cannot be created, and a store in rollback-journal
    mode (a fresh D1 export) that cannot be written cannot switch to WAL."""
    for side in (Path(f"{env.db}-wal"), Path(f"{env.db}-shm")):
        assert not side.exists()  # closed cleanly: the next open must create them
    before = file_state(env.db)
    with read_only(env.home):
        for args in (["status"], ["consume"], ["schedule"], ["queue"]):
            proc = env.run(*args, check=False)
            assert proc.returncode == 4, (args, proc.stderr)
            line = one_line_error(proc.stderr)
            assert f"store {env.db} cannot use WAL mode" in line and "directory must be writable" in line, (
                line
            )
    assert file_state(env.db) == before

    d1 = tmp_path / "d1.db"  # what `sqlite3 d1.db < d1.sql` makes: rollback-journal mode
    c = sqlite3.connect(d1)
    c.execute("CREATE TABLE platform_connections (id TEXT PRIMARY KEY)")
    c.commit()
    c.close()
    before = file_state(d1)
    with read_only(d1):
        proc = env.run("init", "--store-only", "--db", str(d1), check=False)
        assert proc.returncode == 4, proc.stderr
        line = one_line_error(proc.stderr)
        assert f"store {d1} cannot use WAL mode" in line and "readonly" in line, line
    assert file_state(d1) == before
    # Any other command refuses the D1 copy before `init` without touching it.
    refused(env, "status", "--db", str(d1), code=4, says="run `clearlift init`")
    assert file_state(d1) == before
    c = sqlite3.connect(d1)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    c.close()


# --- the warehouse and the configuration ---------------------------------------------------------


def test_bad_warehouse_urls_are_refused_and_jobs_are_left_alone(env):
    port = closed_port()
    cases = [
        ("mysql://u:pw@db/x", 3, "unsupported warehouse URL"),
        ("warehouse.db", 3, "unsupported warehouse URL"),
        ("sqlite://", 3, "names no file"),
        ("postgresql://u@[::1/db", 3, "is not valid"),
    ]
    for url, code, says in cases:
        for args in (["init"], ["consume"]):
            refused(env, *args, code=code, says=says, CLEARLIFT_WAREHOUSE_URL=url)
    line = refused(
        env,
        "init",
        code=5,
        says="connecting failed",
        CLEARLIFT_WAREHOUSE_URL=f"postgresql://u:hunter2secret@127.0.0.1:{port}/db",
    )
    assert "hunter2secret" not in line and f"u:***@127.0.0.1:{port}" in line
    for cid in env.conns:
        job = env.jobs(cid)[0]
        assert (job["status"], queue_row(env, job["id"])["attempts"]) == ("pending", 0)


# --- rows the API worker wrote badly ---------------------------------------------------------------


def test_badly_written_rows_fail_their_own_jobs_with_a_reason_and_the_rest_runs(env, sandbox):
    good, tampered = env.conns
    env.run("consume")  # a clean slate: both connections synced once
    cipher = FieldCipher(base64.b64decode(env.key))
    odd = {
        "google": ["12'; DROP TABLE sync_jobs;--", "act_1/../../me?x=1&access_token=zz", "ünï", ""],
        "facebook": ["123 456", "1\n2", "%2F..%2F"],
        "tiktok": ["7001'; DELETE FROM sync_queue;--", "a/b?c=d&e"],
    }
    rows = []
    for platform, accounts in odd.items():
        for i, account in enumerate(accounts):
            access, _ = sandbox.app(platform).tokens.issue(ttl=None)
            rows.append(
                (f"odd-{platform}-{i}", f"org-odd-{platform}-{i}", platform, account, cipher.encrypt(access))
            )
    with env.store() as c:
        c.executemany(
            "INSERT INTO platform_connections (id, organization_id, platform, account_id, "
            "credentials_encrypted) VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        c.execute(
            "INSERT INTO platform_connections (id, organization_id, platform, account_id, settings, "
            "credentials_encrypted) VALUES ('bad-settings', 'org-s', 'google', '1000000005', '{not json', ?)",
            (cipher.encrypt(sandbox.google.tokens.issue(ttl=None)[0]),),
        )
        c.execute(
            "INSERT INTO platform_connections (id, organization_id, platform, account_id, "
            "credentials_encrypted) VALUES ('myspace', 'org-m', 'myspace', '1', ?)",
            (cipher.encrypt("x" * 20),),
        )
        c.execute(
            "INSERT INTO platform_connections (id, organization_id, platform, account_id) "
            "VALUES ('no-token', 'org-n', 'google', '1000000006')"
        )
        c.execute(
            "UPDATE platform_connections SET credentials_encrypted = 'not base64!!' WHERE id = ?", (tampered,)
        )
        c.execute("UPDATE platform_connections SET last_synced_at = NULL")

    out = env.run("schedule", "--json").stdout
    skipped = {s["connection_id"]: s["reason"] for s in json.loads(out)["skipped_reasons"]}
    assert skipped == {"bad-settings": skipped["bad-settings"], "myspace": "unknown platform 'myspace'"}
    assert "Expecting property name" in skipped["bad-settings"]
    refused(env, "sync", "myspace", "--now", code=2, says="unknown platform 'myspace'")
    env.run("sync", "bad-settings", "--now")  # an operator can still sync it: settings fall back to defaults
    proc = env.run("consume", "--json")
    assert "Traceback" not in proc.stderr

    with env.store() as c:
        jobs = {
            r["connection_id"]: r
            for r in c.execute(
                "SELECT j.connection_id, j.status, j.error_message, q.state FROM sync_jobs j "
                "JOIN sync_queue q ON q.job_id = j.id WHERE j.created_at = (SELECT max(created_at) FROM sync_jobs k "
                "WHERE k.connection_id = j.connection_id)"
            )
        }
        assert {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {
            "sync_jobs",
            "sync_queue",
            "platform_connections",
        }
    assert jobs[good]["status"] == "completed" and jobs["bad-settings"]["status"] == "completed"
    assert (jobs[tampered]["status"], jobs[tampered]["error_message"]) == (
        "failed",
        "credentials_encrypted is not valid base64",
    )
    assert (
        jobs["no-token"]["status"] == "failed"
        and "No access token found" in jobs["no-token"]["error_message"]
    )
    for i in range(len(odd["google"])):
        job = jobs[f"odd-google-{i}"]
        assert job["status"] == "failed" and "is not a Google Ads customer id" in job["error_message"], job
        assert "access_token=zz" not in job["error_message"]
    for i in range(len(odd["facebook"])):
        job = jobs[f"odd-facebook-{i}"]
        assert job["status"] == "failed" and "is not an ad account id" in job["error_message"], job
    for i, account in enumerate(odd["tiktok"]):
        assert jobs[f"odd-tiktok-{i}"]["status"] == "completed"
        # the odd id went over the wire as one parameter, exactly as stored
        assert any(
            r.query.get("advertiser_id") == account for r in sandbox.tiktok.requests_to("campaign/get")
        )
        assert env.warehouse_rows("tiktok_ads_campaigns", organization_id=f"org-odd-tiktok-{i}")
    assert all(j["state"] in ("done", "dead") for j in jobs.values())
    status = env.run("status", "--failing", "--json", check=False)
    assert status.returncode == 1
    rows = {r["connection_id"]: r for r in json.loads(status.stdout)}
    failing = {cid: r["latest_sync"]["error"] for cid, r in rows.items() if r["latest_sync"]}
    assert failing[tampered] == "credentials_encrypted is not valid base64"
    # rows `schedule` skips are failing too, with what is wrong (issue 16)
    assert (
        rows["myspace"]["problem"] == "unknown platform 'myspace'" and rows["myspace"]["latest_sync"] is None
    )
    assert rows["bad-settings"]["problem"].startswith(
        "settings column is not valid JSON (Expecting property name"
    )
    assert len(rows) == 4 + len(odd["google"]) + len(odd["facebook"])


# --- issue 16: one bad row or message must not take the others down -----------------------------


def test_a_malformed_queue_message_fails_alone_and_the_batch_runs(env, sandbox):
    """A message that cannot be decoded crashed every `consume` after the claim committed,
    burning an attempt of every job claimed with it; now it is dead-lettered alone."""
    third = seed(env, "google", "1000000003")
    env.run("schedule")
    (job,) = env.jobs(third)
    body = json.loads(queue_row(env, job["id"])["body"])
    body["sync_window"]["end"] = None
    with env.store() as c:
        c.execute("UPDATE sync_queue SET body = ? WHERE job_id = ?", (json.dumps(body), job["id"]))
    proc = env.run("consume", "--json")
    assert "Traceback" not in proc.stderr and "unexpected error" not in proc.stderr
    assert json.loads(proc.stdout) | {"records": 0} == {
        "jobs": 2,
        "completed": 2,
        "records": 0,
        "stopped_by": "empty",
    }
    reason = "malformed queue message: sync_window.end is missing or not a timestamp string (null)"
    assert (env.job(job["id"])["status"], env.job(job["id"])["error_message"]) == ("failed", reason)
    assert (queue_row(env, job["id"])["state"], queue_row(env, job["id"])["last_error"]) == ("dead", reason)
    for cid in env.conns:
        (done,) = env.jobs(cid)
        assert done["status"] == "completed" and queue_row(env, done["id"])["attempts"] == 1
    failing = env.run("status", "--failing", "--json", check=False)
    assert [r["connection_id"] for r in json.loads(failing.stdout)] == [third]
    retry = env.run("queue", "retry", "--all")  # says what it left and why
    assert "re-queued 0 job(s), skipped 1:" in retry.stdout
    assert f"job {job['id']}, connection {third}): its message is malformed (sync_window.end" in retry.stdout


def test_rows_retrying_cannot_fix_fail_at_once_with_a_clear_reason(env, sandbox):
    """An unknown platform on a queued job's connection and an unreadable expires_at were
    'unexpected errors', retried four times each; refresh-tokens crashed on the latter."""
    odd, garbled = env.conns
    with env.store() as c:
        c.execute("UPDATE platform_connections SET platform = 'myspace' WHERE id = ?", (odd,))
        c.execute(
            "UPDATE platform_connections SET expires_at = '0001-01-01T00:00:00+01:00' WHERE id = ?",
            (garbled,),
        )
    proc = env.run("consume", "--json")
    assert "unexpected error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["failed"] == 2
    (job,) = env.jobs(odd)
    assert job["error_message"] == "unknown platform 'myspace' (known: google, facebook, tiktok, stripe)"
    (job2,) = env.jobs(garbled)
    assert job2["error_message"].startswith(
        "expires_at column '0001-01-01T00:00:00+01:00' is not a timestamp"
    )
    for j in (job, job2):
        assert j["status"] == "failed"
        assert (queue_row(env, j["id"])["state"], queue_row(env, j["id"])["attempts"]) == ("dead", 1)
    refresh = env.run("refresh-tokens", "--json", check=False)
    assert refresh.returncode == 0 and "Traceback" not in refresh.stderr, refresh.stderr
    (failure,) = json.loads(refresh.stdout)["failures"]
    assert failure["connection_id"] == garbled and "is not a timestamp" in failure["reason"]


def test_a_binary_key_file_is_refused_with_a_clear_error(env, tmp_path):
    key_file = tmp_path / "raw.key"
    key_file.write_bytes(base64.b64decode(env.key))  # the 32 raw bytes instead of their base64
    if all(b < 128 for b in key_file.read_bytes()):
        key_file.write_bytes(b"\xff" + key_file.read_bytes()[1:])
    with env.store() as c:  # due for a refresh, so refresh-tokens needs the key
        c.execute(
            "UPDATE platform_connections SET expires_at = ?",
            (iso_z(datetime.now(UTC) + timedelta(seconds=60)),),
        )
    for args in (["consume"], ["refresh-tokens"], add_args()):
        refused(
            env,
            *args,
            code=3,
            says=f"ENCRYPTION_KEY_FILE {key_file} holds binary data, not the key's base64 text",
            ENCRYPTION_KEY="",
            ENCRYPTION_KEY_FILE=str(key_file),
            CLEARLIFT_ACCESS_TOKEN=TOKEN,
        )


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--expires-at", "0001-01-01T00:00:00+01:00"], "is not an ISO timestamp"),
        (["--expires-at", "1900-01-01T00:00:00Z"], "is out of range (1970 to 9000)"),
        (["--expires-at", "9999-12-31T23:59:59Z"], "is out of range (1970 to 9000)"),
        (
            ["--settings", '{"sync_interval_minutes": Infinity}'],
            "--settings: settings.sync_interval_minutes must be a finite",
        ),
        (
            ["--settings", '{"sync_interval_minutes": 1e10}'],
            "--settings: settings.sync_interval_minutes must be from 1",
        ),
        (
            ["--settings", '{"sync_interval_minutes": "three"}'],
            "settings.sync_interval_minutes must be a number",
        ),
        (
            ["--settings", '{"lookback_days": 10000000}'],
            "settings.lookback_days must be a whole number of days from 0",
        ),
        (
            ["--settings", '{"attribution_window_days": 100000000}'],
            "settings.attribution_window_days must be",
        ),
        (["--settings", '{"usage_throttle_pct": NaN}'], "settings column holds NaN or Infinity"),
    ],
)
def test_connections_add_refuses_values_out_of_range(env, flags, says):
    refused(env, *add_args(), *flags, code=2, says=says, CLEARLIFT_ACCESS_TOKEN=TOKEN)


def test_connections_add_stores_settings_the_api_worker_can_parse(env):
    env.run(
        *add_args(),
        "--settings",
        '{"sync_interval_minutes": 30, "lookback_days": 7.0, "x": [1]}',
        "--expires-at",
        "2030-01-01T00:00:00+02:00",
        CLEARLIFT_ACCESS_TOKEN=TOKEN,
    )
    row = env.connection("org-9-google-1000000009")
    assert json.loads(row["settings"], parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) == {
        "sync_interval_minutes": 30,
        "lookback_days": 7.0,
        "x": [1],
    }
    assert row["expires_at"] == "2029-12-31T22:00:00.000Z"


@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["consume", "--lease-seconds", "inf"],
            "--lease-seconds must be a finite number of seconds from 5 to 86400, not inf",
        ),
        (
            ["consume", "--lease-seconds", "1e9"],
            "--lease-seconds must be a finite number of seconds from 5 to 86400",
        ),
        (
            ["consume", "--max-seconds", "inf"],
            "--max-seconds must be a finite number of seconds of at least 1, not inf",
        ),
    ],
)
def test_absurd_durations_are_refused_before_anything_is_claimed(env, args, says):
    refused(env, *args, code=2, says=says)
    # Typer's own range check refuses these (its usage line, then one Error line)
    for bad in (["--lease-seconds", "-1"], ["--lease-seconds", "nan"], ["--max-seconds", "nan"]):
        before = store_snapshot(env.db)
        proc = env.run("consume", *bad, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (bad, proc.stderr)
        assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]) == 1, proc.stderr
        assert store_snapshot(env.db) == before


def test_sync_refuses_a_window_beyond_ten_years(env):
    for since in ("0001-01-01", "2000-01-01"):
        refused(env, "sync", env.conns[0], "--now", "--since", since, code=2, says="is more than 3660 days")


def _set_store_version(env: Env, version: int) -> None:
    with env.store() as c:
        c.execute("UPDATE clearlift_meta SET value = ? WHERE key = 'schema_version'", (str(version),))


def test_a_store_from_a_newer_clearlift_is_refused_by_every_command(env):
    """`init` said "up to date" and `consume` wrote to it; every command now refuses."""
    from clearlift_cli.store import SCHEMA_VERSION

    _set_store_version(env, SCHEMA_VERSION + 1)
    says = (
        f"is at schema version {SCHEMA_VERSION + 1}, newer than this clearlift understands ({SCHEMA_VERSION})"
    )
    for args in (
        ["init"],
        ["init", "--store-only"],
        ["schedule"],
        ["consume"],
        ["status"],
        ["status", env.conns[0]],
        ["refresh-tokens"],
        ["queue"],
        ["queue", "dead"],
        ["queue", "retry", "--all"],
        ["connections", "list"],
        ["connections", "pause", env.conns[0]],
        ["sync", env.conns[0], "--now"],
        add_args(),
    ):
        refused(env, *args, code=4, says=says, CLEARLIFT_ACCESS_TOKEN=TOKEN)
    assert env.sandbox.google.requests == []
    _set_store_version(env, SCHEMA_VERSION)
    assert "2 completed" in env.run("consume").stdout


def test_a_warehouse_from_a_newer_clearlift_is_refused_before_jobs_are_claimed(env):
    from clearlift_cli.warehouse.schema import META_TABLE, SCHEMA_VERSION

    wh = sqlite3.connect(env.warehouse_url[len("sqlite:///") :])
    with wh:
        wh.execute(f"UPDATE {META_TABLE} SET schema_version = ?", (SCHEMA_VERSION + 1,))
    wh.close()
    says = f"the warehouse schema is version {SCHEMA_VERSION + 1}, newer than this clearlift understands"
    for args in (["consume"], ["init"]):
        refused(env, *args, code=5, says=says)
    for cid in env.conns:
        (job,) = env.jobs(cid)
        assert (job["status"], queue_row(env, job["id"])["attempts"]) == ("pending", 0)
    assert env.sandbox.google.requests == []
