"""Platform registry: adding a platform is its own module plus one line here."""

from __future__ import annotations

import importlib
from types import ModuleType

# platform name -> module implementing it (imported lazily: keeps `--help` fast)
PLATFORMS: dict[str, str] = {
    "google": "clearlift_cli.platforms.google",
    "facebook": "clearlift_cli.platforms.facebook",
    "tiktok": "clearlift_cli.platforms.tiktok",
    "stripe": "clearlift_cli.platforms.stripe",
}


_LOADED: dict[str, ModuleType] = {}


def platform_module(name: str) -> ModuleType:
    """The module for ``name``; it defines ``CLIENT`` (an AdsClient or RevenueClient
    subclass) and ``refresh_token(ctx, credentials) -> TokenGrant | None``."""
    if name not in PLATFORMS:
        from clearlift_cli.errors import UnknownPlatform

        raise UnknownPlatform(f"unknown platform {name!r} (known: {', '.join(PLATFORMS)})", platform=name)
    module = _LOADED.get(name)
    if module is None:  # the scheduler and status ask once per connection
        module = _LOADED[name] = importlib.import_module(PLATFORMS[name])
    return module
