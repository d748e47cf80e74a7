"""`clearlift schedule`, `status` and `sync --now [--wait]` through the command, in-process: broken
rows are reported and the others scheduled (exit 0), status shows every connection and what
schedule skips, dates and refusals of `sync --now`, and a `sync --wait` that cannot run
leaves nothing queued. Real SQLite files; rows written with plain SQL as the API worker
writes them."""

from __future__ import annotations

import json

import pytest

from clearlift_cli.errors import ExitCode
from clearlift_cli.models import SyncJobMessage
from tests.helpers import (
    BROKEN_CONNECTIONS,
    KEY_BYTES,
    cli_env,
    home_db,
    insert_connections,
    invoke,
    jobs_by_connection,
    message_for,
    new_store,
    one_line_error,
    query,
)


def test_schedule_reports_broken_rows_and_exits_0(tmp_path):
    env = cli_env(tmp_path)
    db = home_db(tmp_path)
    new_store(db).close()
    good = insert_connections(
        db,
        [
            {"account_id": "g1", "last_synced_at": None},
            {"account_id": "g2", "last_synced_at": "2020-01-01 00:00:00"},
        ],
    )
    broken = insert_connections(db, BROKEN_CONNECTIONS)
    result = invoke(["schedule"], env)
    assert result.returncode == 0, result.stderr
    assert "2 enqueued" in result.stdout and f"{len(BROKEN_CONNECTIONS)} skipped" in result.stdout
    for cid in broken:  # each said once (it used to be twice: a log line and a print)
        assert (result.stdout + result.stderr).count(f"skipped {cid}:") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert set(jobs_by_connection(db)) == set(good)
    quiet = invoke(["-q", "schedule"], env)  # broken rows are still worth a mail under -q
    assert quiet.returncode == 0 and quiet.stdout == ""
    assert sorted(ln.split(" skipped ")[1].split(":")[0] for ln in quiet.stderr.splitlines()) == sorted(
        broken
    )

    as_json = invoke(["schedule", "--json"], env)
    assert as_json.returncode == 0
    summary = json.loads(as_json.stdout)
    assert summary["enqueued"] == 0  # the good ones have pending jobs now
    assert {s["connection_id"] for s in summary["skipped_reasons"]} == set(broken)


def test_status_shows_what_schedule_skips_and_every_other_connection(tmp_path):
    """`status`, `status CONN`, `status --json` and `status --failing` all work with broken
    rows among the others, and say what is wrong with each (they crashed on the first)."""
    env = cli_env(tmp_path)
    db = home_db(tmp_path)
    new_store(db).close()
    good = insert_connections(
        db,
        [
            {"account_id": "g1", "last_synced_at": None},
            {"account_id": "g2", "last_synced_at": "2020-01-01 00:00:00"},
        ],
    )
    broken = insert_connections(db, BROKEN_CONNECTIONS)
    table = invoke(["status"], env)
    assert table.returncode == 1 and "Traceback" not in table.stderr, table.stderr
    n = len(good) + len(broken)
    assert table.stdout.startswith(f"{n} connection(s): {n} active (")
    assert f"; {len(broken)} failing" in table.stdout.splitlines()[0]
    rows = {r["connection_id"]: r for r in json.loads(invoke(["status", "--json"], env).stdout)}
    assert set(rows) == set(good) | set(broken)
    assert all(rows[cid]["problem"] is None for cid in good)
    assert rows[broken[7]]["problem"] == "settings.sync_interval_minutes must be a finite number, not inf"
    assert "settings column is not valid JSON" in rows[broken[1]]["problem"]
    failing = invoke(["status", "--failing", "--json"], env)
    assert failing.returncode == 1
    assert {r["connection_id"] for r in json.loads(failing.stdout)} == set(broken)
    for cid in broken:
        one = invoke(["status", cid], env)
        assert one.returncode == 0 and "not scheduled:" in one.stdout, (cid, one.stdout, one.stderr)
        assert invoke(["status", cid, "--json"], env).returncode == 0
    assert "not scheduled" not in invoke(["status", good[0]], env).stdout


def test_schedule_fails_when_the_store_is_unusable(tmp_path):
    result = invoke(["schedule"], cli_env(tmp_path))  # never initialised
    assert result.returncode == ExitCode.STORE
    assert "clearlift init" in one_line_error(result.stderr)


@pytest.fixture
def cli_store(tmp_path):
    env = cli_env(tmp_path)
    db = home_db(tmp_path)
    new_store(db).close()
    ids = insert_connections(
        db,
        [
            {"account_id": "a", "last_synced_at": None},
            {"account_id": "p", "last_synced_at": None, "is_active": 0},
        ],
    )
    return env, db, ids


def test_sync_now_enqueues_a_backfill(cli_store):
    env, db, (active, _) = cli_store
    result = invoke(["sync", active, "--now", "--since", "2025-01-01", "--until", "2025-01-31"], env)
    assert result.returncode == 0, result.stderr
    (job,) = jobs_by_connection(db)[active]
    assert job["id"] in result.stdout
    body, _ = message_for(db, job["id"])
    assert body["sync_window"] == {"start": "2025-01-01T00:00:00.000Z", "end": "2025-02-01T00:00:00.000Z"}
    assert body["job_type"] == "full" and body["metadata"]["priority"] == "high"
    SyncJobMessage.loads(query(db, "SELECT body FROM sync_queue")[0][0])  # parses as the contract's message


