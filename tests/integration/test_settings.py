"""Settings: flag > environment > TOML config > default, default paths, config and key errors.
Through the command: tests/cli/test_settings.py."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from clearlift_cli.errors import ConfigError, CryptoError, InvalidKey, MissingKey
from clearlift_cli.platforms.versions import DEFAULT_VERSIONS
from clearlift_cli.settings import (
    ENV_NAMES,
    KeyNotBase64,
    KeyWrongLength,
    resolve,
)
from tests.helpers import KEY_B64, KEY_BYTES


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# Several settings, one value per layer, so each layer is recognisable in the result.
LAYERED = {
    # name: (flag, env, config, default)
    "db": ("/srv/flag.db", "/srv/env.db", "/srv/config.db", None),
    "warehouse_url": ("sqlite:///flag.db", "sqlite:///env.db", "sqlite:///config.db", None),
    "google_client_id": ("flag-client", "env-client", "config-client", None),
    "facebook_url": (
        "http://127.0.0.1:1/flag",
        "http://127.0.0.1:1/env",
        "http://127.0.0.1:1/config",
        "https://graph.facebook.com",
    ),
    "facebook_api_version": ("v1.0", "v2.0", "v3.0", DEFAULT_VERSIONS["facebook"]),
    "http_timeout": (5.0, 7.0, 9.0, 60.0),
}


def _config_text() -> str:
    lines = []
    for name, (_, _, config, _) in LAYERED.items():
        key = ENV_NAMES[name].lower()
        lines.append(f"{key} = {config!r}" if isinstance(config, float) else f'{key} = "{config}"')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("layer", ["flag", "env", "config", "default"])
def test_precedence_flag_env_config_default(tmp_path, layer):
    home = tmp_path / "home"
    flags: dict[str, object] = {"home": str(home)}
    environ: dict[str, str] = {}
    if layer in ("flag", "env", "config"):
        write_config(home / "config.toml", _config_text())
    for name, (flag, env, _config, _default) in LAYERED.items():
        if layer == "flag":
            flags[name] = flag
        if layer in ("flag", "env"):
            environ[ENV_NAMES[name]] = str(env)

    s = resolve(flags=flags, environ=environ)

    index = ["flag", "env", "config", "default"].index(layer)
    for name, values in LAYERED.items():
        expected = values[index]
        if name == "warehouse_url" and layer == "default":
            expected = f"sqlite:///{home / 'warehouse.db'}"
        if name == "db" and layer == "default":
            expected = str(home / "clearlift.db")
        assert getattr(s, name) == expected, (name, layer)


def test_config_accepts_field_names_and_env_names(tmp_path):
    cfg = write_config(
        tmp_path / "c.toml",
        'google_client_id = "by-env-name"\ntiktok_app_id = "app-7"\n'
        'CLEARLIFT_STRIPE_URL = "http://127.0.0.1:9/"\n',
    )
    s = resolve(flags={"home": str(tmp_path), "config_path": str(cfg)}, environ={})
    assert s.google_client_id == "by-env-name"
    assert s.tiktok_app_id == "app-7"
    assert s.stripe_url == "http://127.0.0.1:9"  # trailing slash dropped: paths are appended


def test_empty_environment_value_counts_as_unset(tmp_path):
    write_config(tmp_path / "config.toml", 'google_client_id = "from-config"\n')
    s = resolve(flags={"home": str(tmp_path)}, environ={"GOOGLE_CLIENT_ID": ""})
    assert s.google_client_id == "from-config"


def test_config_path_from_environment_and_flag(tmp_path):
    env_cfg = write_config(tmp_path / "env.toml", 'google_client_id = "env-file"\n')
    flag_cfg = write_config(tmp_path / "flag.toml", 'google_client_id = "flag-file"\n')
    environ = {"CLEARLIFT_HOME": str(tmp_path / "h"), "CLEARLIFT_CONFIG": str(env_cfg)}
    assert resolve(environ=environ).google_client_id == "env-file"
    s = resolve(flags={"config_path": str(flag_cfg)}, environ=environ)
    assert s.google_client_id == "flag-file"
    assert s.config_path == flag_cfg


def test_explicit_config_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(flags={"home": str(tmp_path), "config_path": str(tmp_path / "nope.toml")}, environ={})
    # the default config file may be absent
    assert resolve(flags={"home": str(tmp_path)}, environ={}).google_client_id is None


def test_default_paths_follow_clearlift_home(tmp_path):
    s = resolve(environ={"CLEARLIFT_HOME": str(tmp_path / "state"), "XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert s.home == tmp_path / "state"
    assert s.db == str(tmp_path / "state" / "clearlift.db")
    assert s.warehouse_url == f"sqlite:///{tmp_path / 'state' / 'warehouse.db'}"
    assert s.config_path == tmp_path / "state" / "config.toml"


def test_default_paths_follow_xdg_data_home(tmp_path):
    s = resolve(environ={"XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "me")})
    assert s.home == tmp_path / "xdg" / "clearlift"
    assert s.db == str(tmp_path / "xdg" / "clearlift" / "clearlift.db")
    assert s.config_path == tmp_path / "xdg" / "clearlift" / "config.toml"


def test_default_paths_without_xdg_use_home_local_share(tmp_path):
    s = resolve(environ={"HOME": str(tmp_path / "me")})
    assert s.home == tmp_path / "me" / ".local" / "share" / "clearlift"
    assert (
        s.warehouse_url == f"sqlite:///{tmp_path / 'me' / '.local' / 'share' / 'clearlift' / 'warehouse.db'}"
    )


def test_db_flag_beats_home_default(tmp_path):
    s = resolve(flags={"db": str(tmp_path / "other.db")}, environ={"CLEARLIFT_HOME": str(tmp_path / "h")})
    assert s.db == str(tmp_path / "other.db")
    assert s.warehouse_url == f"sqlite:///{tmp_path / 'h' / 'warehouse.db'}"


def test_home_set_in_an_explicit_config_moves_the_defaults(tmp_path):
    cfg = write_config(tmp_path / "c.toml", f'clearlift_home = "{tmp_path / "from-config"}"\n')
    s = resolve(environ={"CLEARLIFT_CONFIG": str(cfg), "HOME": str(tmp_path)})
    assert s.home == tmp_path / "from-config"
    assert s.db == str(tmp_path / "from-config" / "clearlift.db")


def test_unknown_config_key_is_a_config_error(tmp_path):
    write_config(tmp_path / "config.toml", 'google_client_id = "x"\nwarehouse_uri = "typo"\n')
    with pytest.raises(ConfigError) as info:
        resolve(flags={"home": str(tmp_path)}, environ={})
    assert "warehouse_uri" in str(info.value)


def test_invalid_toml_is_a_config_error(tmp_path):
    write_config(tmp_path / "config.toml", 'google_client_id = "unterminated\n')
    with pytest.raises(ConfigError) as info:
        resolve(flags={"home": str(tmp_path)}, environ={})
    assert "not valid TOML" in str(info.value)
    assert str(tmp_path / "config.toml") in str(info.value)


def test_http_timeout_that_is_not_a_number_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="CLEARLIFT_HTTP_TIMEOUT"):
        resolve(flags={"home": str(tmp_path)}, environ={"CLEARLIFT_HTTP_TIMEOUT": "soon"})


# -- the encryption key -----------------------------------------------------------------


def test_key_from_environment_decodes_to_32_bytes(tmp_path):
    s = resolve(flags={"home": str(tmp_path)}, environ={"ENCRYPTION_KEY": KEY_B64})
    assert s.key_bytes() == KEY_BYTES


def test_key_from_key_file(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY_B64 + "\n")  # a trailing newline, as editors leave it
    s = resolve(flags={"home": str(tmp_path)}, environ={"ENCRYPTION_KEY_FILE": str(key_file)})
    assert s.key_bytes() == KEY_BYTES


def test_key_flag_beats_key_in_environment(tmp_path):
    other = base64.b64encode(os.urandom(32)).decode()
    s = resolve(flags={"home": str(tmp_path), "encryption_key": other}, environ={"ENCRYPTION_KEY": KEY_B64})
    assert s.key_bytes() == base64.b64decode(other)


def _key_error(tmp_path, environ):
    s = resolve(flags={"home": str(tmp_path)}, environ=environ)
    with pytest.raises(CryptoError) as info:
        s.key_bytes()
    return info.value


def test_key_problems_are_distinct_errors_without_the_key(tmp_path):
    not_base64 = "this key is not base64 at all!!"
    short = base64.b64encode(b"sixteen byte key").decode()
    unreadable = tmp_path / "missing-key-file"

    missing = _key_error(tmp_path, {})
    missing_file = _key_error(tmp_path, {"ENCRYPTION_KEY_FILE": str(unreadable)})
    bad_text = _key_error(tmp_path, {"ENCRYPTION_KEY": not_base64})
    bad_length = _key_error(tmp_path, {"ENCRYPTION_KEY": short})

    assert type(missing) is MissingKey and type(missing_file) is MissingKey
    assert type(bad_text) is KeyNotBase64
    assert type(bad_length) is KeyWrongLength
    assert isinstance(bad_text, InvalidKey) and isinstance(bad_length, InvalidKey)
    assert len({type(missing), type(bad_text), type(bad_length)}) == 3
    for exc in (missing, missing_file, bad_text, bad_length):
        assert isinstance(exc, ConfigError) and exc.exit_code == 3
    assert "ENCRYPTION_KEY" in str(missing)
    assert str(unreadable) in str(missing_file)
    assert "base64" in str(bad_text)
    assert "32 bytes" in str(bad_length) and "16" in str(bad_length)
    for exc, secret in ((bad_text, not_base64), (bad_length, short)):
        assert secret not in str(exc) and secret not in repr(exc)
        # no chained exception whose traceback could print the key
        assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def test_settings_repr_hides_secrets(tmp_path):
    s = resolve(
        flags={
            "home": str(tmp_path),
            "google_client_secret": "gcs-very-secret-1",
            "facebook_app_secret": "fb-very-secret-2",
        },
        environ={"ENCRYPTION_KEY": KEY_B64},
    )
    text = repr(s)
    for secret in (KEY_B64, "gcs-very-secret-1", "fb-very-secret-2"):
        assert secret not in text
    assert "google_ads_url" in text  # the repr is still useful


# -- store and warehouse URLs: an unknown scheme is a configuration error, never a path --------
