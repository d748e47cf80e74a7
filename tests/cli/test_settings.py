"""Settings through the command, in-process: invalid TOML and a bad key exit 3 (never showing
the key or a token); an unknown store or warehouse URL scheme exits 3 naming the schemes it
takes, before anything is created (no `d1:` directory, no store); a D1 store without its
Cloudflare token exits 3 naming the setting."""

from __future__ import annotations

import pytest

from tests.helpers import cli_env, invoke, one_line_error


def test_invalid_toml_through_the_command_exits_3(tmp_path):
    env = cli_env(tmp_path)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.toml").write_text("this is = = not toml\n")
    result = invoke(["schedule"], env)
    assert result.returncode == 3, result.stderr
    assert "not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_key_through_the_command_exits_3_without_the_key(tmp_path):
    env = cli_env(tmp_path, ENCRYPTION_KEY="c2hvcnQta2V5LXZhbHVl", CLEARLIFT_ACCESS_TOKEN="tok-abcdefgh-123")
    assert invoke(["init", "--store-only"], env).returncode == 0
    result = invoke(
        [
            "connections",
            "add",
            "--org",
            "org-1",
            "--platform",
            "google",
            "--account-id",
            "123",
            "--connected-by",
            "u1",
        ],
        env,
    )
    assert result.returncode == 3, result.stderr
    assert "32 bytes" in result.stderr
    assert "c2hvcnQta2V5LXZhbHVl" not in result.stderr + result.stdout
    assert "tok-abcdefgh-123" not in result.stderr + result.stdout


UNKNOWN_STORE_URLS = [
    "redis://:s3cret-store-pw@cache.internal:6379/0",
    "mysql://clearlift:s3cret-store-pw@db.internal:3306/clearlift",
    "http://clearlift:s3cret-store-pw@example.com/store",
    "sqlite://relative.db",  # two slashes: not sqlite:///path
]


@pytest.mark.parametrize("url", UNKNOWN_STORE_URLS)
@pytest.mark.parametrize("command", [["init"], ["schedule"], ["status"], ["queue"]])
def test_unknown_store_url_scheme_exits_3_and_creates_nothing(tmp_path, url, command):

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = cli_env(tmp_path, CLEARLIFT_DB=url)
    result = invoke(command, env, cwd=cwd)
    assert result.returncode == 3, result.stderr
    line = one_line_error(result.stderr)
    assert "unsupported store URL" in line and "sqlite:///path" in line and "postgresql://" in line
    assert "s3cret-store-pw" not in result.stderr + result.stdout
    assert list(cwd.iterdir()) == [] and not (tmp_path / "home").exists()  # no `d1:` directory, no store


@pytest.mark.parametrize("url", ["d1://0123456789abcdef/db", "mysql://wh:s3cret-wh-pw@db/wh", "warehouse.db"])
def test_unknown_warehouse_url_scheme_exits_3_before_init_creates_anything(tmp_path, url):
    env = cli_env(tmp_path, CLEARLIFT_WAREHOUSE_URL=url)
    result = invoke(["init"], env)
    assert result.returncode == 3, result.stderr
    assert "unsupported warehouse URL" in one_line_error(result.stderr)
    assert "s3cret-wh-pw" not in result.stderr + result.stdout
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("command", [["init"], ["schedule"], ["status"]])
def test_a_d1_store_without_a_cloudflare_token_exits_3_naming_the_setting_and_creates_nothing(
    tmp_path, command
):

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = cli_env(tmp_path, CLEARLIFT_DB="d1://0123456789abcdef/6e0f5a3c-db")
    env.pop("CLOUDFLARE_API_TOKEN", None)
    result = invoke(command, env, cwd=cwd)
    assert result.returncode == 3, result.stderr
    assert "CLOUDFLARE_API_TOKEN" in one_line_error(result.stderr)
    assert list(cwd.iterdir()) == [] and not (tmp_path / "home" / "control.db").exists()
