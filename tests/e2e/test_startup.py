"""Start-up: what a command imports is what it uses (``status`` over 10k connections must
answer in half a second, and a third of that was pydantic, imported by Typer to convert
options that needed no converting). Only a fresh process shows what gets imported. Options
still converted and refused as before: tests/cli/test_options.py; JSON lists:
tests/unit/test_json_output.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import cli_env, home_db, insert_connections, new_store

HEAVY = ("pydantic", "rich", "urllib3", "psycopg", "cryptography")


def imported(args: list[str], env: dict[str, str]) -> set[str]:
    """The heavy packages ``clearlift ARGS`` imports (run as the console script runs it)."""
    code = (
        "import json, sys\n"
        "from clearlift_cli.cli import main\n"
        "args, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "sys.argv = ['clearlift', *args]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('\\nIMPORTED ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args), json.dumps(HEAVY)],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    return set(json.loads(proc.stderr.rsplit("IMPORTED ", 1)[1]))


@pytest.fixture
def env(tmp_path):
    env = cli_env(tmp_path)
    store = new_store(home_db(tmp_path))
    insert_connections(
        store.engine.path,
        [
            {"platform": "google", "account_id": "1", "last_synced_at": "2025-10-10T19:00:00.000Z"},
            {"platform": "facebook", "account_id": "2", "sync_status": "failed"},
        ],
    )
    store.close()
    return env


def test_status_imports_only_what_it_renders_with(env):
    assert imported(["status", "--json"], env) == set()
    assert imported(["status", "org-1-google-1", "--json"], env) == set()
    assert imported(["status"], env) == {"rich"}  # the table
    assert imported(["-v", "--log-format", "json", "status", "--org", "org-1", "--json"], env) == set()
