"""Token lifecycle: decrypting a connection's tokens, refreshing them before they expire,
and flagging connections that need the user to reconnect.

Writes are compare-and-set on the old ciphertext, so two overlapping runs (or a consumer
refreshing on demand) never overwrite a newer token with an older one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from clearlift_cli.crypto import FieldCipher, refuse_a_wrong_key
from clearlift_cli.errors import (
    AuthRevoked,
    BadRow,
    CryptoError,
    MissingAppCredentials,
    PlatformError,
    TransientError,
)
from clearlift_cli.models import Connection
from clearlift_cli.platforms import registry
from clearlift_cli.platforms.base import Credentials, PlatformContext
from clearlift_cli.redact import redact
from clearlift_cli.settings import Settings
from clearlift_cli.store import Store
from clearlift_cli.timeutil import iso_z, julian_day

log = logging.getLogger("clearlift.tokens")

DEFAULT_MARGIN_SECONDS = 300
DEFAULT_PACE_SECONDS = 0.2  # between refreshes against the same provider


def decrypt_credentials(cipher: FieldCipher, conn: Connection) -> Credentials:
    """The connection's tokens in clear. Raises a CryptoError subclass naming the column."""
    if not conn.credentials_encrypted:
        raise AuthRevoked(
            "No access token found for this connection: reconnect it",
            platform=conn.platform,
            reason="no access token stored",
        )
    access = cipher.decrypt(conn.credentials_encrypted, what="credentials_encrypted")
    refresh = None
    if conn.refresh_token_encrypted:
        refresh = cipher.decrypt(conn.refresh_token_encrypted, what="refresh_token_encrypted")
    try:
        expires = conn.expires()
    except ValueError:
        raise BadRow(
            f"expires_at column {str(conn.expires_at)[:40]!r} is not a timestamp: the API worker "
            "must rewrite it (reconnecting the account does)",
            platform=conn.platform,
        ) from None
    return Credentials(access_token=access, refresh_token=refresh, expires_at=expires)


def platform_context(settings: Settings, store: Store, conn: Connection, **kw) -> PlatformContext:
    try:
        conn_settings = conn.settings()
    except ValueError:
        conn_settings = {}
    return PlatformContext(
        settings=settings,
        account_id=conn.account_id,
        connection_id=conn.id,
        connection_settings=conn_settings,
        clock=store.clock,
        **kw,
    )


def refresh_connection(
    settings: Settings,
    store: Store,
    cipher: FieldCipher,
    conn: Connection,
) -> Credentials | None:
    """Refresh ``conn``'s token now. Returns the credentials to use from now on (ours, or a
    newer set another process stored meanwhile), or None when the platform's tokens do not
    expire. Raises AuthRevoked, TransientError, MissingAppCredentials or CryptoError."""
    creds = decrypt_credentials(cipher, conn)
    renew = registry.get(conn.platform).refresh_token
    if renew is None:  # the platform's tokens do not expire
        return None
    try:
        grant = renew(platform_context(settings, store, conn), creds)
    except AuthRevoked:
        # A grant refused because another run (or a reconnect) replaced it since we read the
        # row: if a newer token was stored meanwhile, the connection is fine.
        current = store.get_connection(conn.id)
        if current.credentials_encrypted == conn.credentials_encrypted:
            raise
        log.info("connection %s: token was refreshed concurrently; keeping the newer one", conn.id)
        return decrypt_credentials(cipher, current)
    if grant is None:
        return None
    new_access = cipher.encrypt(grant.access_token)
    new_refresh = cipher.encrypt(grant.refresh_token) if grant.refresh_token else None
    expires = iso_z(grant.expires_at) if grant.expires_at else None
    if store.swap_tokens(
        conn.id,
        old_credentials_encrypted=conn.credentials_encrypted,
        credentials_encrypted=new_access,
        expires_at=expires,
        refresh_token_encrypted=new_refresh,
    ):
        return Credentials(grant.access_token, grant.refresh_token or creds.refresh_token, grant.expires_at)
    # Someone else stored a newer token since we read the row: use theirs.
    log.info("connection %s: token was refreshed concurrently; keeping the newer one", conn.id)
    return decrypt_credentials(cipher, store.get_connection(conn.id))


