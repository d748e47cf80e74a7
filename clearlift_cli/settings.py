"""Settings, resolved once into an immutable object.

Precedence: command-line flag > environment variable > TOML config file > default.
This is the only module that reads ``os.environ``; everything else receives a
``Settings``. The config file uses the environment names in lower case
(``clearlift_warehouse_url = "..."``, ``google_client_id = "..."``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, SupportsFloat

from clearlift_cli import redact
from clearlift_cli.errors import ConfigError, D1AuthFailed, KeyNotBase64, KeyWrongLength, MissingKey
from clearlift_cli.pgconnect import (
    DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_STATEMENT_TIMEOUT,
    PgLimits,
)
from clearlift_cli.platforms import registry

log = logging.getLogger("clearlift.settings")

# The settings each platform declares in its registry entry, by role (the order of
# ENV_NAMES, and so of `config show` / `doctor`): the apps' credentials, the API base URLs,
# the API versions.
_PLATFORM_APP = [s for p in registry.platforms() for s in p.app]
_PLATFORM_URLS = [s for p in registry.platforms() for s in p.urls]
_PLATFORM_VERSIONS = [
    (p.api.setting, p.api.default) for p in registry.platforms() if p.api is not None and p.api.setting
]

# name of the dataclass field -> environment variable
ENV_NAMES: dict[str, str] = {
    "home": "CLEARLIFT_HOME",
    "db": "CLEARLIFT_DB",
    "warehouse_url": "CLEARLIFT_WAREHOUSE_URL",
    "warehouse_read_policy": "CLEARLIFT_WAREHOUSE_READ_POLICY",
    "config_path": "CLEARLIFT_CONFIG",
    "encryption_key": "ENCRYPTION_KEY",
    "encryption_key_file": "ENCRYPTION_KEY_FILE",
    **{s.field: s.env for s in _PLATFORM_APP},
    **{s.field: s.env for s in _PLATFORM_URLS},
    **{s.field: s.env for s, _ in _PLATFORM_VERSIONS},
    "http_timeout": "CLEARLIFT_HTTP_TIMEOUT",
    "cloudflare_api_token": "CLOUDFLARE_API_TOKEN",
    "cloudflare_api_token_file": "CLOUDFLARE_API_TOKEN_FILE",
    "d1_url": "CLEARLIFT_D1_URL",
    "control_db": "CLEARLIFT_CONTROL_DB",
    "pg_statement_timeout": "CLEARLIFT_PG_STATEMENT_TIMEOUT",
    "pg_lock_timeout": "CLEARLIFT_PG_LOCK_TIMEOUT",
    "pg_idle_timeout": "CLEARLIFT_PG_IDLE_TIMEOUT",
}

# seconds-valued settings: field -> default (PostgreSQL limits: see pgconnect.py)
_SECONDS: dict[str, float] = {
    "http_timeout": 60.0,
    "pg_statement_timeout": DEFAULT_STATEMENT_TIMEOUT,
    "pg_lock_timeout": DEFAULT_LOCK_TIMEOUT,
    "pg_idle_timeout": DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT,
}

_SECRET_FIELDS = {
    "encryption_key",
    *(s.field for s in _PLATFORM_APP + _PLATFORM_URLS if s.secret),
    "cloudflare_api_token",
}

# URL settings: stored without a trailing slash
_URL_FIELDS = (*(s.field for s in _PLATFORM_URLS), "d1_url")

_DEFAULTS: dict[str, str] = {
    **{s.field: s.default for s in _PLATFORM_URLS if s.default is not None},
    **{s.field: default for s, default in _PLATFORM_VERSIONS},
    "d1_url": "https://api.cloudflare.com/client/v4",
}


@dataclass(frozen=True)
class Settings:
    home: Path
    db: str
    warehouse_url: str
    config_path: Path
    # A SQL condition: `init` gives the tables it creates a read policy for Supabase's
    # anon / authenticated roles, e.g. organization_id = (auth.jwt() ->> 'org_id').
    warehouse_read_policy: str | None = None
    encryption_key: str | None = field(default=None, repr=False)
    encryption_key_file: str | None = None
    google_client_id: str | None = None
    google_client_secret: str | None = field(default=None, repr=False)
    google_ads_developer_token: str | None = field(default=None, repr=False)
    google_ads_login_customer_id: str | None = None
    facebook_app_id: str | None = None
    facebook_app_secret: str | None = field(default=None, repr=False)
    tiktok_app_id: str | None = None
    tiktok_client_secret: str | None = field(default=None, repr=False)
    google_ads_url: str = _DEFAULTS["google_ads_url"]
    google_oauth_url: str = _DEFAULTS["google_oauth_url"]
    facebook_url: str = _DEFAULTS["facebook_url"]
    tiktok_url: str = _DEFAULTS["tiktok_url"]
    stripe_url: str = _DEFAULTS["stripe_url"]
    google_ads_api_version: str = _DEFAULTS["google_ads_api_version"]
    facebook_api_version: str = _DEFAULTS["facebook_api_version"]
    http_timeout: float = 60.0
    cloudflare_api_token: str | None = field(default=None, repr=False)
    cloudflare_api_token_file: str | None = None
    d1_url: str = _DEFAULTS["d1_url"]
    # clearlift's own tables when CLEARLIFT_DB is a live D1 (resolve() fills the default)
    control_db: str = ""
    # Where each setting came from: flag, env, config file or default (see ``sources``).
    origin: dict = field(default_factory=dict, repr=False, compare=False)
    pg_statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT
    pg_lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    pg_idle_timeout: float = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT

    def pg_limits(self) -> PgLimits:
        """The bounds every PostgreSQL connection gets (store and warehouse)."""
        return PgLimits(self.pg_statement_timeout, self.pg_lock_timeout, self.pg_idle_timeout)

    def key_bytes(self) -> bytes:
        """The 32-byte encryption key, or a clear error saying what is wrong with it."""
        raw = self.encryption_key
        if raw is None and self.encryption_key_file:
            try:
                data = Path(self.encryption_key_file).read_bytes()
                warn_if_others_can_read(Path(self.encryption_key_file), "ENCRYPTION_KEY_FILE")
            except OSError as exc:
                raise MissingKey(
                    f"ENCRYPTION_KEY_FILE {self.encryption_key_file} cannot be read ({exc.strerror})"
                ) from None
            try:
                raw = data.decode("ascii").strip()
            except UnicodeDecodeError:
                # e.g. the 32 raw key bytes: the API worker's key is their base64 text
                raise KeyNotBase64(
                    f"ENCRYPTION_KEY_FILE {self.encryption_key_file} holds binary data, not the "
                    "key's base64 text (base64 of 32 bytes, e.g. `base64 -w0 raw.key`)"
                ) from None
        if not raw:
            raise MissingKey(
                "ENCRYPTION_KEY is not set: set it (or ENCRYPTION_KEY_FILE) to the API "
                "worker's key, base64 of 32 bytes"
            )
        return decode_key(raw)

    def cloudflare_token(self) -> str:
        """The Cloudflare API token for a ``d1://`` store (from CLOUDFLARE_API_TOKEN or the
        file CLOUDFLARE_API_TOKEN_FILE names), registered as a secret; a clear error otherwise."""
        token = self.cloudflare_api_token
        if not token and self.cloudflare_api_token_file:
            try:
                token = Path(self.cloudflare_api_token_file).read_text().strip()
            except OSError as exc:
                raise D1AuthFailed(
                    f"CLOUDFLARE_API_TOKEN_FILE {self.cloudflare_api_token_file} cannot be read "
                    f"({exc.strerror})"
                ) from None
            except UnicodeDecodeError:
                raise D1AuthFailed(
                    f"CLOUDFLARE_API_TOKEN_FILE {self.cloudflare_api_token_file} holds binary data, "
                    "not an API token"
                ) from None
        if not token:
            raise D1AuthFailed(
                "CLOUDFLARE_API_TOKEN is not set: set it (or CLOUDFLARE_API_TOKEN_FILE) to an "
                "API token with D1 Edit permission on the database's account"
            )
        redact.register(token)
        return token

    def with_overrides(self, **changes: object) -> Settings:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return Settings(**data)


def decode_key(raw: str) -> bytes:
    """The 32 key bytes of base64 ``raw``; KeyNotBase64 / KeyWrongLength otherwise."""
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyNotBase64("ENCRYPTION_KEY is not valid base64") from None
    if len(key) != 32:
        raise KeyWrongLength(f"ENCRYPTION_KEY must decode to 32 bytes, it decodes to {len(key)}")
    return key


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_if_others_can_read(path: Path, what: str) -> None:
    """One warning per file and process when ``path`` (a key file, the config file) can be
    read by its group or by everyone: it holds secrets, like the store (created 0600)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not mode & (stat.S_IRGRP | stat.S_IROTH):
        return
    with _warned_lock:
        if str(path) in _warned:
            return
        _warned.add(str(path))
    log.warning(
        "%s %s can be read by other users (mode %s): chmod 600 it",
        what,
        path,
        oct(stat.S_IMODE(mode))[2:].zfill(4),
    )


