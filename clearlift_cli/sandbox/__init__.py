"""Sandbox servers imitating every registered platform (Google Ads, Facebook, TikTok,
Stripe) on loopback.

``Sandbox`` starts one server per platform (each platform's app is named by its registry
entry) and tells you the settings that point clearlift at them::

    with Sandbox() as sb:
        env = sb.env()            # CLEARLIFT_*_URL + the sandbox's app credentials
        access, refresh = sb.google.tokens.issue(ttl=3600)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from clearlift_cli.platforms import registry
from clearlift_cli.sandbox.server import SandboxServer


def app_credentials() -> dict[str, str]:
    """The app credentials the sandboxes expect, by environment variable."""
    return {k: v for p in registry.platforms() for k, v in p.sandbox_app.APP_CREDENTIALS.items()}


def __getattr__(name: str) -> Any:
    # ``APP_CREDENTIALS`` is read from the apps on first use: importing them here would
    # import them while they import this package.
    if name == "APP_CREDENTIALS":
        return app_credentials()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Sandbox:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
    ):
        ports = ports or {}
        # platform name -> its app (also an attribute: ``sb.google``)
        self.apps: dict[str, Any] = {p.name: p.sandbox_app(clock=clock) for p in registry.platforms()}
        self.servers = {
            name: SandboxServer(app, host=host, port=ports.get(name, 0)) for name, app in self.apps.items()
        }

    def __getattr__(self, name: str) -> Any:
        apps = self.__dict__.get("apps", {})
        if name in apps:
            return apps[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def app(self, platform: str) -> Any:
        return self.apps[platform]

    def start(self) -> Sandbox:
        for server in self.servers.values():
            server.start()
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment that points clearlift at these servers: every API base URL of every
        platform, and the app credentials the sandboxes expect."""
        urls = {url.env: self.servers[p.name].base_url for p in registry.platforms() for url in p.urls}
        return {**urls, **app_credentials()}

    def issue_token(self, platform: str, ttl: float | None = 3600.0) -> tuple[str, str]:
        """A (access, refresh) pair valid on ``platform``'s sandbox (Stripe: a secret key)."""
        return self.app(platform).tokens.issue(ttl)
