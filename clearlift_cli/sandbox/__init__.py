"""Sandbox servers imitating Google Ads, Facebook, TikTok and Stripe on loopback.

``Sandbox`` starts all four and tells you the settings that point clearlift at them::

    with Sandbox() as sb:
        env = sb.env()            # CLEARLIFT_*_URL + the sandbox's app credentials
        access, refresh = sb.google.tokens.issue(ttl=3600)
"""

from __future__ import annotations

import time
from collections.abc import Callable

from clearlift_cli.sandbox.server import SandboxServer

# The app credentials the sandboxes expect (what a real app would be given).
APP_CREDENTIALS = {
    "GOOGLE_CLIENT_ID": "sandbox-google-client-id",
    "GOOGLE_CLIENT_SECRET": "sandbox-google-client-secret",
    "GOOGLE_ADS_DEVELOPER_TOKEN": "sandbox-developer-token",
    "FACEBOOK_APP_ID": "sandbox-facebook-app-id",
    "FACEBOOK_APP_SECRET": "sandbox-facebook-app-secret",
    "TIKTOK_APP_ID": "sandbox-tiktok-app-id",
    "TIKTOK_CLIENT_SECRET": "sandbox-tiktok-client-secret",
}


class Sandbox:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
    ):
        from clearlift_cli.sandbox.facebook import FacebookApp
        from clearlift_cli.sandbox.google import GoogleAdsApp
        from clearlift_cli.sandbox.stripe import StripeApp
        from clearlift_cli.sandbox.tiktok import TikTokApp

        ports = ports or {}
        self.google = GoogleAdsApp(clock=clock)
        self.facebook = FacebookApp(clock=clock)
        self.tiktok = TikTokApp(clock=clock)
        self.stripe = StripeApp(clock=clock)
        self.servers = {
            name: SandboxServer(app, host=host, port=ports.get(name, 0))
            for name, app in (
                ("google", self.google),
                ("facebook", self.facebook),
                ("tiktok", self.tiktok),
                ("stripe", self.stripe),
            )
        }

    def app(self, platform: str):
        return getattr(self, platform)

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
        """Environment that points clearlift at these servers."""
        s = self.servers
        return {
            "CLEARLIFT_GOOGLE_ADS_URL": s["google"].base_url,
            "CLEARLIFT_GOOGLE_OAUTH_URL": s["google"].base_url,
            "CLEARLIFT_FACEBOOK_URL": s["facebook"].base_url,
            "CLEARLIFT_TIKTOK_URL": s["tiktok"].base_url,
            "CLEARLIFT_STRIPE_URL": s["stripe"].base_url,
            **APP_CREDENTIALS,
        }

    def issue_token(self, platform: str, ttl: float | None = 3600.0) -> tuple[str, str]:
        """A (access, refresh) pair valid on ``platform``'s sandbox (Stripe: a secret key)."""
        return self.app(platform).tokens.issue(ttl)
