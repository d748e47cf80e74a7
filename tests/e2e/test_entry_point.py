"""The installed entry point, as cron runs it: a process of its own, configured by its
environment only, stdin /dev/null. Each refusal is exactly one ``error:`` line with no
traceback and the exit code of its class (1 not found, 2 usage, 3 configuration, 7
conflict; 4 store and 5 warehouse in tests/cli/test_bad_input.py, through the same
``cli.main``) and leaves the store as it was; without a token and without stdin `connections
add` refuses instead of prompting; a quiet run prints nothing at all; ``python -m
clearlift_cli`` works, and `sandbox serve` serves until SIGTERM."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.harness import CLEARLIFT, Env, refused, seed
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


def test_python_dash_m_and_sandbox_serve(tmp_path):
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "clearlift_cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "schedule" in proc.stdout
    serve = subprocess.Popen(
        [CLEARLIFT, "sandbox", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        lines = []
        while not lines or not lines[-1].startswith("# Ctrl-C"):
            lines.append(serve.stdout.readline().rstrip("\n"))
            assert len(lines) < 50, lines
        env = dict(line[len("export ") :].split("=", 1) for line in lines if line.startswith("export "))
        google_access = next(line.split()[2] for line in lines if line.startswith("# google:"))
        import requests

        url = f"{env['CLEARLIFT_GOOGLE_ADS_URL']}/v26/customers/1234567890/googleAds:searchStream"
        ok = requests.post(
            url,
            json={"query": "SELECT customer.id FROM customer"},
            timeout=10,
            headers={
                "Authorization": f"Bearer {google_access}",
                "developer-token": env["GOOGLE_ADS_DEVELOPER_TOKEN"],
            },
        )
        assert ok.status_code == 200 and ok.json()[0]["results"][0]["customer"]["id"] == "1234567890"
        bad = requests.post(
            url,
            json={"query": "SELECT customer.id FROM customer"},
            timeout=10,
            headers={"Authorization": "Bearer nope", "developer-token": env["GOOGLE_ADS_DEVELOPER_TOKEN"]},
        )
        assert bad.status_code == 401
    finally:
        serve.terminate()
        serve.wait(timeout=10)
    assert serve.returncode == 0
