"""Which platform API versions clearlift supports, and when each one dies.

Each platform's registry entry (``registry.py``, where the sources of the dates are noted)
holds the published sunset (Google) or expiration (Meta) date of each version it knows. A
request to a version past its date fails on the platform's side (Google answers HTTP 404,
often an HTML page; Meta answers error code 2635), so the consumer, ``status`` and
``doctor`` check the configured version against those dates before they need to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clearlift_cli.settings import Settings

from clearlift_cli.platforms import registry

# Days before a sunset from which the configured version is reported as ending soon.
WARN_DAYS = 45

# platform name -> its versions, for each platform whose API is versioned
_APIS: dict[str, registry.ApiVersions] = {p.name: p.api for p in registry.platforms() if p.api is not None}
# None: the platform has published no sunset date for the version (yet).
SUNSETS: dict[str, dict[str, date | None]] = {name: dict(api.sunsets) for name, api in _APIS.items()}
# The newest version each platform documents as available now: the defaults.
DEFAULT_VERSIONS: dict[str, str] = {name: api.default for name, api in _APIS.items()}
# The setting that picks each platform's version (named in messages to the operator).
VERSION_SETTINGS: dict[str, str] = {name: api.setting.env for name, api in _APIS.items() if api.setting}
_LABELS = {name: api.label for name, api in _APIS.items()}


def label(platform: str) -> str:
    """How messages name ``platform``'s API ("Google Ads API")."""
    return _LABELS.get(platform, platform)


@dataclass(frozen=True)
class VersionCheck:
    """Where a configured version stands on ``today``.

    ``state`` is ``ok``, ``ending`` (within ``WARN_DAYS`` of its sunset), ``sunset`` (past
    it) or ``unknown`` (not in the table: maybe newer than this clearlift, maybe a typo)."""

    platform: str
    version: str
    state: str
    sunset: date | None
    message: str | None

    @property
    def is_sunset(self) -> bool:
        return self.state == "sunset"


def _version_key(version: str) -> tuple[int, ...]:
    digits = version.lstrip("v")
    try:
        return tuple(int(part) for part in digits.split("."))
    except ValueError:
        return (0,)


def newest_alive(platform: str, today: date) -> str | None:
    """The oldest version of ``platform`` that is still served on ``today`` (what the
    operator must at least move to), or None when the table knows none."""
    alive = [v for v, d in SUNSETS.get(platform, {}).items() if d is None or d > today]
    return min(alive, key=_version_key) if alive else None


def sunset_message(platform: str, version: str, sunset: date | None, today: date) -> str:
    """``Google Ads API v21 is no longer served (sunset 2026-08-05): set
    CLEARLIFT_GOOGLE_ADS_API_VERSION to v23 or newer``."""
    label = _LABELS.get(platform, platform)
    when = f" (sunset {sunset.isoformat()})" if sunset else ""
    setting = VERSION_SETTINGS.get(platform, "the API version setting")
    target = newest_alive(platform, today) or DEFAULT_VERSIONS.get(platform, "a newer version")
    return f"{label} {version} is no longer served{when}: set {setting} to {target} or newer"


def check(platform: str, version: str, today: date) -> VersionCheck:
    """Where ``version`` of ``platform`` stands on ``today`` (see ``VersionCheck``)."""
    table = SUNSETS.get(platform, {})
    label = _LABELS.get(platform, platform)
    setting = VERSION_SETTINGS.get(platform, "the API version setting")
    if version not in table:
        known = ", ".join(sorted(table, key=_version_key))
        return VersionCheck(
            platform,
            version,
            "unknown",
            None,
            f"{label} {version} is not a version this clearlift knows ({known}); check {setting}",
        )
    sunset = table[version]
    if sunset is not None and today >= sunset:
        return VersionCheck(
            platform, version, "sunset", sunset, sunset_message(platform, version, sunset, today)
        )
    if sunset is not None and (sunset - today).days <= WARN_DAYS:
        target = DEFAULT_VERSIONS.get(platform, "a newer version")
        if target != "a newer version" and _version_key(target) <= _version_key(version):
            # the newest version this clearlift knows is the one ending
            target = "a newer version (and upgrade clearlift)"
        return VersionCheck(
            platform,
            version,
            "ending",
            sunset,
            f"{label} {version} is sunset on {sunset.isoformat()} "
            f"({(sunset - today).days} days): set {setting} to {target}",
        )
    return VersionCheck(platform, version, "ok", sunset, None)


def configured_versions(settings: Settings) -> dict[str, str]:
    """The API version each versioned platform is configured to use."""
    return {
        name: str(getattr(settings, api.setting.field)) if api.setting else api.default
        for name, api in _APIS.items()
    }
