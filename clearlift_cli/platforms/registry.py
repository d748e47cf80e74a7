"""Every platform clearlift syncs, registered once.

A platform is a unit: its client (``platforms/NAME.py``: an ``AdsClient`` or
``RevenueClient`` subclass), how its tokens are renewed, the settings it reads, the
warehouse tables it fills, the API versions it speaks and its sandbox (``sandbox/NAME.py``).
Adding a platform is those two modules and one ``Platform(...)`` entry in ``_PLATFORMS``
below, plus a typed ``Settings`` field for each setting the entry declares
(``tests/unit/test_registry.py`` names any that is missing). Nothing else in clearlift keeps
a list of platform names or compares a name with a literal: it asks this module.

This module is data only and imports nothing of clearlift when it loads (``--help``,
``settings`` and ``warehouse.schema`` read it); a platform's client, token renewal and
sandbox are imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clearlift_cli.platforms.base import PlatformClient, RefreshToken

# What a platform's client fetches, and so which warehouse tables it fills.
ADS = "ads"  # campaigns + daily campaign metrics: (campaigns table, daily metrics table)
REVENUE = "revenue"  # charges + daily revenue: (charges table, daily revenue table)
KINDS = (ADS, REVENUE)


@dataclass(frozen=True)
class Setting:
    """A setting a platform reads: its ``Settings`` field and its environment variable (the
    config file takes the variable's name in lower case). Secrets are registered with
    ``redact`` when resolved and shown only as set / not set."""

    field: str
    env: str
    secret: bool = False
    default: str | None = None


@dataclass(frozen=True)
class ApiVersions:
    """The versions of a platform's API clearlift knows, and when each stops being served."""

    label: str  # how messages name the API: "Google Ads API"
    sunsets: Mapping[str, date | None]  # version -> sunset or expiry date (None: none published)
    default: str  # the newest version the platform documents as available
    # The setting choosing the version (its default is ``default``); None: always ``default``.
    setting: Setting | None = None

    @property
    def setting_env(self) -> str | None:
        return self.setting.env if self.setting else None


@dataclass(frozen=True)
class Platform:
    """One platform, as the rest of clearlift sees it."""

    name: str  # as ``platform_connections.platform`` and queue messages spell it
    kind: str  # ADS or REVENUE
    client_ref: str  # "module:Class" of its AdsClient / RevenueClient
    # "module:function" renewing a connection's token (``base.RefreshToken``); None when the
    # platform's tokens do not expire (nothing to renew, no request).
    refresh_ref: str | None
    tables: tuple[str, ...]  # in the order of its kind's shapes (see ADS, REVENUE)
    sandbox_ref: str  # "module:Class" of its ``sandbox.server.PlatformApp``
    urls: tuple[Setting, ...]  # its API base URLs (the sandbox serves every one)
    # The app's own configuration (client ids and secrets, developer token, ...), not a
    # connection's.
    app: tuple[Setting, ...] = ()
    requires: tuple[str, ...] = ()  # fields of ``app`` every job needs
    refresh_requires: tuple[str, ...] = ()  # fields of ``app`` renewing a token needs
    # Tokens are renewed from this long before they expire when that is longer than the
    # refresh-tokens run's margin (Meta's 60-day tokens: from a week before).
    renewal_margin_seconds: float = 0.0
    api: ApiVersions | None = None

    @property
    def client(self) -> type[PlatformClient]:
        """The client class (imports the platform's module)."""
        return _load(self.client_ref)

    @property
    def refresh_token(self) -> RefreshToken | None:
        """The function renewing a token, or None when tokens do not expire."""
        return _load(self.refresh_ref) if self.refresh_ref else None

    @property
    def sandbox_app(self) -> Any:
        """The sandbox app class (``sandbox.server.PlatformApp`` subclass)."""
        return _load(self.sandbox_ref)

    @property
    def settings(self) -> tuple[Setting, ...]:
        """Every setting the platform reads."""
        version = (self.api.setting,) if self.api and self.api.setting else ()
        return self.app + self.urls + version


# Sunset dates (looked up 2026-11-29):
# - Google Ads: the "Google Ads API vNN sunset reminder" posts on the Ads developer blog give
#   v19 2026-02-11, v20 2026-06-10, v21 2026-08-05, v22 2026-10-07. v23–v26 have only the
#   *projected* sunset months of the 2026 release schedule post (v23 February 2027, v24 May
#   2027, v25 August 2027, v26 November 2027; each major version lives about a year). Doubt:
#   those are months, not days, so we take the first day of the month, the earliest it can
#   be. v26 was announced 2026-10-14 and is the newest.
# - Meta Marketing API: the "Marketing API version history" table gives v22.0 2026-02-19,
#   v23.0 2026-06-09, v24.0 2026-11-10, v25.0 2027-02-23; v26.0 (released 2026-07-29) and
#   v27.0 (released 2026-11-04, the newest) are "TBD". Doubt: the Graph API table lists
#   other (later) dates for the same numbers; the Marketing API's table is the one that
#   governs ads endpoints, so it is the one used here.
# - TikTok Business API: v1.3 is the only version served; TikTok publishes no sunset date
#   for it (v1.2 was retired in 2024 without a fixed public date), so it has none here.
_PLATFORMS: tuple[Platform, ...] = (
    Platform(
        name="google",
        kind=ADS,
        client_ref="clearlift_cli.platforms.google:GoogleAdsClient",
        # OAuth: a new access token from the stored refresh token (the app's client id/secret).
        refresh_ref="clearlift_cli.platforms.google:refresh_token",
        tables=("google_ads_campaigns", "google_ads_daily_metrics"),
        sandbox_ref="clearlift_cli.sandbox.google:GoogleAdsApp",
        urls=(
            Setting("google_ads_url", "CLEARLIFT_GOOGLE_ADS_URL", default="https://googleads.googleapis.com"),
            Setting(
                "google_oauth_url", "CLEARLIFT_GOOGLE_OAUTH_URL", default="https://oauth2.googleapis.com"
            ),
        ),
        app=(
            Setting("google_client_id", "GOOGLE_CLIENT_ID"),
            Setting("google_client_secret", "GOOGLE_CLIENT_SECRET", secret=True),
            Setting("google_ads_developer_token", "GOOGLE_ADS_DEVELOPER_TOKEN", secret=True),
            Setting("google_ads_login_customer_id", "GOOGLE_ADS_LOGIN_CUSTOMER_ID"),
        ),
        requires=("google_ads_developer_token",),
        refresh_requires=("google_client_id", "google_client_secret"),
        api=ApiVersions(
            label="Google Ads API",
            sunsets={
                "v19": date(2026, 2, 11),
                "v20": date(2026, 6, 10),
                "v21": date(2026, 8, 5),
                "v22": date(2026, 10, 7),
                "v23": date(2027, 2, 1),  # projected: February 2027
                "v24": date(2027, 5, 1),  # projected: May 2027
                "v25": date(2027, 8, 1),  # projected: August 2027
                "v26": date(2027, 11, 1),  # projected: November 2027
            },
            default="v26",
            setting=Setting("google_ads_api_version", "CLEARLIFT_GOOGLE_ADS_API_VERSION"),
        ),
    ),
    Platform(
        name="facebook",
        kind=ADS,
        client_ref="clearlift_cli.platforms.facebook:FacebookAdsClient",
        # No refresh token: the long-lived user token is exchanged (fb_exchange_token) for one
        # that lives about 60 days more, from a week before it expires.
        refresh_ref="clearlift_cli.platforms.facebook:refresh_token",
        tables=("facebook_ads_campaigns", "facebook_ads_daily_metrics"),
        sandbox_ref="clearlift_cli.sandbox.facebook:FacebookApp",
        urls=(Setting("facebook_url", "CLEARLIFT_FACEBOOK_URL", default="https://graph.facebook.com"),),
        app=(
            Setting("facebook_app_id", "FACEBOOK_APP_ID"),
            Setting("facebook_app_secret", "FACEBOOK_APP_SECRET", secret=True),
        ),
        refresh_requires=("facebook_app_id", "facebook_app_secret"),
        renewal_margin_seconds=7 * 86400,
        api=ApiVersions(
            label="Meta Marketing API",
            sunsets={
                "v22.0": date(2026, 2, 19),
                "v23.0": date(2026, 6, 9),
                "v24.0": date(2026, 11, 10),
                "v25.0": date(2027, 2, 23),
                "v26.0": None,
                "v27.0": None,
            },
            default="v27.0",
            setting=Setting("facebook_api_version", "CLEARLIFT_FACEBOOK_API_VERSION"),
        ),
    ),
    Platform(
        name="tiktok",
        kind=ADS,
        client_ref="clearlift_cli.platforms.tiktok:TikTokAdsClient",
        # Marketing API advertiser tokens (``/oauth2/access_token/``) do not expire: they
        # stay valid until the advertiser revokes them (40105: reconnect). TikTok's
        # ``/tt_user/oauth2/refresh_token/`` renews TikTok *account* tokens, another
        # product: calling it would flag a healthy connection, so a refresh token or expiry
        # stored by mistake is ignored and nothing is ever renewed.
        refresh_ref=None,
        tables=("tiktok_ads_campaigns", "tiktok_ads_daily_metrics"),
        sandbox_ref="clearlift_cli.sandbox.tiktok:TikTokApp",
        urls=(Setting("tiktok_url", "CLEARLIFT_TIKTOK_URL", default="https://business-api.tiktok.com"),),
        app=(
            Setting("tiktok_app_id", "TIKTOK_APP_ID"),
            Setting("tiktok_client_secret", "TIKTOK_CLIENT_SECRET", secret=True),
        ),
        api=ApiVersions(label="TikTok API", sunsets={"v1.3": None}, default="v1.3"),
    ),
    Platform(
        name="stripe",
        kind=REVENUE,
        client_ref="clearlift_cli.platforms.stripe:StripeClient",
        refresh_ref=None,  # secret and restricted keys do not expire
        tables=("stripe_charges", "stripe_daily_revenue"),
        sandbox_ref="clearlift_cli.sandbox.stripe:StripeApp",
        urls=(Setting("stripe_url", "CLEARLIFT_STRIPE_URL", default="https://api.stripe.com"),),
    ),
)

_BY_NAME: dict[str, Platform] = {p.name: p for p in _PLATFORMS}


def platforms() -> tuple[Platform, ...]:
    """Every registered platform, in registration order (the order of every listing)."""
    return _PLATFORMS


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def of_kind(kind: str) -> tuple[Platform, ...]:
    return tuple(p for p in _PLATFORMS if p.kind == kind)


def is_known(name: object) -> bool:
    return isinstance(name, str) and name in _BY_NAME


def find(name: str) -> Platform | None:
    return _BY_NAME.get(name)


def get(name: str) -> Platform:
    """The platform called ``name``; ``UnknownPlatform`` (a usage error on the command line, a
    permanent failure for a queued job) for any other name."""
    platform = _BY_NAME.get(name)
    if platform is None:
        from clearlift_cli.errors import UnknownPlatform

        raise UnknownPlatform(unknown_message(name), platform=name)
    return platform


def unknown_message(name: str) -> str:
    return f"unknown platform {name!r} (known: {', '.join(_BY_NAME)})"


def spoken_list(conjunction: str = "or") -> str:
    """``google, facebook, tiktok or stripe`` (help texts)."""
    *head, last = names()
    return f"{', '.join(head)} {conjunction} {last}" if head else last


_loaded: dict[str, Any] = {}


def _load(ref: str) -> Any:
    """The object ``module:attribute`` names (cached: the scheduler asks once per connection)."""
    obj = _loaded.get(ref)
    if obj is None:
        module, _, attribute = ref.partition(":")
        obj = _loaded[ref] = getattr(importlib.import_module(module), attribute)
    return obj


__all__ = [
    "ADS",
    "KINDS",
    "REVENUE",
    "ApiVersions",
    "Platform",
    "Setting",
    "find",
    "get",
    "is_known",
    "names",
    "of_kind",
    "platforms",
    "spoken_list",
    "unknown_message",
]