@dataclass
class RefreshResult:
    refreshed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    needs_reauth: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "refreshed": len(self.refreshed),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "needs_reauth": len(self.needs_reauth),
            "failures": [{"connection_id": c, "reason": r} for c, r in self.failed],
        }


def renewal_margin(platform: str, margin_seconds: float) -> float:
    """Seconds before expiry from which ``platform``'s tokens are renewed: the run's margin,
    or the platform's own ``renewal_margin_seconds`` when that is longer (Meta's 60-day
    tokens are renewed from a week before expiry, not in their last minutes)."""
    found = registry.find(platform)
    if found is None:
        return margin_seconds
    return max(float(margin_seconds), float(found.renewal_margin_seconds))


def due_for_refresh(store: Store, margin_seconds: float) -> list[Connection]:
    """Active connections whose token expires within their platform's renewal margin (see
    ``renewal_margin``) or already has, earliest first per platform."""
    widest = max([margin_seconds, *(renewal_margin(p, margin_seconds) for p in registry.names())])
    now = store.clock.now()
    limit = julian_day(now + timedelta(seconds=widest))
    due = []
    for conn in store.connections_expiring(limit):
        try:
            expires = conn.expires()
        except ValueError:  # SQLite read it as a time; keep the connection due
            expires = None
        margin = timedelta(seconds=renewal_margin(conn.platform, margin_seconds))
        if expires is None or expires <= now + margin:
            due.append(conn)
    return due


def refresh_due(
    settings: Settings,
    store: Store,
    *,
    margin_seconds: float = DEFAULT_MARGIN_SECONDS,
    pace_seconds: float = DEFAULT_PACE_SECONDS,
) -> RefreshResult:
    """Refresh every active connection whose token expires within the margin, or within its
    platform's longer renewal margin (or already has). One connection's failure never stops
    the run."""
    result = RefreshResult()

    def failed(conn_id: str, reason: str) -> None:
        result.failed.append((conn_id, reason))
        log.warning("refresh failed for %s: %s", conn_id, reason)

    due = due_for_refresh(store, margin_seconds)
    if not due:
        return result
    cipher = FieldCipher(settings.key_bytes())
    refuse_a_wrong_key(
        cipher, [c.credentials_encrypted for c in due], "due connections'", "nothing was changed"
    )
    by_platform: dict[str, list[Connection]] = defaultdict(list)
    for conn in due:
        by_platform[conn.platform].append(conn)
    for platform, conns in by_platform.items():
        if not registry.is_known(platform):
            for conn in conns:
                result.skipped.append((conn.id, f"unknown platform {platform!r}"))
            continue
        for i, conn in enumerate(conns):
            if i and pace_seconds:
                store.clock.sleep(pace_seconds)
            try:
                creds = refresh_connection(settings, store, cipher, conn)
            except MissingAppCredentials as exc:
                # One message per platform per run, not one per connection.
                log.error("%s: %s; %d connection(s) not refreshed", platform, exc, len(conns) - i)
                result.failed.extend((c.id, str(exc)) for c in conns[i:])
                break
            except CryptoError as exc:
                reason = f"stored token cannot be decrypted ({exc})"
                if store.record_auth_failure(conn.id, reason=reason, definitive=True):
                    result.needs_reauth.append(conn.id)
                failed(conn.id, reason)
            except AuthRevoked as exc:
                if store.record_auth_failure(conn.id, reason=exc.reason, definitive=exc.definitive):
                    result.needs_reauth.append(conn.id)
                failed(conn.id, redact(exc.reason))
            except (TransientError, PlatformError) as exc:
                # Network, 5xx, 429: leave the connection as it is; the next run retries.
                failed(conn.id, redact(str(exc)))
            else:
                if creds is None:
                    result.skipped.append((conn.id, "token does not expire"))
                else:
                    result.refreshed.append(conn.id)
    return result
