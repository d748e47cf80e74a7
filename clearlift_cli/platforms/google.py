"""Google Ads over REST: GAQL through ``googleAds:searchStream``, tokens from Google OAuth.

Wire facts (see PLATFORM_APIS.md): the stream answer is a JSON array of batches (decoded
batch by batch as it arrives, so memory holds one batch, not the answer), int64 values are
strings, doubles are numbers, a zero field may be missing, and errors carry a
``GoogleAdsFailure`` in ``error.details`` (sometimes wrapped in an array). Quota errors put
the wait in the body (``retryDelay``), and a developer-token quota blocks the whole app.
A sunset API version answers HTTP 404, often an HTML page (older versions first answered
``requestError: UNSUPPORTED_VERSION``): both fail the job with what to set instead.

Manager (MCC) accounts: when the API worker connects a manager, ``account_id`` is the
manager and ``settings.accountSelection`` names its clients to sync (``{"mode":
"selected", "selectedAccounts": ["123-456-7890", ...]}``, or ``{"mode": "all"}`` for every
enabled non-manager client found through the ``customer_client`` resource). Metrics cannot
be requested for a manager (``queryError: REQUESTED_METRICS_FOR_MANAGER``), so each client
is queried itself with ``login-customer-id`` = the manager (``accounts`` /
``for_account``), and a client the user can no longer reach fails alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any, SupportsInt

from clearlift_cli import redact as redaction
from clearlift_cli.errors import (
    AccountUnavailable,
    AuthRevoked,
    MissingAppCredentials,
    PermanentError,
    RateLimited,
    TokenExpired,
    TransientError,
)
from clearlift_cli.money import to_decimal, to_int, to_micros
from clearlift_cli.platforms import versions
from clearlift_cli.platforms.base import (
    Account,
    AdsClient,
    Campaign,
    Credentials,
    DailyMetric,
    PlatformContext,
    TokenGrant,
)
from clearlift_cli.platforms.http import Response, client_for, short
from clearlift_cli.redact import redact

PLATFORM = "google"

ACCOUNT_QUERY = (
    "SELECT customer.id, customer.descriptive_name, customer.currency_code, customer.time_zone FROM customer"
)
CAMPAIGNS_QUERY = (
    "SELECT campaign.id, campaign.name, campaign.status, campaign.advertising_channel_type, "
    "campaign_budget.amount_micros FROM campaign WHERE campaign.status != 'REMOVED'"
)
# Every client under a manager, direct and indirect, and the manager itself (level 0).
# Fields as documented for the customer_client resource (v23-v26 reference pages).
CUSTOMER_CLIENTS_QUERY = (
    "SELECT customer_client.id, customer_client.descriptive_name, customer_client.manager, "
    "customer_client.level, customer_client.status, customer_client.currency_code, "
    "customer_client.time_zone FROM customer_client"
)
METRICS_QUERY = (
    "SELECT campaign.id, segments.date, metrics.impressions, metrics.clicks, "
    "metrics.cost_micros, metrics.conversions, metrics.conversions_value FROM campaign "
    "WHERE segments.date BETWEEN '{since}' AND '{until}'"
)

# Google's quota errors normally say how long to wait; this is used when one does not.
DEFAULT_RETRY_DELAY_SECONDS = 30.0

# Platform messages are shown to operators; a long one is cut so one line stays one line.

_TRANSIENT_STATUSES = {"UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "ABORTED", "UNKNOWN"}

# Errors about the app's developer token: the app is misconfigured, not the user's grant.
_DEVELOPER_TOKEN_CODES = {
    "DEVELOPER_TOKEN_INVALID",
    "DEVELOPER_TOKEN_PARAMETER_MISSING",
    "DEVELOPER_TOKEN_NOT_APPROVED",
    "DEVELOPER_TOKEN_PROHIBITED",
}

# Errors about one customer account, not about the token or the app: where a connection
# reaches several accounts (a manager's clients) the others still sync. USER_PERMISSION_DENIED
# is what an unlinked client answers (the Ads API forum: "if the link between the manager
# and client account was removed"); INVALID_LOGIN_CUSTOMER_ID_SERVING_CUSTOMER_ID_COMBINATION
# is the documented code for a login customer that does not manage the account. Doubt:
# CUSTOMER_NOT_FOUND is not in the v21 RequestError/AuthorizationError enums we read; it is
# kept here in case another error category uses it.
_UNREACHABLE_CODES = {
    "USER_PERMISSION_DENIED",
    "INVALID_LOGIN_CUSTOMER_ID_SERVING_CUSTOMER_ID_COMBINATION",
    "CUSTOMER_NOT_FOUND",
}
_ACCOUNT_CODES = _UNREACHABLE_CODES | {"CUSTOMER_NOT_ENABLED", "REQUESTED_METRICS_FOR_MANAGER"}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def customer_id_digits(raw: object, what: str = "customer id") -> str:
    """A Google Ads customer id as the API wants it: digits only (``123-456-7890`` ->
    ``1234567890``). Anything else is a ``PermanentError``: retrying cannot fix it."""
    text = str(raw or "").strip().replace("-", "")
    if not text.isdigit():
        raise PermanentError(
            f"google: {what} {redact(raw)!r} is not a Google Ads customer id (10 digits, dashes allowed)",
            platform=PLATFORM,
        )
    return text


def parse_retry_delay(value: object) -> float | None:
    """Seconds from a protobuf Duration in JSON (``"40s"``, ``"1.5s"``) or its object form
    (``{"seconds": "40", "nanos": 0}``); None when absent or unreadable."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        return float(match.group(1)) if match else None
    if isinstance(value, dict):
        try:
            return float(value.get("seconds") or 0) + float(value.get("nanos") or 0) / 1e9
        except (TypeError, ValueError):
            return None
    return None


