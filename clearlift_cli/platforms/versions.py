"""Which platform API versions clearlift supports, and when each one dies.

One table per platform of each version's published sunset (Google) or expiration (Meta)
date. A request to a version past its date fails on the platform's side (Google answers
HTTP 404, often an HTML page; Meta answers error code 2635), so the consumer, ``status``
and ``doctor`` check the configured version against this table before they need to.

Sources (looked up 2026-11-29):
- Google Ads: the "Google Ads API vNN sunset reminder" posts on the Ads developer blog give
  v19 2026-02-11, v20 2026-06-10, v21 2026-08-05, v22 2026-10-07. v23–v26 have only the
  *projected* sunset months of the 2026 release schedule post (v23 February 2027, v24 May
  2027, v25 August 2027, v26 November 2027; each major version lives about a year). Doubt:
  those are months, not days, so we take the first day of the month, the earliest it can
  be. v26 was announced 2026-10-14 and is the newest.
- Meta Marketing API: the "Marketing API version history" table gives v22.0 2026-02-19,
  v23.0 2026-06-09, v24.0 2026-11-10, v25.0 2027-02-23; v26.0 (released 2026-07-29) and
  v27.0 (released 2026-11-04, the newest) are "TBD". Doubt: the Graph API table lists
  other (later) dates for the same numbers; the Marketing API's table is the one that
  governs ads endpoints, so it is the one used here.
- TikTok Business API: v1.3 is the only version served; TikTok publishes no sunset date
  for it (v1.2 was retired in 2024 without a fixed public date), so it has none here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clearlift_cli.settings import Settings

# Days before a sunset from which the configured version is reported as ending soon.
WARN_DAYS = 45

# None: the platform has published no sunset date for the version (yet).
SUNSETS: dict[str, dict[str, date | None]] = {
    "google": {
        "v19": date(2026, 2, 11),
        "v20": date(2026, 6, 10),
        "v21": date(2026, 8, 5),
        "v22": date(2026, 10, 7),
        "v23": date(2027, 2, 1),  # projected: February 2027
        "v24": date(2027, 5, 1),  # projected: May 2027
        "v25": date(2027, 8, 1),  # projected: August 2027
        "v26": date(2027, 11, 1),  # projected: November 2027
    },
    "facebook": {
        "v22.0": date(2026, 2, 19),
        "v23.0": date(2026, 6, 9),
        "v24.0": date(2026, 11, 10),
        "v25.0": date(2027, 2, 23),
        "v26.0": None,
        "v27.0": None,
    },
    "tiktok": {
        "v1.3": None,
    },
}

# The newest version each platform documents as available now: the defaults.
DEFAULT_VERSIONS: dict[str, str] = {"google": "v26", "facebook": "v27.0", "tiktok": "v1.3"}

# The setting that picks each platform's version (named in messages to the operator).
VERSION_SETTINGS: dict[str, str] = {
    "google": "CLEARLIFT_GOOGLE_ADS_API_VERSION",
    "facebook": "CLEARLIFT_FACEBOOK_API_VERSION",
}

_LABELS = {"google": "Google Ads API", "facebook": "Meta Marketing API", "tiktok": "TikTok API"}


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
        "google": str(settings.google_ads_api_version),
        "facebook": str(settings.facebook_api_version),
        "tiktok": "v1.3",
    }
