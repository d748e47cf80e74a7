"""The D1 REST client against the sandbox D1 over real HTTP on loopback (clock frozen)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
import requests

from clearlift_cli.d1 import D1Client, Statement, in_list, multi_row_insert
from clearlift_cli.errors import (
    ConfigError,
    D1AuthFailed,
    D1LimitExceeded,
    D1QueryError,
    D1RateLimited,
    D1Unavailable,
    ExitCode,
    TransientError,
)
from clearlift_cli.sandbox.d1 import D1App, envelope
from clearlift_cli.sandbox.server import SandboxServer
from clearlift_cli.settings import resolve
from clearlift_cli.timeutil import FrozenClock

QUERY = r"/query$"


@pytest.fixture
def app():
    d1 = D1App()
    yield d1
    d1.close()


@pytest.fixture
def server(app):
    with SandboxServer(app) as srv:
        yield srv


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))


def client_for(app: D1App, server: SandboxServer, clock: FrozenClock, **kw) -> D1Client:
    kw.setdefault("token", app.token)
    kw.setdefault("timeout", 5)
    return D1Client(
        account_id=kw.pop("account_id", app.account_id),
        database_id=kw.pop("database_id", app.database_id),
        base_url=app.env(server)["CLEARLIFT_D1_URL"],
        clock=clock,
        **kw,
    )


@pytest.fixture
def d1(app, server, clock) -> D1Client:
    client = client_for(app, server, clock)
    client.query("CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, n INTEGER)")
    return client


def rows_in(app: D1App, sql: str) -> list[tuple]:
    with app.connect() as conn:
        return conn.execute(sql).fetchall()


# --- queries and batches -------------------------------------------------------------------


def test_query_returns_rows_as_dicts_with_meta(d1, app):
    written = d1.query("INSERT INTO jobs (id, status, n) VALUES (?, ?, ?)", ["j1", "pending", 7])
    assert written == [] and written.meta.changes == 1 and written.meta.rows_written == 1
    assert written.meta.changed_db and written.meta.size_after and written.meta.size_after > 0

    rows = d1.query("SELECT id, status, n FROM jobs WHERE status = ?", ["pending"])
    assert rows == [{"id": "j1", "status": "pending", "n": 7}]
    assert rows.meta.rows_read >= 1 and rows.meta.changes == 0 and not rows.meta.changed_db
    assert rows_in(app, "SELECT id, n FROM jobs") == [("j1", 7)]  # really in the SQLite file


def test_batch_is_one_transaction_a_failing_statement_rolls_back_the_rest(d1, app):
    d1.query("INSERT INTO jobs (id, status) VALUES ('j1', 'pending')")
    ok = d1.batch(
        [
            Statement("UPDATE jobs SET status = ? WHERE id = ? AND status = ?", ("running", "j1", "pending")),
            Statement("INSERT INTO jobs (id, status) VALUES (?, ?)", ("j2", "pending")),
            Statement("SELECT id FROM jobs ORDER BY id"),
        ]
    )
    assert [r.meta.changes for r in ok] == [1, 1, 0] and ok[2] == [{"id": "j1"}, {"id": "j2"}]
    assert len(app.requests_to(QUERY)) == 3  # CREATE, INSERT, and the whole batch in one

    with pytest.raises(D1QueryError) as caught:
        d1.batch(
            [
                Statement("UPDATE jobs SET status = 'completed' WHERE id = 'j1'"),
                Statement("INSERT INTO jobs (id, status) VALUES ('j3', 'pending')"),
                Statement("INSERT INTO jobs (id, status) VALUES ('j2', 'pending')"),  # duplicate key
            ]
        )
    assert caught.value.code == 7500 and caught.value.is_constraint
    assert "UNIQUE constraint failed: jobs.id" in str(caught.value)
    assert rows_in(app, "SELECT id, status FROM jobs ORDER BY id") == [("j1", "running"), ("j2", "pending")]


def test_sql_errors_are_permanent_with_d1s_code_and_message(d1, app):
    for sql, expected in (
        ("SELECTZ 1", 'near "SELECTZ": syntax error: SQLITE_ERROR'),
        ("BEGIN TRANSACTION", "not authorized: SQLITE_AUTH"),
        ("INSERT INTO jobs (id) VALUES ('x')", "NOT NULL constraint failed: jobs.status"),
    ):
        with pytest.raises(D1QueryError) as caught:
            d1.query(sql)
        assert not isinstance(caught.value, TransientError) and caught.value.exit_code == ExitCode.STORE
        assert expected in str(caught.value) and caught.value.code == 7500
    assert d1.stats.retries == 0 and len(app.requests_to(QUERY)) == 4  # never retried


# --- D1's bound-parameter and size limits --------------------------------------------------


def test_multi_row_insert_splits_at_100_parameters_and_runs_as_one_batch(d1, app):
    rows = [(f"j{i:03}", "pending", i) for i in range(250)]
    statements = multi_row_insert(
        "INSERT INTO jobs (id, status, n) VALUES", rows, tail="ON CONFLICT (id) DO NOTHING"
    )
    assert [len(s.params) for s in statements] == [99, 99, 99, 99, 99, 99, 99, 57]
    results = d1.batch(statements)
    assert sum(r.meta.changes for r in results) == 250
    assert len(app.requests_to(QUERY)) == 2  # CREATE + one batch
    assert rows_in(app, "SELECT count(*), sum(n) FROM jobs") == [(250, sum(range(250)))]

    ids = [f"j{i:03}" for i in range(0, 250, 2)] + ["nope"]
    found = [
        row["id"]
        for stmt in in_list("SELECT id FROM jobs WHERE status = ? AND id IN ({in})", ids, before=["pending"])
        for row in d1.query(stmt.sql, stmt.params)
    ]
    assert sorted(found) == ids[:-1]


def test_limits_are_refused_before_sending_and_by_the_sandbox_in_d1s_words(d1, app, server):
    sent = len(app.requests)
    with pytest.raises(D1LimitExceeded, match="101 parameters; D1 allows at most 100"):
        d1.query("SELECT " + ", ".join("?" * 101), list(range(101)))
    with pytest.raises(D1LimitExceeded, match="100012 bytes long"):
        d1.query("SELECT 1 -- " + "x" * 100_000)
    with pytest.raises(D1LimitExceeded, match="beyond 2\\*\\*53"):
        d1.query("SELECT ?", [2**53])
    with pytest.raises(D1LimitExceeded, match="use smaller batches"):
        d1.batch([Statement("INSERT INTO jobs (id, status) VALUES (?, 'x')", ("y" * 60_000,))] * 20)
    assert len(app.requests) == sent  # nothing went out

    # the sandbox itself answers a broken limit as D1 does
    url = (
        app.env(server)["CLEARLIFT_D1_URL"]
        + f"/accounts/{app.account_id}/d1/database/{app.database_id}/query"
    )
    raw = requests.post(
        url,
        json={"sql": "SELECT " + ", ".join("?" * 101), "params": list(range(101))},
        headers={"Authorization": f"Bearer {app.token}"},
        timeout=5,
    )
    assert raw.status_code == 400 and raw.headers["cf-d1"] == "err=7500"
    assert raw.json() == envelope(errors=[{"code": 7500, "message": "too many SQL variables: SQLITE_ERROR"}])


# --- rate limits and transient failures ----------------------------------------------------


def test_429_waits_the_retry_after_seconds_on_the_frozen_clock(d1, app, clock):
    app.rate_limit_next(2, retry_after=7)
    started = clock.now()
    assert d1.query("SELECT 1 AS one") == [{"one": 1}]
    assert clock.slept == [7.0, 7.0] and (clock.now() - started).total_seconds() == 14
    assert d1.stats.rate_limited == 2 and d1.stats.retries == 2


def test_429_asking_for_longer_than_we_wait_defers_instead(d1, app, clock):
    app.rate_limit_next(1, retry_after=300)  # Cloudflare blocks a token for 5 minutes
    sent = len(app.requests)
    with pytest.raises(D1RateLimited) as caught:
        d1.query("SELECT 1")
    assert caught.value.retry_after == 300 and caught.value.scope == "app"
    assert clock.slept == [] and len(app.requests) == sent + 1


def test_429_without_retry_after_still_waits(d1, app, clock):
    app.rate_limit_next(1, retry_after=None)
    d1.query("SELECT 1")
    assert len(clock.slept) == 1 and clock.slept[0] >= 1.0


@pytest.mark.parametrize("fault", ["overload_next", "internal_error_next"])
def test_503_overloaded_and_500_are_retried_with_backoff_then_succeed(d1, app, clock, fault):
    getattr(app, fault)(2)
    sent = len(app.requests)
    assert d1.query("SELECT 2 AS two") == [{"two": 2}]
    assert len(app.requests) == sent + 3
    assert len(clock.slept) == 2 and 0.4 <= clock.slept[0] <= 0.6 and 0.8 <= clock.slept[1] <= 1.2


def test_retries_are_bounded_then_a_clear_transient_error(d1, app, clock):
    app.overload_next(10)
    sent = len(app.requests)
    with pytest.raises(D1Unavailable) as caught:
        d1.query("SELECT 1")
    exc = caught.value
    assert isinstance(exc, TransientError) and exc.exit_code == ExitCode.STORE
    assert "D1 DB is overloaded" in str(exc) and "gave up after 4 attempts" in str(exc)
    assert not exc.maybe_applied  # D1 says an overloaded database queued nothing
    assert len(app.requests) == sent + 4 and len(clock.slept) == 3


def test_an_answer_lost_after_the_write_ran_is_retried_only_when_idempotent(d1, app, clock):
    app.drop_next(1)
    with pytest.raises(D1Unavailable) as caught:
        d1.query("INSERT INTO jobs (id, status) VALUES ('j1', 'pending')", idempotent=False)
    assert caught.value.maybe_applied and clock.slept == []
    assert rows_in(app, "SELECT id FROM jobs") == [("j1",)]  # it did run: resending would double it

    app.drop_next(1)
    d1.query("INSERT INTO jobs (id, status) VALUES ('j2', 'pending') ON CONFLICT (id) DO NOTHING")
    assert len(clock.slept) == 1
    assert rows_in(app, "SELECT id FROM jobs ORDER BY id") == [("j1",), ("j2",)]


def test_a_slow_answer_times_out_and_is_retried(app, server, clock):
    client = client_for(app, server, clock, timeout=0.3, attempts=2)
    app.faults.add("latency", path=QUERY, seconds=0.6)
    assert client.query("SELECT 3 AS three") == [{"three": 3}]
    assert client.stats.requests == 2 and len(clock.slept) == 1
    app.faults.add("latency", path=QUERY, seconds=0.6)
    with pytest.raises(D1Unavailable, match="no answer within 0.3s") as caught:
        client.query("SELECT 3", idempotent=False)
    assert caught.value.maybe_applied  # it may have run: the answer is what was late


def test_an_unreachable_d1_is_transient_and_was_never_applied(app, clock):
    dead = D1Client(
        account_id=app.account_id,
        database_id=app.database_id,
        token=app.token,
        base_url="http://127.0.0.1:9/client/v4",
        clock=clock,
        timeout=2,
        attempts=2,
    )
    with pytest.raises(D1Unavailable) as caught:
        dead.query("INSERT INTO jobs (id, status) VALUES ('j1', 'pending')", idempotent=False)
    assert not caught.value.maybe_applied and "connection failed" in str(caught.value)
    assert dead.stats.requests == 2


def test_a_redirect_is_refused_and_an_oversized_answer_is_not_read_whole(app, server, clock):
    client = client_for(app, server, clock, max_response_bytes=1024 * 1024)
    app.faults.add("redirect", path=QUERY, location="http://127.0.0.1:9/elsewhere")
    with pytest.raises(ConfigError, match="HTTP 302 redirect refused: check CLEARLIFT_D1_URL"):
        client.query("SELECT 1")
    app.faults.add("oversize", path=QUERY, size=8 * 1024 * 1024)
    with pytest.raises(D1LimitExceeded, match="passed 1 MiB"):
        client.query("SELECT 1")
    assert app.oversize_bytes_sent < 8 * 1024 * 1024 and client.stats.requests == 2 and clock.slept == []


# --- the token ---------------------------------------------------------------------------


def _auth_failure(app, server, clock, caplog, **kw) -> D1AuthFailed:
    caplog.set_level(logging.DEBUG, logger="clearlift")
    client = client_for(app, server, clock, **kw)
    with pytest.raises(D1AuthFailed) as caught:
        client.query("SELECT 1")
    assert client.stats.requests == 1 and clock.slept == []  # a refused token is not retried
    assert client._token not in repr(client)
    return caught.value


def test_401_is_a_config_error_naming_the_setting_never_the_token(app, server, clock, caplog):
    app.faults.add(
        "status",
        path=QUERY,
        status=401,
        body=envelope(errors=[{"code": 10000, "message": "Authentication error"}]),
    )
    exc = _auth_failure(app, server, clock, caplog)
    assert isinstance(exc, ConfigError) and exc.exit_code == ExitCode.CONFIG
    assert "CLOUDFLARE_API_TOKEN" in str(exc) and "HTTP 401" in str(exc) and "D1 Edit" in str(exc)
    for text in (str(exc), repr(exc), caplog.text):
        assert app.token not in text


def test_an_unknown_token_or_another_account_is_refused_the_same_way(app, server, clock, caplog):
    wrong = "not-the-sandbox-token-0123456789abcdef"
    exc = _auth_failure(app, server, clock, caplog, token=wrong)
    assert "HTTP 403, code 10000: Authentication error" in str(exc)
    for text in (str(exc), repr(exc), caplog.text):
        assert wrong not in text
    other = _auth_failure(app, server, FrozenClock(clock.now()), caplog, account_id="0" * 32)
    assert "code 7403" in str(other)

    missing = client_for(app, server, clock, database_id="00000000-0000-0000-0000-000000000000")
    with pytest.raises(ConfigError, match="was not found .*HTTP 404"):
        missing.query("SELECT 1")


def test_the_token_comes_from_the_environment_or_its_file_and_its_absence_is_clear(tmp_path, app):
    token_file = tmp_path / "cf-token"
    token_file.write_text("file-token-abcdefgh-0123\n")
    settings = resolve(
        flags={"home": str(tmp_path)},
        environ={"CLOUDFLARE_API_TOKEN_FILE": str(token_file)},
        read_config=False,
    )
    client = D1Client.from_settings(settings, app.store_url)
    assert client._token == "file-token-abcdefgh-0123" and client.url.startswith(
        "https://api.cloudflare.com/client/v4/"
    )
    assert "file-token" not in repr(settings) + repr(client)
    assert settings.control_db == str(tmp_path / "control.db")

    bare = resolve(flags={"home": str(tmp_path)}, environ={}, read_config=False)
    with pytest.raises(D1AuthFailed, match="CLOUDFLARE_API_TOKEN is not set"):
        D1Client.from_settings(bare, app.store_url)
    with pytest.raises(ConfigError, match="d1://ACCOUNT_ID/DATABASE_ID"):
        D1Client.from_settings(settings, "d1://only-an-account")


# --- counters ----------------------------------------------------------------------------


def test_counters_add_up_requests_statements_and_rows(d1, app):
    before = d1.stats.snapshot()
    d1.batch(
        multi_row_insert("INSERT INTO jobs (id, status) VALUES", [(f"j{i}", "pending") for i in range(120)])
    )
    got = d1.query("SELECT id FROM jobs")
    app.overload_next(1)
    d1.query("UPDATE jobs SET status = 'running' WHERE id IN ('j1', 'j2')")
    after = d1.stats.snapshot()
    assert after["requests"] - before["requests"] == 4  # batch, select, 503 + its retry
    assert after["retries"] - before["retries"] == 1
    assert after["statements"] - before["statements"] == 3 + 1 + 1  # 120 rows of 2: 50 a statement
    assert after["rows_written"] - before["rows_written"] == 120 + 2
    assert after["rows_read"] - before["rows_read"] == 120 + len(got) + 2  # the sandbox's count
    # the sandbox adds up what it reported (the 503 ran nothing)
    assert (app.rows_read, app.rows_written) == (after["rows_read"], after["rows_written"])