def _error_of(body: Any) -> dict | None:
    """The ``error`` object of an answer, whether bare or wrapped in a stream array."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    if isinstance(body, list):
        for item in body:
            if isinstance(item, dict) and isinstance(item.get("error"), dict):
                return item["error"]
    return None


def _failures(error: dict) -> list[dict]:
    """The individual ``GoogleAdsFailure.errors`` of an error object."""
    out: list[dict] = []
    for detail in error.get("details") or []:
        if isinstance(detail, dict):
            out.extend(e for e in detail.get("errors") or [] if isinstance(e, dict))
    return out


def dashed(customer_id: str) -> str:
    """``1234567890`` as Google Ads shows it to people: ``123-456-7890``."""
    return (
        f"{customer_id[:3]}-{customer_id[3:6]}-{customer_id[6:]}" if len(customer_id) == 10 else customer_id
    )


def _account_advice(codes: set[str], customer: str | None, manager: str | None) -> str:
    """What the user must do about an error that concerns one customer account."""
    who = f"customer {dashed(customer)}" if customer else "the customer account"
    through = f" through manager {dashed(manager)}" if manager and manager != customer else ""
    if codes & _UNREACHABLE_CODES:
        return (
            f"the Google user who connected this account cannot reach {who}{through}: if it was "
            "unlinked from the manager, link it again or remove it from the connection's selected "
            "accounts; otherwise reconnect with a user who has access to it"
        )
    if "CUSTOMER_NOT_ENABLED" in codes:
        return (
            f"{who} is cancelled, suspended or not fully set up: re-enable it in Google Ads or "
            "remove it from the connection's selected accounts"
        )
    return (
        f"{who} is a manager account, which has no metrics of its own: select its client "
        'accounts (settings.accountSelection, {"mode": "all"} or {"mode": "selected", '
        '"selectedAccounts": [...]})'
    )


def classify(
    response: Response,
    body: Any,
    *,
    customer: str | None = None,
    manager: str | None = None,
    version_gone: str | None = None,
) -> None:
    """Raise the ``clearlift_cli.errors`` exception for a Google Ads error answer.

    Returns for a good answer, and for a non-JSON one with a status that says nothing more
    (``HttpClient`` then reports a malformed body as ``TransientError``). ``customer`` and
    ``manager`` (digits) name the account asked for and the login customer in messages;
    ``version_gone`` is the message for an answer that says the API version is gone (a 404
    on a version the sunset table says is past, or ``UNSUPPORTED_VERSION``)."""
    error = _error_of(body)
    status = response.status
    if status == 404 and version_gone:
        raise PermanentError(version_gone, platform=PLATFORM)
    if error is None:
        if status < 400:
            return
        _classify_bare_status(response)
        if body is None:
            return
        error = {}
    answer = _ErrorAnswer.read(response, error, customer, manager, version_gone)
    for applies, exception in _ERROR_RULES:
        if applies(answer):
            raise exception(answer)
    raise PermanentError(answer.text, platform=PLATFORM)


def _classify_bare_status(response: Response) -> None:
    """Raise for an error status whose answer carries no Google error object, when the
    status alone says what happened (429, 401, 404)."""
    status = response.status
    if status == 429:
        hinted = response.retry_after()
        raise RateLimited(
            "google: HTTP 429 without a retry delay"
            if hinted is None
            else f"google: HTTP 429, Retry-After {hinted:g}s",
            retry_after=DEFAULT_RETRY_DELAY_SECONDS if hinted is None else hinted,
            platform=PLATFORM,
        )
    if status == 401:
        raise AuthRevoked(
            "google: HTTP 401, the access token was refused", platform=PLATFORM, definitive=False
        )
    if status == 404:
        raise PermanentError(
            "google: HTTP 404, check CLEARLIFT_GOOGLE_ADS_URL and the API version",
            platform=PLATFORM,
        )


@dataclass
class _ErrorAnswer:
    """A Google Ads error answer as the rules below read it: its code (the HTTP status, or
    the error's own code on a 200 stream), gRPC status, failures with their error codes and
    categories, and ``text``, the message every exception starts with."""

    response: Response
    code: int
    grpc_status: str
    failures: list[dict]
    codes: set[str]
    categories: set[str]
    message: str
    label: str
    text: str
    customer: str | None
    manager: str | None
    version_gone: str | None

    @classmethod
    def read(
        cls,
        response: Response,
        error: dict,
        customer: str | None,
        manager: str | None,
        version_gone: str | None,
    ) -> _ErrorAnswer:
        status = response.status
        code = status if status >= 400 else _as_int(error.get("code"), default=500)
        grpc_status = str(error.get("status") or "")
        failures = _failures(error)
        codes = {
            value for f in failures for value in (f.get("errorCode") or {}).values() if isinstance(value, str)
        }
        categories = {cat for f in failures for cat in (f.get("errorCode") or {})}
        message = (failures[0].get("message") if failures else None) or error.get("message") or ""
        label = grpc_status or f"HTTP {code}"
        if codes:
            label += f" ({', '.join(sorted(codes))})"
        text = f"google: {label}: {short(message)}" if message else f"google: {label}"
        return cls(
            response,
            code,
            grpc_status,
            failures,
            codes,
            categories,
            message,
            label,
            text,
            customer,
            manager,
            version_gone,
        )


def _rate_limited(a: _ErrorAnswer) -> RateLimited:
    delays: list[float] = []
    scopes: set[str] = set()
    for f in a.failures:
        quota = ((f.get("details") or {}).get("quotaErrorDetails")) or {}
        delay = parse_retry_delay(quota.get("retryDelay"))
        if delay is not None:
            delays.append(delay)
        if quota.get("rateScope"):
            scopes.add(str(quota["rateScope"]))
    # The developer token's quota is shared by every account the app serves.
    scope = "app" if "DEVELOPER" in scopes else "account"
    return RateLimited(
        a.text,
        retry_after=max(delays) if delays else a.response.retry_after(DEFAULT_RETRY_DELAY_SECONDS),
        scope=scope,
        platform=PLATFORM,
    )


def _unauthenticated(a: _ErrorAnswer) -> TokenExpired | AuthRevoked:
    if "OAUTH_TOKEN_EXPIRED" in a.codes:
        return TokenExpired(a.text, platform=PLATFORM)
    # Ambiguous: a refresh may still work, so this is not yet a definitive revocation.
    return AuthRevoked(a.text, platform=PLATFORM, reason=short(a.message or a.label), definitive=False)


# What a Google Ads error answer means, by its shape: the first rule that applies decides;
# an answer no rule fits is a PermanentError.
_ERROR_RULES: list[tuple[Callable[[_ErrorAnswer], bool], Callable[[_ErrorAnswer], Exception]]] = [
    (
        lambda a: a.code == 429 or a.grpc_status == "RESOURCE_EXHAUSTED" or "quotaError" in a.categories,
        _rate_limited,
    ),
    (
        lambda a: "UNSUPPORTED_VERSION" in a.codes,
        lambda a: PermanentError(
            a.version_gone or f"{a.text} (check CLEARLIFT_GOOGLE_ADS_API_VERSION)", platform=PLATFORM
        ),
    ),
    (
        lambda a: bool(a.codes & _ACCOUNT_CODES) and a.code not in (401, 429),
        lambda a: AccountUnavailable(
            f"{a.text} — {_account_advice(a.codes, a.customer, a.manager)}",
            account_id=a.customer or "",
            platform=PLATFORM,
        ),
    ),
    (
        lambda a: bool(a.codes & _DEVELOPER_TOKEN_CODES),
        lambda a: PermanentError(
            f"{a.text} (check GOOGLE_ADS_DEVELOPER_TOKEN: the app's developer token was refused)",
            platform=PLATFORM,
        ),
    ),
    (lambda a: a.code == 401 or a.grpc_status == "UNAUTHENTICATED", _unauthenticated),
    (
        lambda a: a.code >= 500 or a.code in (408, 409) or a.grpc_status in _TRANSIENT_STATUSES,
        lambda a: TransientError(a.text, platform=PLATFORM),
    ),
]


def _as_int(value: object, default: int) -> int:
    if not isinstance(value, (str, SupportsInt)):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def classify_oauth(response: Response, body: Any) -> None:
    """Raise for an error answer of Google's token endpoint (``{"error": "invalid_grant",
    "error_description": ...}``); return for a good one."""
    status = response.status
    if status < 400:
        return
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # some Google endpoints use the API error shape here
        error = error.get("status") or error.get("message")
    description = body.get("error_description") if isinstance(body, dict) else None
    detail = short(description or error or f"HTTP {status}")
    if error == "invalid_grant":
        raise AuthRevoked(
            f"google: refresh token refused (invalid_grant): {detail}",
            platform=PLATFORM,
            reason=detail,
            definitive=True,
        )
    if error in ("invalid_client", "unauthorized_client"):
        raise PermanentError(
            f"google: the OAuth client was refused ({error}): {detail}; check "
            "GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET",
            platform=PLATFORM,
        )
    if status == 429:
        raise RateLimited(
            f"google: token endpoint rate limited: {detail}",
            retry_after=DEFAULT_RETRY_DELAY_SECONDS,
            platform=PLATFORM,
        )
    if status >= 500 or body is None:
        if status >= 500:
            raise TransientError(f"google: token endpoint HTTP {status}: {detail}", platform=PLATFORM)
        return  # non-JSON 4xx: HttpClient reports the malformed body as transient
    raise PermanentError(f"google: token refresh failed ({error or status}): {detail}", platform=PLATFORM)


def _shape_error(what: str, exc: Exception) -> TransientError:
    return TransientError(f"google: unexpected {what} in the answer ({short(exc)})", platform=PLATFORM)


class GoogleAdsClient(AdsClient):
    """Campaigns and daily campaign metrics of one Google Ads customer account."""

    platform = PLATFORM
    # searchStream has no window limit; slices keep a huge backfill committing in parts.
    max_window_days = 90
    default_lookback_days = 3
    # Conversions are credited to the click's day for up to 30 days, but the system this
    # replaces re-read only the lookback; a connection opts in with
    # settings.attribution_window_days = 30.
    attribution_window_days = None

    def __init__(self, ctx: PlatformContext, credentials: Credentials, *, manager_id: str | None = None):
        super().__init__(ctx, credentials)
        redaction.register(credentials.access_token, credentials.refresh_token)
        self.http = client_for(ctx, PLATFORM)
        # Set on the client of one of a manager connection's client accounts: the manager.
        self.manager_id = manager_id
        self._clients: dict[str, GoogleAdsClient] = {}

    # --- requests ------------------------------------------------------------------------

    @property
    def customer_id(self) -> str:
        return customer_id_digits(self.ctx.account_id)

    def _login_customer_id(self) -> str | None:
        """The ``login-customer-id`` header: the connection's own setting
        (``login_customer_id`` or ``manager_customer_id``), else the manager a manager
        connection was made through, else the app-wide GOOGLE_ADS_LOGIN_CUSTOMER_ID."""
        conn = self.ctx.connection_settings or {}
        for key in ("login_customer_id", "manager_customer_id", "loginCustomerId", "managerCustomerId"):
            if conn.get(key):
                return customer_id_digits(conn[key], f"settings.{key}")
        if self.manager_id:
            return self.manager_id
        if self._selection() is not None:  # the manager itself (its customer_client list)
            return self.customer_id
        if self.ctx.settings.google_ads_login_customer_id:
            return customer_id_digits(
                self.ctx.settings.google_ads_login_customer_id, "GOOGLE_ADS_LOGIN_CUSTOMER_ID"
            )
        return None

    def _headers(self) -> dict[str, str]:
        developer_token = self.ctx.settings.google_ads_developer_token
        if not developer_token:
            raise MissingAppCredentials(
                "GOOGLE_ADS_DEVELOPER_TOKEN is not set: Google Ads needs the app's developer token"
            )
        headers = {
            "Authorization": f"Bearer {self.credentials.access_token}",
            "developer-token": developer_token,
        }
        login = self._login_customer_id()
        if login:
            headers["login-customer-id"] = login
        return headers

    def _version_gone(self) -> str:
        version = self.ctx.settings.google_ads_api_version
        today = self.ctx.clock.now().date()
        known = versions.check(PLATFORM, version, today)
        return versions.sunset_message(PLATFORM, version, known.sunset, today)

    def _classify(self, response: Response, body: Any) -> None:
        version_gone = None
        if response.status == 404:
            # Only a version the table says is past: a 404 on a live one is a wrong URL.
            version = self.ctx.settings.google_ads_api_version
            if versions.check(PLATFORM, version, self.ctx.clock.now().date()).is_sunset:
                version_gone = self._version_gone()
        elif response.status >= 400:
            version_gone = self._version_gone()  # used only for UNSUPPORTED_VERSION
        classify(
            response,
            body,
            customer=self.customer_id,
            manager=self._login_customer_id(),
            version_gone=version_gone,
        )

    def search_stream(self, query: str, phase: str | None = None) -> Iterator[dict]:
        """Every result row of a GAQL query, yielded batch by batch as the batches arrive
        (one batch in memory at a time). A stream that breaks after some rows were yielded
        raises ``TransientError``: the caller's transaction must not keep a partial answer."""
        settings = self.ctx.settings
        url = (
            f"{settings.google_ads_url}/{settings.google_ads_api_version}/customers/"
            f"{self.customer_id}/googleAds:searchStream"
        )
        done = 0
        batches = self.http.stream_array(
            "POST", url, classify=self._classify, json_body={"query": query}, headers=self._headers()
        )
        for batch in batches:
            results = batch.get("results") if isinstance(batch, dict) else None
            if results is None:
                if not isinstance(batch, dict):
                    raise TransientError("google: a stream batch is not an object", platform=PLATFORM)
                continue  # an empty stream is one batch with only fieldMask and requestId
            if not isinstance(results, list):
                raise TransientError("google: a stream batch has no result list", platform=PLATFORM)
            yield from results
            done += len(results)
            if phase and self.ctx.progress:
                self.ctx.progress(phase, done, None)

    # --- manager accounts -------------------------------------------------------------------

    def _selection(self) -> tuple[str, list[str]] | None:
        """``settings.accountSelection`` as (mode, selected customer ids), or None."""
        raw = (self.ctx.connection_settings or {}).get("accountSelection")
        if raw is None or self.manager_id:
            return None
        if isinstance(raw, str):  # stored as JSON text inside the settings JSON
            try:
                raw = json.loads(raw)
            except ValueError:
                raw = None
        mode = raw.get("mode") if isinstance(raw, dict) else None
        if mode == "all":
            return "all", []
        selected = raw.get("selectedAccounts") if isinstance(raw, dict) else None
        if mode != "selected" or not isinstance(selected, list):
            raise PermanentError(
                f"google: settings.accountSelection of manager {self.ctx.account_id} must be "
                '{"mode": "all"} or {"mode": "selected", "selectedAccounts": [customer ids]}, '
                f"not {short(json.dumps(raw) if not isinstance(raw, str) else raw)}",
                platform=PLATFORM,
            )
        ids = [customer_id_digits(x, "settings.accountSelection.selectedAccounts entry") for x in selected]
        if not ids:
            raise PermanentError(
                f"google: settings.accountSelection of manager {self.ctx.account_id} selects no "
                'client accounts: select at least one (or use {"mode": "all"})',
                platform=PLATFORM,
            )
        return "selected", list(dict.fromkeys(ids))

    def accounts(self) -> list[str]:
        """The connection's own account, or, for a manager connection, the client accounts
        its ``accountSelection`` names (mode ``all``: every enabled, non-manager client
        under the manager, from ``customer_client``). Client ids are digits only, as
        their warehouse rows carry them."""
        selection = self._selection()
        if selection is None:
            return [self.ctx.account_id]
        mode, selected = selection
        own = self.customer_id
        if mode == "all":
            selected = []
            for row in self.search_stream(CUSTOMER_CLIENTS_QUERY):
                client = row.get("customerClient") or {}
                if client.get("manager") or client.get("status") != "ENABLED" or not client.get("id"):
                    continue
                selected.append(customer_id_digits(client["id"]))
        # The connection's own id keeps the spelling its rows have always carried.
        return [self.ctx.account_id if cid == own else cid for cid in dict.fromkeys(selected)]

    def for_account(self, account_id: str) -> GoogleAdsClient:
        """The client for one of ``accounts()``: a manager's client is queried itself, with
        the manager as ``login-customer-id``."""
        if account_id == self.ctx.account_id:
            return self
        if account_id not in self._clients:
            ctx = replace(self.ctx, account_id=account_id)
            self._clients[account_id] = GoogleAdsClient(ctx, self.credentials, manager_id=self.customer_id)
        return self._clients[account_id]

    # --- the AdsClient interface ------------------------------------------------------------

    def account(self) -> Account:
        for row in self.search_stream(ACCOUNT_QUERY):
            customer = row.get("customer") or {}
            try:
                return Account(
                    account_id=str(customer.get("id") or self.customer_id),
                    currency=str(customer["currencyCode"]).upper(),
                    time_zone=str(customer["timeZone"]),
                    name=customer.get("descriptiveName") or None,
                )
            except KeyError as exc:
                raise _shape_error("customer row", exc) from None
        raise PermanentError(
            f"google: customer {self.customer_id} returned no customer row", platform=PLATFORM
        )

    def campaigns(self) -> Iterator[Campaign]:
        for row in self.search_stream(CAMPAIGNS_QUERY, phase="campaigns"):
            yield _campaign(row)

    def daily_metrics(self, since: date, until: date) -> Iterator[DailyMetric]:
        if until < since:
            return
        query = METRICS_QUERY.format(since=since.isoformat(), until=until.isoformat())
        for row in self.search_stream(query, phase="metrics"):
            yield _metric(row)


