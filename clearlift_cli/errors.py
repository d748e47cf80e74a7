"""One exception hierarchy for the tool.

Every error clearlift raises on purpose is a ``ClearliftError``; the CLI turns it into a
one-line message and the exit code named here (in one place, ``cli.main``). Platform
errors are split by what the consumer must do next: retry later (``TransientError``),
wait a given time without using up an attempt (``RateLimited``), or fail now
(``PermanentError``). Messages must never contain a token, key or secret: build them from
redacted text only (see ``clearlift_cli.redact``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import SupportsFloat

_PARAM = re.compile(r"<(\w+)>")


class ExitCode:
    """What each exit code means (README "Exit codes" lists the same)."""

    OK = 0
    FAILURE = 1  # the command ran but found something wrong (e.g. failing connections)
    USAGE = 2  # bad input: a flag, an argument (also Click's own usage errors)
    CONFIG = 3  # settings, encryption key, config file, Cloudflare token
    STORE = 4  # the store (SQLite, PostgreSQL, D1) is missing, unreadable, unreachable or not initialised
    WAREHOUSE = 5  # the warehouse cannot be reached or written
    # Deliberately the same as FAILURE (issue 8): `status CONN` for a connection that does
    # not exist answers like one that is failing, so a cron check `clearlift status CONN ||
    # alert` fires for both. Scripts that must tell them apart read the message or --json.
    NOT_FOUND = 1  # unknown connection, job or dead letter
    CONFLICT = 7  # e.g. a job is already pending for the connection


class ClearliftError(Exception):
    exit_code = ExitCode.FAILURE

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(ClearliftError):
    exit_code = ExitCode.USAGE


class InvalidInput(UsageError):
    """A library call's argument is wrong. The message names parameters, never command-line
    flags: ``field`` is the parameter at fault and ``problem`` says what is wrong, with any
    other parameter written ``<name>``. ``str()`` reads ``since 2025-01-05 is after until
    2025-01-01``; the CLI, which knows its flags, says ``--since … is after --until …``."""

    def __init__(self, field: str, problem: str, *, hint: str | None = None):
        self.field = field
        self.problem = problem
        super().__init__(self.worded(lambda name: name), hint=hint)

    def worded(self, name_of: Callable[[str], str]) -> str:
        """The message with each parameter named by ``name_of`` (e.g. its flag)."""
        text = _PARAM.sub(lambda m: name_of(m.group(1)), self.problem)
        return f"{name_of(self.field)}{'' if text.startswith(':') else ' '}{text}"


class ConfigError(ClearliftError):
    exit_code = ExitCode.CONFIG


class StoreError(ClearliftError):
    exit_code = ExitCode.STORE


class WarehouseError(ClearliftError):
    """The warehouse could not be reached or a write failed (retryable for a job)."""

    exit_code = ExitCode.WAREHOUSE


class StaleWrite(WarehouseError):
    """A later delivery (a higher claim sequence) has already written this connection's
    rows: this one's data is older and is not written. Retrying re-claims, so it is safe."""


class NotFound(ClearliftError):
    exit_code = ExitCode.NOT_FOUND


class Conflict(ClearliftError):
    exit_code = ExitCode.CONFLICT


# --- field encryption -------------------------------------------------------------------


class CryptoError(ConfigError):
    """Base of every encryption problem; never carries key or plaintext."""


class MissingKey(CryptoError):
    pass


class InvalidKey(CryptoError):
    pass


class KeyNotBase64(InvalidKey):
    """ENCRYPTION_KEY is not base64 text."""


class KeyWrongLength(InvalidKey):
    """ENCRYPTION_KEY is base64 but does not decode to 32 bytes."""


class CiphertextNotBase64(CryptoError):
    pass


class CiphertextTooShort(CryptoError):
    pass


class DecryptionFailed(CryptoError):
    """Authentication failed: wrong key or tampered ciphertext."""


# --- platform errors ---------------------------------------------------------------------


