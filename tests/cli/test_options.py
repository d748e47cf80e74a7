"""Options are converted and refused as before the start-up work (plain options parse without
pydantic; anything else goes through Typer's own conversion, with its errors), the command
in-process."""

from __future__ import annotations

import pytest

from tests.helpers import cli_env, home_db, insert_connections, invoke, new_store


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


def test_options_are_converted_and_refused_as_before(env):
    bad = invoke(["sandbox", "serve", "--port", "http"], env)
    assert bad.returncode == 2 and "Invalid value for '--port'" in bad.stderr and "integer" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = invoke(["sandbox", "serve", "--port", "1.5"], env)
    assert bad.returncode == 2 and "Invalid value for '--port'" in bad.stderr
    bad = invoke(["sandbox", "serve", "--token-ttl", "soon", "--port", "0"], env)
    assert bad.returncode == 2 and "Invalid value for '--token-ttl'" in bad.stderr
    # converted ("8701" for an int, "2.5" for a float), then refused by the command itself
    wrong_host = invoke(
        ["sandbox", "serve", "--host", "0.0.0.0", "--port", "8701", "--token-ttl", "2.5"], env
    )
    assert wrong_host.returncode == 2 and wrong_host.stderr == "error: the sandbox binds to loopback only\n"
    bounded = invoke(["queue", "dead", "--limit", "0"], env)
    assert bounded.returncode == 2 and "Invalid value for '--limit'" in bounded.stderr
    assert invoke(["queue", "dead", "--limit", "3", "--json"], env).stdout == "[]\n"
    assert invoke(["-vv", "status", "--org", "org-1", "--json"], env).returncode == 1  # the failing one
