"""TikTok Business API v1.3: advertiser info, campaigns and the daily campaign report.

TikTok answers errors with HTTP 200 and a non-zero ``code`` in the envelope
``{"code", "message", "request_id", "data"}``; ``classify`` turns those codes into
``clearlift_cli.errors``. Metric values arrive as strings or numbers; both are parsed
exactly.

Facts this module is built on (looked up 2026-11-29; doubts noted):
- Deleted campaigns are left out by default: ``campaign/get`` is asked with
  ``filtering={"secondary_status": "CAMPAIGN_STATUS_ALL"}`` and the integrated report with
  ``filtering=[{"field_name": "campaign_status", "filter_type": "IN", "filter_value":
  "[\"STATUS_ALL\"]"}]`` (what Airbyte's source-tiktok-marketing sends for
  ``include_deleted``), so a deleted campaign's past spend is kept.
- Conversion value: the BASIC report has total-value metrics at campaign level:
  ``total_complete_payment_rate`` is, despite its name, the total value of web "Complete
  Payment" events (TikTok's SDK maps it to ``time_attr_total_shopping_value``) and
  ``total_purchase_value`` the total value of in-app "Purchase" events. Their sum is stored
  as ``conversion_value_micros``, exactly, from the decimal text. ``conversions`` stays
  TikTok's ``conversion`` (the ad groups' optimisation events), as before.
- Time zone: advertiser/info's ``timezone`` ("Etc/GMT+8" style: a fixed GMT offset) is the
  zone reports are cut in; ``display_timezone`` is a region name for people (it may observe
  daylight saving time, which TikTok Ads Manager does not). ``stat_time_day``, and so
  ``metric_date``, is a day in ``timezone``.
- Tokens: advertiser tokens do not expire and are never renewed (see the registry entry).
- Paging ends at ``page_info.total_page``; a ``total_page`` that never ends over repeating
  rows is stopped by ``paging.PageGuard``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from clearlift_cli import redact as redaction
from clearlift_cli.errors import (
    AuthRevoked,
    PermanentError,
    RateLimited,
    TokenExpired,
    TransientError,
)
from clearlift_cli.money import to_decimal, to_int, to_micros
from clearlift_cli.platforms.base import (
    Account,
    AdsClient,
    Campaign,
    Credentials,
    DailyMetric,
    PlatformContext,
)
from clearlift_cli.platforms.http import Response, client_for, short
from clearlift_cli.platforms.paging import PageGuard

PLATFORM = "tiktok"
API_PATH = "/open_api/v1.3"
PAGE_SIZE = 1000
# TikTok rejects daily reports whose start_date..end_date spans more than 30 days.
REPORT_MAX_DAYS = 30
# Web "Complete Payment" total value and in-app "Purchase" total value (see the docstring).
VALUE_METRICS = ("total_complete_payment_rate", "total_purchase_value")
REPORT_METRICS = ("spend", "impressions", "clicks", "conversion", *VALUE_METRICS)
# Every campaign, deleted ones included (TikTok leaves those out unless asked).
CAMPAIGN_FILTER = {"secondary_status": "CAMPAIGN_STATUS_ALL"}
REPORT_FILTER = [{"field_name": "campaign_status", "filter_type": "IN", "filter_value": '["STATUS_ALL"]'}]
# Pages one walk (the campaign list, one report window of at most 30 days) may take before
# it is taken for endless pagination: at 1,000 rows a page, 1,000,000 rows, i.e. 33,000
# campaigns delivering every day of a 30-day window; TikTok caps an advertiser far lower.
MAX_PAGES_PER_WALK = 1000
# Seconds to wait when a rate-limit code carries no hint (TikTok never sends one).
DEFAULT_RATE_LIMIT_WAIT = 60.0

# code -> who has to wait: 40100 is the app's QPS limit, the others are per advertiser.
_RATE_LIMIT_SCOPE = {40100: "app", 40132: "account", 61000: "account"}
_TOKEN_EXPIRED = {40102}
_TOKEN_REVOKED = {40105: "access token is invalid or revoked"}
_REFRESH_REVOKED = {40103: "refresh token expired", 40107: "refresh token is invalid"}
_PERMANENT = {40001: "no permission", 40002: "invalid request parameter"}
_TRANSIENT = {50000}


def api_base(ctx: PlatformContext) -> str:
    return f"{ctx.settings.tiktok_url}{API_PATH}"


def _json_param(value: Any) -> str:
    """TikTok wants array/object query parameters as JSON text."""
    return json.dumps(value, separators=(",", ":"))


def classify(response: Response, body: Any) -> None:
    """Raise the ``clearlift_cli.errors`` exception for a TikTok error answer.

    HTTP-level failures first (429, 5xx, other 4xx), then the envelope's ``code``, which
    TikTok sets on HTTP 200 answers."""
    status = response.status
    if status == 429:
        raise RateLimited(
            "tiktok: HTTP 429 too many requests",
            retry_after=response.retry_after(DEFAULT_RATE_LIMIT_WAIT),
            scope="account",
            platform=PLATFORM,
        )
    if status >= 500:
        raise TransientError(f"tiktok: HTTP {status} server error", platform=PLATFORM)
    if status == 401:
        # TikTok signals auth problems in the envelope; a bare 401 may be a proxy glitch.
        raise AuthRevoked(
            "tiktok: HTTP 401 unauthorised",
            platform=PLATFORM,
            reason="HTTP 401",
            definitive=False,
        )
    if status >= 400:
        raise PermanentError(f"tiktok: HTTP {status} {short(response.text, 200)}", platform=PLATFORM)
    if body is None:
        return  # HttpClient reports an empty or unparsable body as transient
    if not isinstance(body, dict):
        raise TransientError("tiktok: answer is not a JSON object", platform=PLATFORM)
    if "code" not in body:
        raise TransientError("tiktok: answer has no envelope code", platform=PLATFORM)
    try:
        code = int(body["code"])
    except (TypeError, ValueError):
        raise TransientError("tiktok: answer has a non-numeric code", platform=PLATFORM) from None
    if code == 0:
        return
    raise error_for_code(code, str(body.get("message") or ""), body.get("request_id"))


def error_for_code(code: int, message: str, request_id: Any = None) -> Exception:
    """The exception for a non-zero TikTok envelope code (message redacted)."""
    text = f"tiktok: code {code}: {short(message) or 'no message'}"
    if request_id:
        text += f" (request_id {short(request_id)})"
    if code in _RATE_LIMIT_SCOPE:
        return RateLimited(
            text,
            retry_after=DEFAULT_RATE_LIMIT_WAIT,
            scope=_RATE_LIMIT_SCOPE[code],
            platform=PLATFORM,
        )
    if code in _TOKEN_EXPIRED:
        return TokenExpired(text, platform=PLATFORM)
    if code in _TOKEN_REVOKED:
        return AuthRevoked(text, platform=PLATFORM, reason=_TOKEN_REVOKED[code], definitive=True)
    if code in _REFRESH_REVOKED:
        return AuthRevoked(text, platform=PLATFORM, reason=_REFRESH_REVOKED[code], definitive=True)
    if code in _TRANSIENT:
        return TransientError(text, platform=PLATFORM)
    return PermanentError(text, platform=PLATFORM)


def _metric_decimal(value: Any, name: str) -> Decimal:
    # TikTok writes "-" for a metric it cannot compute for the row; that is no activity.
    if value in (None, "", "-"):
        return Decimal(0)
    try:
        return to_decimal(value)
    except ValueError:
        raise PermanentError(f"tiktok: metric {name} is not a number: {value!r}", platform=PLATFORM) from None


def parse_campaign(row: dict[str, Any]) -> Campaign:
    """One ``campaign/get`` list item as a ``Campaign`` (budget in exact micros). A deleted
    campaign (secondary status ``CAMPAIGN_STATUS_DELETE``) gets status ``DELETE``, else the
    ``operation_status`` (ENABLE/DISABLE)."""
    budget = row.get("budget")
    status = row.get("operation_status")
    if row.get("secondary_status") == "CAMPAIGN_STATUS_DELETE":
        status = "DELETE"
    return Campaign(
        campaign_id=str(row["campaign_id"]),
        campaign_name=row.get("campaign_name"),
        status=status,
        objective=row.get("objective_type"),
        channel=None,
        budget_micros=None if budget is None else to_micros(_metric_decimal(budget, "budget")),
    )


def parse_report_row(row: dict[str, Any]) -> DailyMetric:
    """One ``report/integrated/get`` row as a ``DailyMetric``."""
    dims = row.get("dimensions") or {}
    metrics = row.get("metrics") or {}
    day = str(dims.get("stat_time_day") or "")
    try:
        metric_date = date.fromisoformat(day[:10])
    except ValueError:
        raise PermanentError(
            f"tiktok: report row has no valid stat_time_day: {day!r}", platform=PLATFORM
        ) from None
    impressions = _metric_decimal(metrics.get("impressions"), "impressions")
    clicks = _metric_decimal(metrics.get("clicks"), "clicks")
    try:
        return DailyMetric(
            campaign_id=str(dims["campaign_id"]),
            metric_date=metric_date,
            impressions=to_int(impressions),
            clicks=to_int(clicks),
            spend_micros=to_micros(_metric_decimal(metrics.get("spend"), "spend")),
            conversions=_metric_decimal(metrics.get("conversion"), "conversion"),
            conversion_value_micros=sum(
                to_micros(_metric_decimal(metrics.get(name), name)) for name in VALUE_METRICS
            ),
        )
    except KeyError:
        raise PermanentError("tiktok: report row has no campaign_id", platform=PLATFORM) from None
    except ValueError as exc:
        raise PermanentError(f"tiktok: report row: {exc}", platform=PLATFORM) from None


def report_windows(since: date, until: date, max_days: int = REPORT_MAX_DAYS) -> Iterator[tuple[date, date]]:
    """``since``..``until`` (inclusive) cut into consecutive windows of at most
    ``max_days`` days each."""
    start = since
    while start <= until:
        end = min(until, start + timedelta(days=max_days - 1))
        yield start, end
        start = end + timedelta(days=1)


class TikTokAdsClient(AdsClient):
    """Campaigns and daily campaign metrics of one TikTok advertiser."""

    platform = PLATFORM
    max_window_days = REPORT_MAX_DAYS
    default_lookback_days = 3
    # TikTok's click attribution window is 7 days; a connection opts in to a daily re-read
    # of it with settings.attribution_window_days = 7 (off by default, as before).
    attribution_window_days = None

    def __init__(self, ctx: PlatformContext, credentials: Credentials):
        super().__init__(ctx, credentials)
        redaction.register(credentials.access_token, credentials.refresh_token)
        self.base = api_base(ctx)
        self.http = client_for(ctx, PLATFORM)

    @property
    def advertiser_id(self) -> str:
        return str(self.ctx.account_id)

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        body = self.http.request(
            "GET",
            f"{self.base}{path}",
            classify=classify,
            params=params,
            headers={"Access-Token": self.credentials.access_token},
        )
        data = body.get("data") if isinstance(body, dict) else None
        return data if isinstance(data, dict) else {}

    def _progress(self, phase: str, done: int, total: int | None) -> None:
        if self.ctx.progress is not None:
            self.ctx.progress(phase, done, total)

    def account(self) -> Account:
        data = self._get(
            "/advertiser/info/",
            {
                "advertiser_ids": _json_param([self.advertiser_id]),
                "fields": _json_param(["currency", "timezone", "name"]),
            },
        )
        rows = data.get("list") or []
        if not rows:
            raise PermanentError(
                f"tiktok: advertiser {self.advertiser_id} not found or not authorised",
                platform=PLATFORM,
            )
        info = rows[0]
        currency = str(info.get("currency") or "").upper()
        if not currency:
            raise PermanentError("tiktok: advertiser info has no currency", platform=PLATFORM)
        return Account(
            account_id=self.advertiser_id,
            currency=currency,
            # The reporting zone, kept as TikTok spells it ("Etc/GMT+8": a fixed offset);
            # never display_timezone, whose daylight saving time reports do not follow.
            time_zone=str(info.get("timezone") or "Etc/UTC"),
            name=info.get("name"),
        )

    def _pages(
        self, path: str, params: dict[str, Any], what: str
    ) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
        guard = PageGuard(PLATFORM, what, MAX_PAGES_PER_WALK)
        page = 1
        while True:
            data = self._get(path, {**params, "page": page, "page_size": PAGE_SIZE})
            rows = data.get("list") or []
            info = data.get("page_info") or {}
            total_page = to_int(info.get("total_page") or 0)
            # An empty page ends the walk even if total_page disagrees.
            more = page < total_page and bool(rows)
            guard.page(rows, more=more)  # page numbers never repeat: only rows can
            yield rows, info
            if not more:
                return
            page += 1

    def campaigns(self) -> Iterator[Campaign]:
        done = 0
        params = {"advertiser_id": self.advertiser_id, "filtering": _json_param(CAMPAIGN_FILTER)}
        for rows, info in self._pages("/campaign/get/", params, "campaigns"):
            for row in rows:
                yield parse_campaign(row)
            done += len(rows)
            total = info.get("total_number")
            self._progress("campaigns", done, None if total is None else to_int(total))

    def daily_metrics(self, since: date, until: date) -> Iterator[DailyMetric]:
        total_days = max(0, (until - since).days + 1)
        for start, end in report_windows(since, until):
            params = {
                "advertiser_id": self.advertiser_id,
                "report_type": "BASIC",
                "data_level": "AUCTION_CAMPAIGN",
                "dimensions": _json_param(["campaign_id", "stat_time_day"]),
                "metrics": _json_param(list(REPORT_METRICS)),
                "start_date": start.isoformat(),
                "end_date": end.isoformat(),
                "filtering": _json_param(REPORT_FILTER),
            }
            for rows, _info in self._pages("/report/integrated/get/", params, f"report {start}..{end}"):
                for row in rows:
                    yield parse_report_row(row)
            self._progress("metrics", (end - since).days + 1, total_days)