class PlatformError(ClearliftError):
    """An error talking to an ad or revenue platform."""

    def __init__(self, message: str, *, platform: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.platform = platform


class TransientError(PlatformError):
    """Worth retrying with backoff: network trouble, 5xx, malformed or truncated body."""


# A platform's "retry after" hint is kept within these bounds (seconds). Below the floor (0,
# negative, NaN) a deferred job would be claimed again at once and hammer the platform;
# above the ceiling (1e12, inf) it would wait for ever, and an app-wide hint would pause the
# whole platform. A day is the longest real wait: Google's daily developer-token quota and
# Facebook's regain estimates are shorter.
RETRY_HINT_FLOOR_SECONDS = 1.0
RETRY_HINT_CEILING_SECONDS = 86_400.0


def clamp_retry_hint(seconds: object) -> float:
    """``seconds`` within [RETRY_HINT_FLOOR_SECONDS, RETRY_HINT_CEILING_SECONDS]; anything
    that is not a number (NaN included) counts as no wait, so the floor."""
    if not isinstance(seconds, (str, SupportsFloat)):
        return RETRY_HINT_FLOOR_SECONDS
    try:
        value = float(seconds)
    except OverflowError:  # an integer too large for a float
        return (
            RETRY_HINT_CEILING_SECONDS
            if isinstance(seconds, int) and seconds > 0
            else RETRY_HINT_FLOOR_SECONDS
        )
    except (TypeError, ValueError):
        return RETRY_HINT_FLOOR_SECONDS
    if value != value:  # NaN
        return RETRY_HINT_FLOOR_SECONDS
    return min(RETRY_HINT_CEILING_SECONDS, max(RETRY_HINT_FLOOR_SECONDS, value))


class RateLimited(TransientError):
    """The platform asked us to wait. ``retry_after`` is seconds, clamped to a sane range
    (``clamp_retry_hint``); ``scope`` says who waits: ``"account"`` (this connection only)
    or ``"app"`` (every job of this platform, e.g. Google's developer-token quota or
    Facebook's app-level limit)."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        scope: str = "account",
        platform: str | None = None,
    ):
        super().__init__(message, platform=platform)
        self.retry_after = clamp_retry_hint(retry_after)
        self.scope = scope


class TokenExpired(TransientError):
    """The access token expired: refresh once and retry before failing the job."""


class PermanentError(PlatformError):
    """Retrying will not help: fail the job now (unknown account, bad request, ...)."""


class AccountUnavailable(PermanentError):
    """One account cannot be synced (no access to it any more, cancelled, a manager that has
    no metrics of its own) while the connection's token is fine: where one connection
    reaches several accounts (a Google manager's clients), the others still sync."""

    def __init__(self, message: str, *, account_id: str, platform: str | None = None):
        super().__init__(message, platform=platform)
        self.account_id = account_id


class UnknownTimeZone(PermanentError):
    """A time zone clearlift computes days with (the account's, or a connection's
    ``settings.time_zone``) is not an IANA zone name: a configuration error, so the job fails
    at once and is not retried (retrying cannot correct it)."""


class BadRow(PermanentError):
    """A row in the store clearlift cannot use (an unreadable timestamp, an unknown
    platform): the job fails now, since retrying cannot help until the row is fixed."""


class UnknownPlatform(UsageError, BadRow):
    """A platform name no module implements: a usage error on the command line (exit 2),
    a permanent failure for a queued job."""


class AuthRevoked(PermanentError):
    """The token is revoked or can no longer be refreshed: the user must reconnect.

    ``definitive`` is False for an ambiguous 401 that could be a passing glitch; those
    count towards ``consecutive_auth_failures`` before re-auth is flagged."""

    def __init__(
        self,
        message: str,
        *,
        platform: str | None = None,
        reason: str | None = None,
        definitive: bool = True,
    ):
        super().__init__(message, platform=platform)
        self.reason = reason or message
        self.definitive = definitive


class Interrupted(ClearliftError):
    """The consumer is stopping (``--max-seconds``, SIGTERM) and cut this job short after
    its grace period: the job goes back to the queue as it was, without using an attempt
    (slices already committed are kept)."""


class MissingAppCredentials(ConfigError):
    """The app's client id/secret (or developer token) for a platform is not configured."""


# --- the live D1 database over Cloudflare's REST API -------------------------------------
# A D1 problem is a store problem (exit 4) and, where retrying can help, also a
# TransientError so a job retries later instead of failing (see clearlift_cli/d1.py).


class D1Unavailable(TransientError, StoreError):
    """D1 could not answer after bounded retries (5xx, overloaded, network, truncated
    body). ``maybe_applied`` is True when the request may have run before the answer was
    lost, so a write that is not idempotent must be checked, not blindly resent."""

    def __init__(self, message: str, *, maybe_applied: bool = False):
        super().__init__(message, platform="d1")
        self.maybe_applied = maybe_applied


class D1RateLimited(RateLimited, StoreError):
    """Cloudflare's API answered 429 for longer than we wait in place: every request with
    this token waits (``scope="app"``)."""

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message, retry_after=retry_after, scope="app", platform="d1")


class D1QueryError(StoreError):
    """D1 refused a statement (HTTP 400, code 7500: bad SQL, a constraint, a limit).
    ``sqlite_code`` is the primary SQLite result name D1 appends (``SQLITE_CONSTRAINT``)."""

    def __init__(self, message: str, *, code: int | None = None, sqlite_code: str | None = None):
        super().__init__(message)
        self.code = code
        self.sqlite_code = sqlite_code

    @property
    def is_constraint(self) -> bool:
        return self.sqlite_code == "SQLITE_CONSTRAINT"


class D1LimitExceeded(D1QueryError):
    """A statement or request breaks one of D1's limits; found before anything was sent."""


class D1AuthFailed(ConfigError):
    """Cloudflare refused CLOUDFLARE_API_TOKEN for this database (401/403), or it is unset."""