def _read_config(path: Path, explicit: bool) -> dict[str, object]:
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} does not exist")
        return {}
    import tomllib  # here: most runs have no config file (start-up)

    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    warn_if_others_can_read(path, "config file")
    out: dict[str, object] = {}
    by_env = {env.lower(): name for name, env in ENV_NAMES.items()}
    for key, value in data.items():
        name = by_env.get(key.lower()) or (key.lower() if key.lower() in ENV_NAMES else None)
        if name is None:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        out[name] = value
    return out


def resolve(
    flags: Mapping[str, object | None] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    read_config: bool = True,
) -> Settings:
    """Resolve every setting once: flag > environment > config file > default.
    ``read_config=False`` ignores any config file (the demo must not pick up production)."""
    src = _Sources(
        {k: v for k, v in (flags or {}).items() if v is not None and v != ""},
        os.environ if environ is None else environ,
    )
    home, home_given = _home(src)
    config_raw = src.early("config_path")
    config_path = Path(str(config_raw)).expanduser() if config_raw else home / "config.toml"
    src.origin["config_path"] = src.source_of("config_path") if config_raw else "default"
    config = _read_config(config_path, explicit=bool(config_raw)) if read_config else {}
    if "home" in config and not home_given:
        home = Path(str(config["home"])).expanduser()
        src.origin["home"] = "config file"
    # one entry per Settings field, of that field's type once checked below
    values: dict[str, Any] = {"home": home, "config_path": config_path, **_layered(src, config)}
    for name, default in (
        ("db", str(home / "clearlift.db")),
        ("warehouse_url", f"sqlite:///{home / 'warehouse.db'}"),
        ("control_db", str(home / "control.db")),
    ):
        if name not in values:
            values[name] = default
            src.origin[name] = "default"
    _check(values)
    values["origin"] = src.origin
    return Settings(**values)


