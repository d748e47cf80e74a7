"""The API version table: what is sunset, ending soon, fine or unknown on a given day."""

from __future__ import annotations

from datetime import UTC, date

from clearlift_cli.platforms import versions
from clearlift_cli.settings import resolve

TODAY = date(2026, 11, 29)


def test_defaults_are_alive_and_not_ending_today() -> None:
    settings = resolve({"home": "/nonexistent"}, environ={}, read_config=False)
    for platform, version in versions.configured_versions(settings).items():
        assert versions.check(platform, version, TODAY).state == "ok", platform


def test_sunset_google_version_names_version_date_and_setting() -> None:
    got = versions.check("google", "v21", TODAY)
    assert got.is_sunset
    assert got.message == (
        "Google Ads API v21 is no longer served (sunset 2026-08-05): "
        "set CLEARLIFT_GOOGLE_ADS_API_VERSION to v23 or newer"
    )


def test_meta_v24_expired_on_its_day() -> None:
    assert versions.check("facebook", "v24.0", date(2026, 11, 9)).state == "ending"
    assert versions.check("facebook", "v24.0", date(2026, 11, 10)).state == "sunset"


def test_ending_within_45_days_but_not_46() -> None:
    sunset = versions.SUNSETS["facebook"]["v25.0"]
    assert sunset is not None
    assert versions.check("facebook", "v25.0", date.fromordinal(sunset.toordinal() - 45)).state == "ending"
    assert versions.check("facebook", "v25.0", date.fromordinal(sunset.toordinal() - 46)).state == "ok"


def test_unknown_version_is_reported_not_guessed() -> None:
    got = versions.check("google", "v99", TODAY)
    assert got.state == "unknown" and "CLEARLIFT_GOOGLE_ADS_API_VERSION" in (got.message or "")


def test_consume_warns_for_each_version_ending_or_gone() -> None:
    from datetime import datetime

    from clearlift_cli.commands import warn_dying_versions
    from clearlift_cli.timeutil import FrozenClock

    def on(day: date, **versions_set: str) -> list[str]:
        settings = resolve({"home": "/nonexistent", **versions_set}, environ={}, read_config=False)
        return warn_dying_versions(
            settings, clock=FrozenClock(datetime.combine(day, datetime.min.time(), UTC))
        )

    assert on(TODAY) == []  # the defaults
    # Meta v25.0 is sunset 2027-02-23: within 45 days it is named every run, with the setting.
    assert on(date(2027, 1, 9), facebook_api_version="v25.0") == [
        "Meta Marketing API v25.0 is sunset on 2027-02-23 (45 days): "
        "set CLEARLIFT_FACEBOOK_API_VERSION to v27.0"
    ]
    assert on(date(2027, 1, 8), facebook_api_version="v25.0") == []
    gone = on(TODAY, google_ads_api_version="v22", facebook_api_version="v24.0")
    assert gone == [
        "Google Ads API v22 is no longer served (sunset 2026-10-07): set CLEARLIFT_GOOGLE_ADS_API_VERSION to v23 or newer",
        "Meta Marketing API v24.0 is no longer served (sunset 2026-11-10): set CLEARLIFT_FACEBOOK_API_VERSION to v25.0 or newer",
    ]


def test_the_newest_known_version_ending_asks_for_a_newer_one() -> None:
    got = versions.check("google", "v26", date(2027, 10, 1))
    assert got.state == "ending"
    assert got.message == (
        "Google Ads API v26 is sunset on 2027-11-01 (31 days): set "
        "CLEARLIFT_GOOGLE_ADS_API_VERSION to a newer version (and upgrade clearlift)"
    )
    assert versions.check("google", "v23", date(2027, 1, 1)).message.endswith("to v26")
