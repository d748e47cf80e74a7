"""Secrets the command is given in its settings, in-process: store and warehouse URLs are
printed and quoted masked, even malformed ones; a key file or config file others can read
is warned about, once per run, never showing the key. (That no token, app secret or key
reaches a real process's output is checked end to end in tests/e2e/test_secrets.py.)"""

from __future__ import annotations

import pytest

from tests.helpers import KEY_B64, cli_env, invoke


def _with_password(url: str, password: str) -> str:
    """``url`` (trust auth: any password is accepted) with ``password`` in its authority."""
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.rsplit("@", 1) if "@" in rest else ("postgres", rest)
    return f"{scheme}://{userinfo.split(':', 1)[0]}:{password}@{host}"


def test_init_prints_the_store_and_warehouse_urls_masked(tmp_path, pg_schema_url):
    secret = "Hunter2Hunter2xyz"
    url = _with_password(pg_schema_url, secret)
    for variable in ("CLEARLIFT_DB", "CLEARLIFT_WAREHOUSE_URL"):
        proc = invoke(["-vv", "init"], cli_env(tmp_path, **{variable: url}))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert secret not in out and ":***@" in out, out
    # The store line names the PostgreSQL store, masked.
    proc = invoke(["init", "--store-only"], cli_env(tmp_path, CLEARLIFT_DB=url))
    assert proc.stdout.startswith("store postgresql://postgres:***@"), proc.stdout


@pytest.mark.parametrize("variable", ["CLEARLIFT_DB", "CLEARLIFT_WAREHOUSE_URL"])
@pytest.mark.parametrize(
    "password,host",
    [
        ("pa ss w0rd", "127.0.0.1:5432"),  # a space: libpq quotes the password back
        ("Sekr1tPw", "[::1"),  # a malformed IPv6 host: urlsplit raises
        ("pw@with/slash", "127.0.0.1:5432"),  # '@' and '/' in the password
        ("x", "[fe80::1%zz]:5432"),  # too short to register: masked all the same
    ],
)
def test_a_malformed_url_is_a_clear_error_that_quotes_neither_password_nor_url(
    tmp_path, variable, password, host
):
    url = f"postgresql://alice:{password}@{host}/test?connect_timeout=2"
    for args in (["init"], ["consume", "--max-seconds", "1"], ["status"]):
        proc = invoke(args, cli_env(tmp_path, **{variable: url}))
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out, out
        assert url not in out, out
        if len(password) > 1:
            assert password not in out, out
        # A command that needs the URL refuses it as configuration, naming it masked.
        if args == ["init"] or variable == "CLEARLIFT_DB" or args[0] == "consume":
            assert proc.returncode == 3, out
            assert "postgresql://alice:***@" in out, out


def test_a_key_file_or_config_file_others_can_read_is_warned_about_once(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY_B64 + "\n")
    config = tmp_path / "config.toml"
    config.write_text('clearlift_http_timeout = "30"\n')
    env = cli_env(
        tmp_path,
        ENCRYPTION_KEY=None,
        ENCRYPTION_KEY_FILE=str(key_file),
        CLEARLIFT_CONFIG=str(config),
        CLEARLIFT_ACCESS_TOKEN="token-token-token",
    )
    assert invoke(["init"], env).returncode == 0
    add = [
        "-q",
        "connections",
        "add",
        "--org",
        "org-1",
        "--platform",
        "google",
        "--account-id",
        "123",
        "--connected-by",
        "u-1",
    ]

    def warnings() -> list[str]:
        proc = invoke(add, env)
        assert proc.returncode == 0, proc.stderr
        return [line for line in proc.stderr.splitlines() if "can be read by other users" in line]

    key_file.chmod(0o644)
    config.chmod(0o640)
    lines = warnings()
    assert len(lines) == 2, lines  # one line each, even with -q
    assert any(str(key_file) in line and "0644" in line for line in lines)
    assert any(str(config) in line and "0640" in line for line in lines)
    assert KEY_B64 not in "\n".join(lines)

    key_file.chmod(0o600)
    config.chmod(0o600)
    assert warnings() == []
