"""Meta (Facebook) Marketing API over the Graph API.

Wire facts (see PLATFORM_APIS.md): the access token travels as the ``access_token`` query
parameter, so every URL carries a secret and nothing derived from one is shown unredacted.
Every number is a string; budgets are in the currency's minor unit (Meta's own offset
table), spend is a decimal in account currency. Lists page through ``paging.next`` until it
is absent; a ``next`` that repeats, pages that repeat their rows, or more pages than any
account has stop the job (``paging.PageGuard``). A request for too much data fails with
HTTP 500, code 1 and usually no subcode ("Please reduce the amount of data you're asking
for"; subcode 99 when present): the window is split in halves down to one day, and a single
day that is still too large goes through an async report. Campaigns and insights are asked
for with a ``filtering`` on every campaign status, because Graph leaves ARCHIVED and DELETED
campaigns out by default and their past spend is real spend. A request to an expired API
version (code 2635) fails the job with what to set instead. Usage headers (``x-app-usage``,
``x-business-use-case-usage``, ``x-ad-account-usage``) are read on every answer: near the
limit the client slows down, and once blocked it stops and reports how long to wait.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, SupportsFloat
from urllib.parse import parse_qsl, urlsplit

from clearlift_cli import redact as redaction
from clearlift_cli.errors import (
    AuthRevoked,
    MissingAppCredentials,
    PermanentError,
    RateLimited,
    TransientError,
)
from clearlift_cli.money import minor_units_per_unit, to_decimal, to_int, to_micros
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
from clearlift_cli.platforms.paging import PageGuard
from clearlift_cli.redact import redact

PLATFORM = "facebook"

ACCOUNT_FIELDS = "name,currency,timezone_name"
CAMPAIGN_FIELDS = "id,name,status,effective_status,objective,daily_budget,lifetime_budget"
INSIGHT_FIELDS = (
    "campaign_id,campaign_name,impressions,clicks,spend,actions,action_values,date_start,date_stop"
)
CAMPAIGN_PAGE_SIZE = 100
INSIGHT_PAGE_SIZE = 500

# Every effective_status a campaign can have: Campaign.EffectiveStatus of Meta's business
# SDKs, which are generated from the Marketing API's own schema (facebook-python-business-sdk,
# 2026). Without a filter the campaigns edge and account insights leave ARCHIVED and DELETED
# campaigns out ("A request with no filters returns only campaigns that were not archived or
# deleted"; deleted objects' insights only come "using the *.effective_status filter").
# Doubt: the campaigns-edge reference page lists twelve values, adding the ad-level
# CAMPAIGN_PAUSED, ADSET_PAUSED, PENDING_REVIEW, DISAPPROVED, PREAPPROVED and
# PENDING_BILLING_INFO; a campaign never has those, the SDK's own parameter check rejects them
# for campaigns, and Graph has refused them there before (code 100, subcode 1487561 "Run
# Status not valid"), so they are not sent. A status missing here loses its campaigns' rows.
CAMPAIGN_STATUSES = ("ACTIVE", "PAUSED", "IN_PROCESS", "WITH_ISSUES", "ARCHIVED", "DELETED")

# Pages one walk (one list, one insights window of at most 30 days) may take before it is
# taken for endless pagination. The biggest real walks stay far below: an ad account keeps at
# most 50,000 archived objects (Meta's Ads blog, "Deleted versus Archived") plus a few
# thousand live campaigns, 100 per page; a 30-day window of daily campaign insights at 500 rows a page reaches 2,000 pages
# only with 33,000 campaigns delivering every day. Repeats are caught long before the cap.
MAX_PAGES_PER_WALK = 2000

# "purchase" is Meta's deduplicated purchase count; adding the pixel-only
# ("offsite_conversion.fb_pixel_purchase") or cross-channel ("omni_purchase") spellings of
# the same purchases would count each one two or three times.
DEFAULT_CONVERSION_ACTION_TYPES = ("purchase",)

# Currencies Meta writes budgets for without a minor unit ("offset 1" in Meta's currency
# table); several of them have cents in ISO 4217, so money.minor_units_per_unit is not enough.
_META_OFFSET_ONE = frozenset("CLP COP CRC HUF ISK IDR JPY KRW PYG TWD VND".split())

_RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, *range(80000, 80015)})
_APP_RATE_LIMIT_CODES = frozenset({4})
_PERMISSION_CODES = frozenset({10, *range(200, 300)})
_TOKEN_INVALID_CODES = frozenset({102, 190})
_TOKEN_SUBCODES = {
    458: "the user removed the app",
    459: "the user's account is checkpointed",
    460: "the user changed their password",
    463: "the token expired",
    464: "the user is unconfirmed",
    467: "the token is invalid (the user logged out)",
    492: "the session is invalid",
}

# Waits when a rate-limit error carries no estimate: an app-level limit lasts longer.
DEFAULT_APP_LIMIT_WAIT_SECONDS = 300.0
DEFAULT_ACCOUNT_LIMIT_WAIT_SECONDS = 60.0
_LONG_DEFAULT_WAIT_CODES = frozenset({4, 17})

# Above this usage percentage the client pauses before each request, growing linearly
# to MAX_USAGE_PAUSE_SECONDS at 100%.
DEFAULT_USAGE_THROTTLE_PCT = 75.0
MAX_USAGE_PAUSE_SECONDS = 10.0

# Async report polling: interval doubles from the first to the last value.
ASYNC_MAX_POLLS = 40
ASYNC_FIRST_POLL_SECONDS = 1.0
ASYNC_MAX_POLL_SECONDS = 30.0
_ASYNC_DONE = "Job Completed"
_ASYNC_FAILED = frozenset({"Job Failed", "Job Skipped"})

_BUCKET_PERCENTAGES = ("call_count", "total_cputime", "total_time")

# urllib3 logs every request line (path and query, so the token) at DEBUG.
_URLLIB3_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.util.retry",
)


class _RedactingFilter(logging.Filter):
    """Rewrites a log record's text through ``redact`` before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record must not break logging
            return True
        cleaned = redact(text)
        if cleaned != text or record.args:
            record.msg, record.args = cleaned, ()
        return True