@dataclass
class _Sources:
    """What ``resolve`` reads before the config file: the flags given (empty ones dropped)
    and the environment; ``origin`` collects where each setting came from."""

    flags: dict[str, object]
    env: Mapping[str, str]
    origin: dict[str, str] = field(default_factory=dict)

    def from_env(self, name: str) -> str | None:
        value = self.env.get(ENV_NAMES[name])
        return value if value else None

    def early(self, name: str) -> object | None:
        return self.flags.get(name) or self.from_env(name)

    def source_of(self, name: str) -> str:
        # Typer hands an option's environment variable over as the flag's value
        if self.flags.get(name) is not None and str(self.flags[name]) != self.from_env(name):
            return "flag"
        return "env"


def _home(src: _Sources) -> tuple[Path, bool]:
    """CLEARLIFT_HOME from a flag or the environment, else the XDG data folder; and
    whether it was given (a config file's ``home`` counts only when it was not)."""
    home_raw = src.early("home")
    if home_raw:
        src.origin["home"] = src.source_of("home")
        return Path(str(home_raw)).expanduser(), True
    src.origin["home"] = "default"
    xdg = src.env.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path(src.env.get("HOME", str(Path.home()))) / ".local" / "share"
    return base / "clearlift", False


def _layered(src: _Sources, config: dict[str, object]) -> dict[str, Any]:
    """Every other setting from the first source that has it: flag, environment, config
    file, then the default."""
    values: dict[str, Any] = {}
    for name in ENV_NAMES:
        if name in ("home", "config_path"):
            continue
        for where, value in (
            ("flag", src.flags.get(name)),
            ("env", src.from_env(name)),
            ("config file", config.get(name)),
            ("default", _DEFAULTS.get(name)),
        ):
            if value is not None:
                values[name] = value
                src.origin[name] = src.source_of(name) if where == "flag" else where
                break
    return values


def _check(values: dict[str, Any]) -> None:
    """The values as their fields want them (URLs without a trailing slash, checked
    seconds, strings), every secret and URL password registered for redaction."""
    for url_field in _URL_FIELDS:
        values[url_field] = str(values[url_field]).rstrip("/")
    for name, seconds in _SECONDS.items():
        values[name] = _seconds(values.get(name, seconds), ENV_NAMES[name], allow_zero=name != "http_timeout")
    for name in _SECRET_FIELDS:
        if isinstance(values.get(name), str):
            redact.register(values[name])
    values["db"] = str(values["db"])
    values["warehouse_url"] = str(values["warehouse_url"])
    values["control_db"] = str(values["control_db"])
    for name in ("db", "control_db", "warehouse_url"):
        if isinstance(values.get(name), str):  # masked in every log line from now on
            redact.register(*redact.url_passwords(values[name]))


def sources(settings: Settings) -> list[tuple[str, str, str]]:
    """Every setting as (environment name, value to show, where it came from: flag, env,
    config file, default, or "-" when unset). Secrets show only as set / not set; URLs
    with their password masked."""
    out = []
    for name, env_name in ENV_NAMES.items():
        value = getattr(settings, name)
        where = settings.origin.get(name, "-")
        if name in _SECRET_FIELDS:
            shown = "set" if value else "not set"
        elif value is None or value == "":
            shown, where = "not set", "-"
        else:
            shown = redact.mask_url(str(value)) if "://" in str(value) else str(value)
        out.append((env_name, shown, where))
    return out


def _seconds(value: object, env_name: str, *, allow_zero: bool) -> float:
    """A finite, non-negative number of seconds (positive unless ``allow_zero``)."""
    try:
        seconds = float(value) if isinstance(value, (str, SupportsFloat)) else float("nan")
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (seconds > 0 or allow_zero and seconds == 0) or seconds == float("inf"):
        raise ConfigError(
            f"{env_name} must be a number of seconds"
            + (" (0: no limit)" if allow_zero else "")
            + f", not {str(value)[:40]!r}"
        )
    return seconds


def secret_from_env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A secret handed over in an environment variable (never on the command line)."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value:
        redact.register(value)
    return value or None
