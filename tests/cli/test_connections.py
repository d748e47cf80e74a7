"""`clearlift connections ...` and the help texts, through the command in-process. (No token
and no stdin, as under cron: tests/e2e/test_entry_point.py.)"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clearlift_cli import cli
from clearlift_cli.errors import ExitCode
from tests.helpers import KEY_BYTES, cli_env, home_db, invoke, new_store, one_line_error, query, raw

TOKEN = "ya29.first-access-token-0001"
REFRESH = "1//refresh-token-0001"


def worker_decrypt(stored: str) -> str:
    """Decrypt the way the API worker does, with the raw primitive."""
    raw = base64.b64decode(stored, validate=True)
    return AESGCM(KEY_BYTES).decrypt(raw[:12], raw[12:], None).decode("utf-8")


@pytest.fixture
def env(tmp_path):
    env = cli_env(tmp_path)
    new_store(home_db(tmp_path)).close()  # `clearlift init` itself is tested in test_store
    return env


def add(env, *extra, token=TOKEN, refresh=None, account="123-456-7890", platform="google", stdin_text=None):
    env = dict(env)
    if token is not None:
        env["CLEARLIFT_ACCESS_TOKEN"] = token
    if refresh is not None:
        env["CLEARLIFT_REFRESH_TOKEN"] = refresh
    args = [
        "connections",
        "add",
        "--org",
        "org-1",
        "--platform",
        platform,
        "--account-id",
        account,
        "--connected-by",
        "user-1",
        *extra,
    ]
    return invoke(args, env, stdin_text=stdin_text)


def home_db_from(env):
    return Path(env["CLEARLIFT_HOME"]) / "clearlift.db"


def rows(env):
    return query(home_db_from(env), "SELECT * FROM platform_connections ORDER BY id")


def test_add_with_token_from_environment(env):
    result = add(
        env,
        "--account-name",
        "Main Ads",
        "--refresh-token-env",
        "MY_REFRESH",
        "--expires-at",
        "2030-01-01T00:00:00.000Z",
        "--settings",
        '{"sync_interval_minutes": 30}',
        "--scopes",
        "adwords",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "added connection org-1-google-123-456-7890"
    (row,) = rows(env)
    assert row["id"] == "org-1-google-123-456-7890"
    assert (row["organization_id"], row["platform"], row["account_id"]) == ("org-1", "google", "123-456-7890")
    assert row["account_name"] == "Main Ads" and row["connected_by"] == "user-1"
    assert row["is_active"] == 1 and row["sync_status"] == "pending"
    assert json.loads(row["settings"]) == {"sync_interval_minutes": 30}
    assert row["expires_at"] == "2030-01-01T00:00:00.000Z" and row["scopes"] == "adwords"
    assert TOKEN not in row["credentials_encrypted"]
    assert worker_decrypt(row["credentials_encrypted"]) == TOKEN
    assert row["refresh_token_encrypted"] is None  # MY_REFRESH was not set
    assert TOKEN not in result.stdout + result.stderr


def test_refresh_token_from_a_named_environment_variable(env):
    env = {**env, "MY_ACCESS": "tok-named-env-123", "MY_REFRESH": "ref-named-env-456"}
    result = add(env, "--access-token-env", "MY_ACCESS", "--refresh-token-env", "MY_REFRESH", token=None)
    assert result.returncode == 0, result.stderr
    (row,) = rows(env)
    assert worker_decrypt(row["credentials_encrypted"]) == "tok-named-env-123"
    assert worker_decrypt(row["refresh_token_encrypted"]) == "ref-named-env-456"


def test_add_twice_updates_rather_than_duplicates(env):
    assert add(env, "--account-name", "First", refresh=REFRESH).returncode == 0
    (first,) = rows(env)
    second_token = "ya29.second-access-token-0002"
    result = add(
        env, "--settings", '{"lookback_days": 5}', token=second_token, refresh="1//second-refresh-0002"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "updated connection org-1-google-123-456-7890"
    (second,) = rows(env)
    assert second["id"] == first["id"]
    assert second["credentials_encrypted"] != first["credentials_encrypted"]
    assert worker_decrypt(second["credentials_encrypted"]) == second_token
    assert worker_decrypt(second["refresh_token_encrypted"]) == "1//second-refresh-0002"
    assert second["account_name"] == "First"  # not given again: kept
    assert second["connected_at"] == first["connected_at"]
    assert json.loads(second["settings"]) == {"lookback_days": 5}


def test_reconnect_reactivates_and_clears_reauth(env):
    assert add(env).returncode == 0
    c = raw(home_db_from(env))
    with c:
        c.execute(
            "UPDATE platform_connections SET is_active = 0, needs_reauth = 1, reauth_reason = 'revoked', "
            "consecutive_auth_failures = 3, sync_status = 'failed', sync_error = 'revoked'"
        )
    c.close()
    assert add(env, token="ya29.after-reconnect-03").returncode == 0
    (row,) = rows(env)
    assert (
        row["is_active"],
        row["needs_reauth"],
        row["reauth_reason"],
        row["consecutive_auth_failures"],
    ) == (1, 0, None, 0)
    assert row["sync_status"] == "pending" and row["sync_error"] is None


def test_tokens_from_stdin(env):
    result = add(
        env, "--tokens-stdin", token=None, stdin_text="stdin-access-token-9\nstdin-refresh-token-9\n"
    )
    assert result.returncode == 0, result.stderr
    (row,) = rows(env)
    assert worker_decrypt(row["credentials_encrypted"]) == "stdin-access-token-9"
    assert worker_decrypt(row["refresh_token_encrypted"]) == "stdin-refresh-token-9"


@pytest.mark.parametrize(
    "extra, account, platform, expected",
    [
        ((), "123", "myspace", "unknown platform"),
        (("--settings", "{not json"), "123", "google", "not valid JSON"),
        (("--settings", "[1, 2]"), "123", "google", "JSON object"),
        (("--settings", '"text"'), "123", "google", "JSON object"),
        ((), "12 34", "google", "account id"),
        ((), "act/../../x", "facebook", "account id"),
        ((), "1;DROP TABLE x", "google", "account id"),
        (("--expires-at", "next tuesday"), "123", "google", "--expires-at"),
    ],
)
def test_bad_input_exits_non_zero_and_writes_nothing(env, extra, account, platform, expected):
    result = add(env, *extra, account=account, platform=platform)
    assert result.returncode == 2, result.stderr
    line = one_line_error(result.stderr)
    assert expected in line
    assert TOKEN not in result.stderr + result.stdout
    assert rows(env) == []


def test_bad_input_does_not_touch_an_existing_row(env):
    assert add(env).returncode == 0
    (before,) = rows(env)
    assert add(env, "--settings", "{broken", token="ya29.never-stored-token").returncode == 2
    (after,) = rows(env)
    assert dict(after) == dict(before)


def test_list_json_shows_no_secrets(env):
    assert add(env, "--account-name", "Main", refresh=REFRESH).returncode == 0
    assert add(env, account="act_1", platform="facebook", token="EAAB-facebook-token-1").returncode == 0
    stored = [r["credentials_encrypted"] for r in rows(env)] + [
        r["refresh_token_encrypted"] for r in rows(env) if r["refresh_token_encrypted"]
    ]
    result = invoke(["connections", "list", "--json"], env)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [c["id"] for c in listed] == ["org-1-facebook-act_1", "org-1-google-123-456-7890"]
    google = listed[1]
    assert google["is_active"] is True and google["account_name"] == "Main" and google["platform"] == "google"
    for entry in listed:
        assert not any("encrypted" in key or "token" in key for key in entry)
    for secret in [TOKEN, REFRESH, "EAAB-facebook-token-1", *stored]:
        assert secret not in result.stdout

    table = invoke(["connections", "list"], env)
    assert table.returncode == 0 and "org-1-facebook-act_1" in table.stdout
    for secret in [TOKEN, REFRESH, *stored]:
        assert secret not in table.stdout


def test_list_filters(env):
    assert add(env).returncode == 0
    assert add(env, account="act_1", platform="facebook").returncode == 0
    result = invoke(["connections", "list", "--json", "--platform", "facebook"], env)
    assert [c["id"] for c in json.loads(result.stdout)] == ["org-1-facebook-act_1"]


def test_pause_and_resume_toggle_is_active(env):
    assert add(env).returncode == 0
    cid = "org-1-google-123-456-7890"
    paused = invoke(["connections", "pause", cid], env)
    assert paused.returncode == 0, paused.stderr
    assert rows(env)[0]["is_active"] == 0
    listed = json.loads(invoke(["connections", "list", "--json"], env).stdout)
    assert listed[0]["is_active"] is False
    resumed = invoke(["connections", "resume", cid], env)
    assert resumed.returncode == 0, resumed.stderr
    assert rows(env)[0]["is_active"] == 1


@pytest.mark.parametrize("verb", ["pause", "resume"])
def test_unknown_connection_id_is_not_found(env, verb):
    assert add(env).returncode == 0
    result = invoke(["connections", verb, "org-1-google-999"], env)
    assert result.returncode == ExitCode.NOT_FOUND != 0
    assert "org-1-google-999" in one_line_error(result.stderr)
    assert rows(env)[0]["is_active"] == 1


def test_add_without_encryption_key_exits_3_and_writes_nothing(env):
    env = {k: v for k, v in env.items() if k != "ENCRYPTION_KEY"}
    result = add(env)
    assert result.returncode == 3
    assert "ENCRYPTION_KEY" in one_line_error(result.stderr)
    assert rows(env) == []


# -- help -------------------------------------------------------------------------------


def test_top_level_help_lists_the_commands(tmp_path):
    result = invoke(["--help"], cli_env(tmp_path))
    assert result.returncode == 0
    listed = set(re.findall(r"^\s{2}([a-z][a-z-]+)\s{2,}", result.stdout, re.M))
    assert {"init", "schedule", "consume", "refresh-tokens", "status", "sync", "connections"} <= listed


def _commands(group, prefix: tuple[str, ...] = ()):
    # typer vendors its own click: walk the command tree by shape, not by class
    for name, command in group.commands.items():
        path = (*prefix, name)
        yield path, command
        if hasattr(command, "commands"):
            yield from _commands(command, path)


def _is_option(param) -> bool:
    return getattr(param, "param_type_name", None) == "option"


def _with_env_vars():
    root = typer.main.get_command(cli.app)
    found = []
    for path, command in _commands(root):
        envvars = [(p.opts[0], p.envvar) for p in command.params if _is_option(p) and p.envvar]
        if envvars:
            found.append((path, envvars))
    return root, found


def test_the_shared_options_declare_their_env_vars():
    # guards the introspection below: if this finds nothing, the next test checks nothing
    _, found = _with_env_vars()
    by_command = {" ".join(path): dict(opts) for path, opts in found}
    assert by_command["schedule"]["--db"] == "CLEARLIFT_DB"
    for name in (
        "init",
        "schedule",
        "consume",
        "refresh-tokens",
        "status",
        "sync",
        "connections add",
        "connections list",
        "connections pause",
        "connections resume",
    ):
        assert by_command[name]["--db"] == "CLEARLIFT_DB", name
        assert by_command[name]["--home"] == "CLEARLIFT_HOME", name
        assert by_command[name]["--config"] == "CLEARLIFT_CONFIG", name
    for name in ("init", "consume", "sync"):
        assert by_command[name]["--warehouse-url"] == "CLEARLIFT_WAREHOUSE_URL", name


def test_every_option_shows_its_env_var_in_help(tmp_path):
    root, found = _with_env_vars()
    env = cli_env(tmp_path)
    top = invoke(["--help"], env).stdout
    for opt, var in ((p.opts[0], p.envvar) for p in root.params if _is_option(p) and p.envvar):
        assert f"env var: {var}" in " ".join(top.split()), opt
    for path, options in found:
        result = invoke([*path, "--help"], env)
        assert result.returncode == 0, (path, result.stderr)
        text = " ".join(result.stdout.split())  # undo wrapping
        for opt, var in options:
            line = re.search(re.escape(opt) + r"[^\[]*\[([^\]]*)\]", text)
            assert line and f"env var: {var}" in line.group(1), (path, opt, var)