def _guard_library_logs() -> None:
    for name in _URLLIB3_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
            logger.addFilter(_RedactingFilter())


def account_id_digits(raw: object) -> str:
    """An ad account id as digits (``act_123`` or ``123`` -> ``123``). Anything else is a
    ``PermanentError``: retrying cannot fix it."""
    text = str(raw or "").strip()
    if text.lower().startswith("act_"):
        text = text[4:]
    if not text.isdigit():
        raise PermanentError(
            f"facebook: ad account id {redact(raw)!r} is not an ad account id "
            "(digits, optionally prefixed act_)",
            platform=PLATFORM,
        )
    return text


def budget_micros(value: object, currency: str) -> int | None:
    """A Graph budget string in the currency's minor unit as micros of the currency
    (USD ``"5000"`` -> 50_000_000; JPY ``"5000"`` -> 5_000_000_000). Zero or missing: None."""
    amount = to_decimal(value)
    if amount == 0:
        return None
    return to_micros(amount / _budget_offset(currency))


def _budget_offset(currency: str) -> int:
    if currency.upper() in _META_OFFSET_ONE:
        return 1
    return minor_units_per_unit(currency)


def status_filter(field: str) -> str:
    """A Graph ``filtering`` value asking for every campaign status on ``field``
    (``effective_status`` on the campaigns edge, ``campaign.effective_status`` in insights)."""
    return json.dumps(
        [{"field": field, "operator": "IN", "value": list(CAMPAIGN_STATUSES)}], separators=(",", ":")
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _json_header(headers: Mapping[str, str], name: str) -> Any:
    raw = headers.get(name)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _number(value: object) -> float:
    # Usage percentages are not money: a float is fine, garbage reads as 0.
    if isinstance(value, bool) or not isinstance(value, (str, SupportsFloat)):
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class Usage:
    """What the usage headers of one answer say: the highest percentage of any limit,
    whose limit it is (``app`` or ``account``), and the announced block in seconds."""

    def __init__(self, pct: float = 0.0, scope: str = "account", regain_seconds: float = 0.0):
        self.pct = pct
        self.scope = scope
        self.regain_seconds = regain_seconds

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Usage:
        usage = cls()
        app = _json_header(headers, "x-app-usage")
        if isinstance(app, dict):
            usage._see(max((_number(v) for v in app.values()), default=0.0), "app")
        buc = _json_header(headers, "x-business-use-case-usage")
        if isinstance(buc, dict):
            for buckets in buc.values():
                for bucket in buckets if isinstance(buckets, list) else []:
                    if not isinstance(bucket, dict):
                        continue
                    pct = max(_number(bucket.get(k)) for k in _BUCKET_PERCENTAGES)
                    usage._see(pct, "account")
                    minutes = _number(bucket.get("estimated_time_to_regain_access"))
                    usage.regain_seconds = max(usage.regain_seconds, minutes * 60.0)
        account = _json_header(headers, "x-ad-account-usage")
        if isinstance(account, dict):
            usage._see(_number(account.get("acc_id_util_pct")), "account")
        return usage

    def _see(self, pct: float, scope: str) -> None:
        if pct > self.pct:
            self.pct, self.scope = pct, scope


class _DataTooLarge(PermanentError):
    """The request asked for too much data (split the window or go async)."""


class _VersionSunset(PermanentError):
    """Code 2635: the configured API version is no longer served."""


_TOO_MUCH_DATA = "reduce the amount of data"
_DEPRECATED_VERSION = 2635


def _too_much_data(code: int | None, subcode: int | None, error: Mapping[str, Any]) -> bool:
    """Graph's "Please reduce the amount of data you're asking for, then retry your
    request": HTTP 500 with code 1 and usually no subcode; sometimes subcode 99 with the
    phrase in ``error_user_msg`` and "An unknown error occurred" as the message."""
    if code != 1:
        return False
    if subcode == 99:
        return True
    said = " ".join(str(error.get(k) or "") for k in ("message", "error_user_msg", "error_user_title"))
    return _TOO_MUCH_DATA in said.lower()


def _graph_error(error: Mapping[str, Any], response: Response) -> Exception:
    code = _int_or_none(error.get("code"))
    subcode = _int_or_none(error.get("error_subcode"))
    detail = short(error.get("message") or error.get("error_user_msg") or "no message")
    ids = f"code {code}" + (f", subcode {subcode}" if subcode else "")
    trace = error.get("fbtrace_id")
    if trace:
        ids += f", fbtrace_id {short(trace)}"
    text = f"{detail} ({ids})"
    if code in _TOKEN_INVALID_CODES:
        meaning = _TOKEN_SUBCODES.get(subcode or 0, "the token is invalid or was revoked")
        return AuthRevoked(
            f"facebook: the access token is no longer valid ({meaning}); the connection "
            f"must be re-authorised. Graph said: {text}",
            platform=PLATFORM,
            reason=f"Facebook access token invalid: {meaning} ({ids})",
            definitive=True,
        )
    if code in _RATE_LIMIT_CODES:
        usage = Usage.from_headers(response.headers)
        if usage.regain_seconds > 0:
            wait = usage.regain_seconds
        elif code in _LONG_DEFAULT_WAIT_CODES:
            wait = DEFAULT_APP_LIMIT_WAIT_SECONDS
        else:
            wait = DEFAULT_ACCOUNT_LIMIT_WAIT_SECONDS
        scope = "app" if code in _APP_RATE_LIMIT_CODES else "account"
        return RateLimited(
            f"facebook: rate limited, retry in {wait:g}s: {text}",
            retry_after=wait,
            scope=scope,
            platform=PLATFORM,
        )
    if _too_much_data(code, subcode, error):
        return _DataTooLarge(f"facebook: too much data requested: {text}", platform=PLATFORM)
    if code == _DEPRECATED_VERSION:
        return _VersionSunset(f"facebook: API version no longer served: {text}", platform=PLATFORM)
    if error.get("is_transient") is True or code in (1, 2):
        return TransientError(f"facebook: temporary Graph error: {text}", platform=PLATFORM)
    if code in _PERMISSION_CODES:
        return PermanentError(
            f"facebook: the token lacks permission for this ad account: {text}",
            platform=PLATFORM,
        )
    if code in (100, 803):
        return PermanentError(f"facebook: unknown ad account or invalid request: {text}", platform=PLATFORM)
    if response.status >= 500:
        return TransientError(f"facebook: HTTP {response.status}: {text}", platform=PLATFORM)
    return PermanentError(f"facebook: Graph error: {text}", platform=PLATFORM)


def classify(response: Response, body: Any) -> None:
    """Raise the clearlift error a Graph answer stands for; return for a good answer."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        raise _graph_error(error, response)
    status = response.status
    if status < 400:
        return
    if status >= 500 or status == 408:
        raise TransientError(f"facebook: HTTP {status}", platform=PLATFORM)
    if status == 429:
        raise RateLimited(
            "facebook: HTTP 429 too many requests",
            retry_after=response.retry_after(DEFAULT_ACCOUNT_LIMIT_WAIT_SECONDS),
            platform=PLATFORM,
        )
    if status in (401, 403):
        raise AuthRevoked(
            f"facebook: HTTP {status} without a Graph error; the token may be invalid",
            platform=PLATFORM,
            definitive=False,
        )
    raise PermanentError(f"facebook: HTTP {status}", platform=PLATFORM)


class FacebookAdsClient(AdsClient):
    """Campaigns and daily campaign insights of one ad account.

    Connection settings read: ``conversion_action_types`` (list of Graph action types
    summed into conversions; default ``["purchase"]``), ``insights_mode`` (``"async"``
    forces async reports), ``usage_throttle_pct`` (default 75)."""

    platform = PLATFORM
    max_window_days = 30
    default_lookback_days = 3
    attribution_window_days = 28

    def __init__(self, ctx: PlatformContext, credentials: Credentials):
        super().__init__(ctx, credentials)
        redaction.register(credentials.access_token, ctx.settings.facebook_app_secret)
        _guard_library_logs()
        self.account_digits = account_id_digits(ctx.account_id)
        self.base = f"{ctx.settings.facebook_url}/{ctx.settings.facebook_api_version}"
        self.http = client_for(ctx, PLATFORM)
        self.http.observers.append(self._observe_usage)
        self._usage = Usage()
        self._blocked_until: float | None = None
        self._blocked_scope = "account"
        self._account: Account | None = None
        self.throttle_pct = (
            _number(ctx.connection_settings.get("usage_throttle_pct", DEFAULT_USAGE_THROTTLE_PCT))
            or DEFAULT_USAGE_THROTTLE_PCT
        )
        self.conversion_action_types = self._action_types(
            ctx.connection_settings.get("conversion_action_types")
        )
        self.insights_mode = str(ctx.connection_settings.get("insights_mode") or "sync").lower()

    @staticmethod
    def _action_types(configured: object) -> frozenset[str]:
        if configured is None:
            return frozenset(DEFAULT_CONVERSION_ACTION_TYPES)
        if isinstance(configured, str):
            return frozenset(t.strip() for t in configured.split(",") if t.strip())
        if isinstance(configured, (list, tuple, set, frozenset)):
            return frozenset(str(t).strip() for t in configured if str(t).strip())
        raise PermanentError(
            "facebook: connection setting conversion_action_types must be a list of action types",
            platform=PLATFORM,
        )

    # --- requests -------------------------------------------------------------------

    @property
    def account_path(self) -> str:
        return f"act_{self.account_digits}"

    def _observe_usage(self, response: Response) -> None:
        usage = Usage.from_headers(response.headers)
        self._usage = usage
        if usage.pct >= 100 and usage.regain_seconds > 0:
            self._blocked_until = self.ctx.clock.time() + usage.regain_seconds
            self._blocked_scope = usage.scope

    def _before_request(self) -> None:
        """Stop while a limit is blocking; pause while usage is near a limit."""
        now = self.ctx.clock.time()
        if self._blocked_until is not None:
            if now < self._blocked_until:
                wait = self._blocked_until - now
                raise RateLimited(
                    f"facebook: usage limit reached, access regained in about {wait:.0f}s",
                    retry_after=wait,
                    scope=self._blocked_scope,
                    platform=PLATFORM,
                )
            self._blocked_until = None
        pause = self.usage_pause(self._usage.pct)
        if pause > 0:
            self.ctx.clock.sleep(pause)

    def usage_pause(self, pct: float) -> float:
        """Seconds to wait before the next request at usage ``pct`` percent."""
        if pct <= self.throttle_pct:
            return 0.0
        share = min(1.0, (pct - self.throttle_pct) / max(1.0, 100.0 - self.throttle_pct))
        return round(MAX_USAGE_PAUSE_SECONDS * share, 3)

    def _call(self, method: str, url: str, params: Mapping[str, Any]) -> dict[str, Any]:
        self._before_request()
        fields = {**params, "access_token": self.credentials.access_token}
        try:
            if method == "GET":
                body = self.http.request(method, url, classify=classify, params=fields)
            else:  # as Graph SDKs do, a POST carries its parameters in a form body
                body = self.http.request(method, url, classify=classify, data=fields)
        except _VersionSunset:
            raise PermanentError(
                self._sunset_message(), platform=PLATFORM, hint=f"set {versions.VERSION_SETTINGS[PLATFORM]}"
            ) from None
        if not isinstance(body, dict):
            raise TransientError("facebook: answer is not a JSON object", platform=PLATFORM)
        return body

    def _sunset_message(self) -> str:
        version = self.ctx.settings.facebook_api_version
        sunset = versions.SUNSETS[PLATFORM].get(version)
        text = versions.sunset_message(PLATFORM, version, sunset, self.ctx.clock.now().date())
        return f"{text} (Graph answered error code {_DEPRECATED_VERSION})"

    def _follow(self, next_url: str) -> tuple[str, dict[str, str]]:
        """The next page's URL on the configured host, and its query without the token."""
        parts = urlsplit(next_url)
        # The token only ever goes to the configured Graph host, whatever `next` names.
        base = urlsplit(self.ctx.settings.facebook_url)
        if (parts.scheme, parts.netloc) == (base.scheme, base.netloc):
            url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        else:
            url = f"{self.ctx.settings.facebook_url}{parts.path}"
        query = {k: v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "access_token"}
        return url, query

    def _pages(self, url: str, params: Mapping[str, Any], what: str) -> Iterator[list[dict[str, Any]]]:
        """The pages of one list, following ``paging.next``; ``what`` names it in errors."""
        query: Mapping[str, Any] = params
        guard = PageGuard(PLATFORM, what, MAX_PAGES_PER_WALK)
        cursor: Any = [url, sorted((k, str(v)) for k, v in params.items())]
        while True:
            body = self._call("GET", url, query)
            data = body.get("data")
            if not isinstance(data, list):
                raise TransientError("facebook: list answer without a data array", platform=PLATFORM)
            rows = [row for row in data if isinstance(row, dict)]
            paging = body.get("paging")
            next_url = paging.get("next") if isinstance(paging, dict) else None
            guard.page(rows, cursor, more=bool(next_url))
            yield rows
            if not next_url:
                return
            url, query = self._follow(str(next_url))
            cursor = [url, sorted(query.items())]

    def _progress(self, phase: str, done: int, total: int | None) -> None:
        if self.ctx.progress is not None:
            self.ctx.progress(phase, done, total)

    # --- the interface -----------------------------------------------------------------

    def account(self) -> Account:
        """The ad account's currency, time zone and name (fetched once per client)."""
        if self._account is None:
            body = self._call("GET", f"{self.base}/{self.account_path}", {"fields": ACCOUNT_FIELDS})
            currency = str(body.get("currency") or "").upper()
            time_zone = str(body.get("timezone_name") or "")
            if not currency or not time_zone:
                raise TransientError(
                    "facebook: ad account answer lacks currency or timezone_name",
                    platform=PLATFORM,
                )
            self._account = Account(
                account_id=self.account_digits,
                currency=currency,
                time_zone=time_zone,
                name=body.get("name"),
            )
        return self._account

    def campaigns(self) -> Iterator[Campaign]:
        """Every campaign of the account, page by page; budgets in micros of the account
        currency (daily budget, else lifetime budget, else None)."""
        currency = self.account().currency
        url = f"{self.base}/{self.account_path}/campaigns"
        params = {
            "fields": CAMPAIGN_FIELDS,
            "limit": CAMPAIGN_PAGE_SIZE,
            "filtering": status_filter("effective_status"),
        }
        done = 0
        for page in self._pages(url, params, "campaigns"):
            for row in page:
                yield self._campaign(row, currency)
            done += len(page)
            self._progress("campaigns", done, None)

    @staticmethod
    def _campaign(row: Mapping[str, Any], currency: str) -> Campaign:
        try:
            budget = budget_micros(row.get("daily_budget"), currency)
            if budget is None:
                budget = budget_micros(row.get("lifetime_budget"), currency)
            campaign_id = str(row["id"])
        except (KeyError, ValueError) as exc:
            raise TransientError(
                f"facebook: malformed campaign row: {short(exc)}", platform=PLATFORM
            ) from None
        return Campaign(
            campaign_id=campaign_id,
            campaign_name=row.get("name"),
            status=row.get("status") or row.get("effective_status"),
            objective=row.get("objective"),
            budget_micros=budget,
        )

    def daily_metrics(self, since: date, until: date) -> Iterator[DailyMetric]:
        """Daily campaign insights for ``since``..``until`` inclusive, one row per campaign
        and day with delivery (Graph leaves out empty days).

        ``conversions`` sums the ``actions`` whose ``action_type`` is in
        ``conversion_action_types`` and ``conversion_value_micros`` the matching
        ``action_values``. The default is only ``purchase``: Meta reports the same purchase
        again as ``offsite_conversion.fb_pixel_purchase`` (pixel) and ``omni_purchase``
        (all channels), so summing those spellings would double or triple count. Windows
        Graph finds too large are split in halves down to one day, then read through an
        async report; each (campaign, day) is yielded once even when a split repeats it."""
        if since > until:
            return
        seen: set[tuple[str, date]] = set()
        total_days = (until - since).days + 1
        step = timedelta(days=self.max_window_days or total_days)
        start = since
        while start <= until:
            end = min(until, start + step - timedelta(days=1))
            if self.insights_mode == "async":
                rows = self._async_insights(start, end)
            else:
                rows = self._window(start, end)
            for row in rows:
                metric = self._metric(row)
                key = (metric.campaign_id, metric.metric_date)
                if key not in seen:
                    seen.add(key)
                    yield metric
            self._progress("metrics", (end - since).days + 1, total_days)
            start = end + timedelta(days=1)

    # --- insights ---------------------------------------------------------------------

    def _insight_params(self, since: date, until: date) -> dict[str, Any]:
        return {
            "level": "campaign",
            "time_increment": 1,
            "time_range": json.dumps(
                {"since": since.isoformat(), "until": until.isoformat()}, separators=(",", ":")
            ),
            "fields": INSIGHT_FIELDS,
            "limit": INSIGHT_PAGE_SIZE,
            "filtering": status_filter("campaign.effective_status"),
        }

    def _window(self, since: date, until: date) -> Iterator[dict[str, Any]]:
        try:
            for page in self._pages(
                f"{self.base}/{self.account_path}/insights",
                self._insight_params(since, until),
                f"insights {since}..{until}",
            ):
                yield from page
        except _DataTooLarge:
            if since == until:
                yield from self._async_insights(since, until)
                return
            middle = since + timedelta(days=(until - since).days // 2)
            yield from self._window(since, middle)
            yield from self._window(middle + timedelta(days=1), until)

    def _async_insights(self, since: date, until: date) -> Iterator[dict[str, Any]]:
        started = self._call(
            "POST", f"{self.base}/{self.account_path}/insights", self._insight_params(since, until)
        )
        run_id = str(started.get("report_run_id") or "")
        if not run_id.isdigit():
            raise TransientError("facebook: async report answer without report_run_id", platform=PLATFORM)
        interval = ASYNC_FIRST_POLL_SECONDS
        for _ in range(ASYNC_MAX_POLLS):
            job = self._call("GET", f"{self.base}/{run_id}", {})
            status = str(job.get("async_status") or "")
            if status == _ASYNC_DONE:
                break
            if status in _ASYNC_FAILED:
                raise TransientError(
                    f"facebook: async insights report {run_id} ended with {status!r}",
                    platform=PLATFORM,
                )
            self.ctx.clock.sleep(interval)
            interval = min(ASYNC_MAX_POLL_SECONDS, interval * 2)
        else:
            raise TransientError(
                f"facebook: async insights report {run_id} not complete after {ASYNC_MAX_POLLS} polls",
                platform=PLATFORM,
            )
        for page in self._pages(
            f"{self.base}/{run_id}/insights",
            {"limit": INSIGHT_PAGE_SIZE},
            f"async report {run_id} ({since}..{until})",
        ):
            yield from page

    def _metric(self, row: Mapping[str, Any]) -> DailyMetric:
        try:
            return DailyMetric(
                campaign_id=str(row["campaign_id"]),
                metric_date=date.fromisoformat(str(row["date_start"])),
                impressions=to_int(row.get("impressions")),
                clicks=to_int(row.get("clicks")),
                spend_micros=to_micros(row.get("spend")),
                conversions=sum((to_decimal(v) for v in self._matching(row.get("actions"))), Decimal(0)),
                conversion_value_micros=sum(to_micros(v) for v in self._matching(row.get("action_values"))),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise TransientError(
                f"facebook: malformed insights row: {short(exc)}", platform=PLATFORM
            ) from None

    def _matching(self, actions: object) -> Iterator[object]:
        wanted = self.conversion_action_types
        for action in actions if isinstance(actions, list) else []:
            if isinstance(action, dict) and action.get("action_type") in wanted:
                yield action.get("value")


def _refresh_classify(response: Response, body: Any) -> None:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = _int_or_none(error.get("code"))
        message = str(error.get("message") or "")
        if code == 101 or (code == 1 and "client secret" in message.lower()):
            raise PermanentError(
                f"facebook: the app credentials were rejected: {short(message)} (code {code})",
                platform=PLATFORM,
                hint="check FACEBOOK_APP_ID and FACEBOOK_APP_SECRET",
            )
    classify(response, body)


# What exchanging a still-valid long-lived token returns is not in Meta's current docs (they
# only describe short-lived -> long-lived, "a different string than the original token").
# Meta's 2012 offline_access-removal notes said the endpoint only extends short-lived tokens
# and passes a long-lived one back without extending it, and connector users report the same
# token with an expires_in that counts down; others report a fresh ~60-day token, at most
# once a day. Both are handled: a later expiry (same or new token) is a renewal and is stored;
# the same token with no later expiry is not, and the run says so (and the next run tries
# again) instead of counting it as refreshed.
EXTENDED_BY_AT_LEAST = timedelta(hours=1)


class TokenNotExtended(TransientError):
    """Meta handed the same token back without a later expiry: nothing was renewed."""


def _extended(old: datetime | None, new: datetime | None) -> bool:
    if old is None:
        return True  # nothing to compare with: take what Meta says
    return new is not None and new > old + EXTENDED_BY_AT_LEAST


def refresh_token(ctx: PlatformContext, credentials: Credentials) -> TokenGrant | None:
    """Exchange the connection's long-lived token for one that lives longer (about 60 days).

    Raises ``MissingAppCredentials`` when FACEBOOK_APP_ID/SECRET are not set,
    ``AuthRevoked(definitive=True)`` when the token can no longer be exchanged (expired,
    revoked): Meta has no refresh token, so the user must reconnect; and
    ``TokenNotExtended`` (transient) when Meta hands the same token back without extending
    it."""
    app_id, secret = ctx.settings.facebook_app_id, ctx.settings.facebook_app_secret
    if not app_id or not secret:
        raise MissingAppCredentials(
            "FACEBOOK_APP_ID and FACEBOOK_APP_SECRET must be set to renew Facebook tokens"
        )
    redaction.register(credentials.access_token, secret)
    _guard_library_logs()
    url = f"{ctx.settings.facebook_url}/{ctx.settings.facebook_api_version}/oauth/access_token"
    params = {
        "grant_type": "fb_exchange_token",
        "client_id": app_id,
        "client_secret": secret,
        "fb_exchange_token": credentials.access_token,
    }
    body = client_for(ctx, PLATFORM).request("GET", url, classify=_refresh_classify, params=params)
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise TransientError("facebook: token exchange answer lacks access_token", platform=PLATFORM)
    redaction.register(token)
    expires_in = _int_or_none(body.get("expires_in"))
    expires_at: datetime | None = None
    if expires_in and expires_in > 0:
        expires_at = ctx.clock.now() + timedelta(seconds=expires_in)
    if token == credentials.access_token and not _extended(credentials.expires_at, expires_at):
        until = credentials.expires_at or expires_at
        when = f"; it still expires {until.strftime('%Y-%m-%d %H:%M UTC')}" if until else ""
        raise TokenNotExtended(
            f"facebook: Meta returned the same token without extending it{when}. Every "
            "refresh-tokens run tries again; if Meta never extends it, the user must reconnect "
            "the account before it expires",
            platform=PLATFORM,
        )
    return TokenGrant(access_token=token, expires_at=expires_at)
