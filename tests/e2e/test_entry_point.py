"""The installed entry point, as cron runs it: a process of its own, configured by its
environment only, stdin /dev/null. Each refusal is exactly one ``error:`` line with no
traceback and the exit code of its class (1 not found, 2 usage, 3 configuration, 7
conflict; 4 store and 5 warehouse in tests/cli/test_bad_input.py, through the same
``cli.main``) and leaves the store as it was; without a token and without stdin `connections
add` refuses instead of prompting; a quiet run prints nothing at all. (``python -m clearlift_cli``
and `sandbox serve`: tests/e2e/test_sandbox_serve.py.)"""

from __future__ import annotations

import json

import pytest

from tests.harness import Env, refused, seed
from tests.helpers import cli_env, home_db, new_store, one_line_error, query, run_cli


@pytest.fixture
def queued_env(tmp_path, sandbox):
    """A store with two Google connections whose jobs are queued."""
    e = Env(home=tmp_path / "home", warehouse_url=f"sqlite:///{tmp_path}/warehouse.db", sandbox=sandbox)
    e.run("init")
    e.conns = [seed(e, "google", f"100000000{i}") for i in range(2)]
    e.run("schedule")
    return e


def test_bad_configuration_is_exit_3_and_bad_flags_exit_2(queued_env, tmp_path):
    env = queued_env
    broken = tmp_path / "broken.toml"
    broken.write_text('clearlift_warehouse_url = "sqlite:///x.db\n')
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('warehouse = "sqlite:///x.db"\n')
    cases = [
        ({"CLEARLIFT_CONFIG": str(broken)}, [], 3, "is not valid TOML"),
        ({"CLEARLIFT_CONFIG": str(unknown)}, [], 3, "unknown setting 'warehouse'"),
        ({"CLEARLIFT_CONFIG": str(tmp_path / "absent.toml")}, [], 3, "does not exist"),
        ({"CLEARLIFT_HTTP_TIMEOUT": "soon"}, [], 3, "CLEARLIFT_HTTP_TIMEOUT must be a number"),
        ({}, ["--log-format", "xml"], 2, "--log-format must be text or json"),
        ({"CLEARLIFT_LOG_FORMAT": "yaml"}, [], 2, "--log-format must be text or json"),
    ]
    commands = (["consume"], ["schedule"], ["status"])
    for n, (more, flags, code, says) in enumerate(cases):
        refused(env, *flags, *commands[n % 3], code=code, says=says, **more)
    refused(env, "sync", env.conns[0], "--now", "--since", "2025-02-30", code=2, says="is not a date")
    for args in (["consume", "--lease-seconds", "1"], ["consume", "--bogus"], ["nosuchcommand"]):
        proc = env.run(*args, check=False)  # Click's own usage errors: its usage line, then one Error
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]) == 1, proc.stderr
    refused(env, "sync", "no-such-connection", "--now", code=1, says="no connection 'no-such-connection'")
    refused(env, "sync", env.conns[0], "--now", code=7, says="already has a pending or running job")


def test_no_token_anywhere_is_a_clear_error_and_writes_nothing(tmp_path):
    """Under cron stdin is /dev/null: `connections add` without a token cannot prompt."""
    db = home_db(tmp_path)
    new_store(db).close()
    result = run_cli(
        [
            "connections",
            "add",
            "--org",
            "org-1",
            "--platform",
            "google",
            "--account-id",
            "123-456-7890",
            "--connected-by",
            "user-1",
        ],
        cli_env(tmp_path),
    )
    assert result.returncode == 2
    assert "CLEARLIFT_ACCESS_TOKEN" in one_line_error(result.stderr)
    assert query(db, "SELECT * FROM platform_connections") == []


@pytest.mark.sqlite_warehouse
def test_quiet_cron_runs_print_nothing_and_json_logs_parse(env):
    access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
    env.add("org-1", "google", "1234567890", access, refresh)
    proc = env.run("-q", "schedule")
    assert proc.stdout == "" and proc.stderr == ""
    proc = env.run("--log-format", "json", "consume")
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert any("completed" in line["message"] for line in lines)
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert access not in proc.stderr and refresh not in proc.stderr
