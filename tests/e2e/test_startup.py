"""Start-up: what a command imports is what it uses (``status`` over 10k connections must
answer in half a second, and a third of that was pydantic, imported by Typer to convert
options that needed no converting); options are still converted and refused as before;
lists in JSON keep their layout, one compact item per line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import date
from decimal import Decimal

import pytest

from clearlift_cli import cli
from tests.helpers import cli_env, home_db, insert_connections, new_store, run_cli

HEAVY = ("pydantic", "rich", "requests", "psycopg", "cryptography", "tenacity")


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


def test_options_are_converted_and_refused_as_before(env):
    bad = run_cli(["sandbox", "serve", "--port", "http"], env)
    assert bad.returncode == 2 and "Invalid value for '--port'" in bad.stderr and "integer" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = run_cli(["sandbox", "serve", "--port", "1.5"], env)
    assert bad.returncode == 2 and "Invalid value for '--port'" in bad.stderr
    bad = run_cli(["sandbox", "serve", "--token-ttl", "soon", "--port", "0"], env)
    assert bad.returncode == 2 and "Invalid value for '--token-ttl'" in bad.stderr
    # converted ("8701" for an int, "2.5" for a float), then refused by the command itself
    wrong_host = run_cli(
        ["sandbox", "serve", "--host", "0.0.0.0", "--port", "8701", "--token-ttl", "2.5"], env
    )
    assert wrong_host.returncode == 2 and wrong_host.stderr == "error: the sandbox binds to loopback only\n"
    bounded = run_cli(["queue", "dead", "--limit", "0"], env)
    assert bounded.returncode == 2 and "Invalid value for '--limit'" in bounded.stderr
    assert run_cli(["queue", "dead", "--limit", "3", "--json"], env).stdout == "[]\n"
    assert run_cli(["-vv", "status", "--org", "org-1", "--json"], env).returncode == 1  # the failing one


def test_json_lists_print_one_compact_item_per_line(capsys):
    items = [
        {"id": "a", "name": "Café ☕", "nested": {"n": [1, 2.5, None, True]}, "day": date(2025, 10, 10)},
        {"money": Decimal("1.10"), "quote": 'say "hi"\n'},
        [],
        "text",
    ]
    cli._print_json(items)
    cli._print_json([])
    out = capsys.readouterr().out
    each = ",\n".join("  " + json.dumps(i, default=str, allow_nan=False) for i in items)
    assert out == f"[\n{each}\n]\n[]\n"
    assert json.loads(out[: -len("[]\n")]) == json.loads(json.dumps(items, default=str))
    with pytest.raises(ValueError):
        cli._print_json([{"x": math.nan}])
    with pytest.raises(ValueError):  # a cycle is refused, not looped over
        cycle: dict = {}
        cycle["self"] = cycle
        cli._print_json([cycle])