def _campaign(row: dict) -> Campaign:
    try:
        campaign = row["campaign"]
        budget = row.get("campaignBudget")
        return Campaign(
            campaign_id=str(campaign["id"]),
            campaign_name=campaign.get("name"),
            status=campaign.get("status"),
            objective=None,
            channel=campaign.get("advertisingChannelType"),
            # A campaign without a budget resource has no budget; a present one missing
            # its amount is a proto3 zero.
            budget_micros=None if budget is None else to_int(budget.get("amountMicros")),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise _shape_error("campaign row", exc) from None


def _metric(row: dict) -> DailyMetric:
    try:
        metrics = row.get("metrics") or {}
        return DailyMetric(
            campaign_id=str(row["campaign"]["id"]),
            metric_date=date.fromisoformat(row["segments"]["date"]),
            impressions=to_int(metrics.get("impressions")),
            clicks=to_int(metrics.get("clicks")),
            spend_micros=to_int(metrics.get("costMicros")),
            conversions=to_decimal(metrics.get("conversions")),
            conversion_value_micros=to_micros(metrics.get("conversionsValue")),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise _shape_error("metrics row", exc) from None


def refresh_token(ctx: PlatformContext, credentials: Credentials) -> TokenGrant | None:
    """A new access token from the stored refresh token. Raises ``MissingAppCredentials``
    without the app's client id/secret and ``AuthRevoked(definitive=True)`` when there is no
    refresh token or Google refuses it (``invalid_grant``)."""
    settings = ctx.settings
    if not settings.google_client_id or not settings.google_client_secret:
        raise MissingAppCredentials(
            "GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET must be set to refresh Google tokens"
        )
    if not credentials.refresh_token:
        raise AuthRevoked(
            "google: no refresh token stored; the connection must be re-authorised",
            platform=PLATFORM,
            reason="no refresh token stored",
            definitive=True,
        )
    redaction.register(credentials.access_token, credentials.refresh_token)
    body = client_for(ctx, PLATFORM).request(
        "POST",
        f"{settings.google_oauth_url}/token",
        classify=classify_oauth,
        data={
            "client_id": settings.google_client_id,
            "client_secret": settings.google_client_secret,
            "refresh_token": credentials.refresh_token,
            "grant_type": "refresh_token",
        },
    )
    if not isinstance(body, dict) or not body.get("access_token"):
        raise TransientError("google: token endpoint answered without an access token", platform=PLATFORM)
    access = str(body["access_token"])
    new_refresh = body.get("refresh_token") or None
    redaction.register(access, new_refresh)
    # Google access tokens always expire; assume its usual hour if the field is missing.
    expires_in = body.get("expires_in", 3600)
    try:
        expires_at = ctx.clock.now() + timedelta(seconds=float(expires_in))
    except (TypeError, ValueError):
        raise TransientError(
            "google: token endpoint answered with a bad expires_in", platform=PLATFORM
        ) from None
    return TokenGrant(access_token=access, expires_at=expires_at, refresh_token=new_refresh)