@pytest.mark.parametrize(
    "args, code, expected",
    [
        (["--since", "2025-02-30"], ExitCode.USAGE, "--since"),
        (["--until", "01/02/2025"], ExitCode.USAGE, "--until"),
        (["--since", "2025-03-01", "--until", "2025-02-01"], ExitCode.USAGE, "after"),
        (["--until", "2999-01-01"], ExitCode.USAGE, "future"),
        (["--since", "0001-01-01"], ExitCode.USAGE, "--since 0001-01-01 is more than 3660 days"),
        (["--since", "1990-01-01", "--until", "2020-01-01"], ExitCode.USAGE, "is more than 3660 days"),
    ],
)
def test_sync_now_validates_dates(cli_store, args, code, expected):
    env, db, (active, _) = cli_store
    result = invoke(["sync", active, "--now", *args], env)
    assert result.returncode == code, result.stderr
    assert expected in one_line_error(result.stderr)
    assert query(db, "SELECT * FROM sync_jobs") == []


def test_sync_now_refuses_unknown_paused_and_duplicate(cli_store):
    env, db, (active, paused) = cli_store
    unknown = invoke(["sync", "org-1-google-nope", "--now"], env)
    assert unknown.returncode == ExitCode.NOT_FOUND != 0
    assert "org-1-google-nope" in one_line_error(unknown.stderr)
    stopped = invoke(["sync", paused, "--now"], env)
    assert stopped.returncode != 0 and "paused" in one_line_error(stopped.stderr)
    without_now = invoke(["sync", active], env)
    assert without_now.returncode == ExitCode.USAGE
    assert query(db, "SELECT * FROM sync_jobs") == []
    assert invoke(["sync", active, "--now"], env).returncode == 0
    again = invoke(["sync", active, "--now"], env)
    assert again.returncode == ExitCode.CONFLICT
    assert len(query(db, "SELECT * FROM sync_jobs")) == 1


@pytest.mark.parametrize(
    "key", [None, "not base64 at all!", "c2hvcnQ="], ids=["missing", "malformed", "short"]
)
def test_sync_wait_with_an_unusable_key_queues_nothing(tmp_path, key):
    env = cli_env(tmp_path, ENCRYPTION_KEY=key)
    db = home_db(tmp_path)
    new_store(db).close()
    (active,) = insert_connections(db, [{"account_id": "a", "last_synced_at": None}])
    result = invoke(["sync", active, "--now", "--wait"], env)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert "ENCRYPTION_KEY" in one_line_error(result.stderr)
    assert query(db, "SELECT * FROM sync_jobs") == [] and query(db, "SELECT * FROM sync_queue") == []


def _sealed(key: bytes, text: str) -> str:
    from clearlift_cli.crypto import FieldCipher

    return FieldCipher(key).encrypt(text)


def test_sync_wait_with_the_wrong_key_queues_nothing(tmp_path):
    import os

    other = os.urandom(32)  # the tokens were sealed with another key than ENCRYPTION_KEY
    env = cli_env(tmp_path)
    db = home_db(tmp_path)
    new_store(db).close()
    active, _ = insert_connections(
        db,
        [
            {"account_id": a, "last_synced_at": None, "credentials_encrypted": _sealed(other, "token-" + a)}
            for a in ("a", "b")
        ],
    )
    result = invoke(["sync", active, "--now", "--wait"], env)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert "nothing was enqueued" in one_line_error(result.stderr)
    assert query(db, "SELECT * FROM sync_jobs") == [] and query(db, "SELECT * FROM sync_queue") == []


def test_sync_wait_withdraws_its_job_when_the_run_cannot_start(tmp_path):
    # The key opens a stored token, so the check before enqueueing passes; but it opens
    # none of the queued connections' tokens, so the run refuses to start: the job that
    # `sync --wait` enqueued is taken back, the jobs already queued stay.
    import os

    other = os.urandom(32)
    env = cli_env(tmp_path)
    db = home_db(tmp_path)
    new_store(db).close()
    mine, b, c, _ = insert_connections(
        db,
        [
            {"account_id": "mine", "last_synced_at": None, "credentials_encrypted": _sealed(other, "t-mine")},
            {"account_id": "b", "last_synced_at": None, "credentials_encrypted": _sealed(other, "t-b")},
            {"account_id": "c", "last_synced_at": None, "credentials_encrypted": _sealed(other, "t-c")},
            {"account_id": "d", "last_synced_at": None, "credentials_encrypted": _sealed(KEY_BYTES, "t-d")},
        ],
    )
    for cid in (b, c):
        assert invoke(["sync", cid, "--now"], env).returncode == 0
    result = invoke(["sync", mine, "--now", "--wait"], env)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert "withdrawn: nothing is left queued" in result.stderr
    assert {r["connection_id"] for r in query(db, "SELECT * FROM sync_jobs")} == {b, c}
    assert {r["connection_id"] for r in query(db, "SELECT * FROM sync_queue")} == {b, c}
