"""TikTok Business API v1.3 sandbox: advertiser info, campaigns and the integrated report,
in TikTok's envelope ``{"code", "message", "request_id", "data"}`` with errors as HTTP 200
and a non-zero ``code``.

Tokens are checked with ``self.tokens`` (``Access-Token`` header): expired -> 40102,
unknown or revoked -> 40105. Advertiser tokens do not expire (issue them with
``ttl=None``) and there is no refresh endpoint for them: ``/tt_user/oauth2/refresh_token/``
belongs to TikTok account (creator) tokens, another product, and is not served here. Every
advertiser id is valid; its campaigns and daily metrics are derived deterministically from
the id. Metric values are served as strings for campaigns at even positions and as JSON
numbers for the others, so clients see both.

As TikTok does: deleted campaigns (every fifth, from the fourth) are left out of
``campaign/get`` unless ``filtering`` asks for ``CAMPAIGN_STATUS_ALL`` and out of the report
unless its ``filtering`` lists ``campaign_status`` ``STATUS_ALL``; advertiser info gives a
fixed-offset reporting ``timezone`` ("Etc/GMT+8") and a region ``display_timezone``, and a
report's days are cut in the former. ``configure_account(endless_pages=True)`` makes every
list answer ``total_page`` 10^9 over the same rows.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clearlift_cli.sandbox.data import days, rng
from clearlift_cli.sandbox.server import PlatformApp, Reply, Request

API_PATH = "/open_api/v1.3"
MAX_PAGE_SIZE = 1000
MAX_REPORT_DAYS = 30
METRICS = (
    "spend",
    "impressions",
    "clicks",
    "conversion",
    "total_complete_payment_rate",
    "total_purchase_value",
)
ENDLESS_TOTAL_PAGE = 10**9

MESSAGES = {
    40001: "No permission to operate advertiser.",
    40002: "Invalid parameter.",
    40100: "Too many requests. Requests made too frequently, please try again later.",
    40102: "Access token has expired.",
    40103: "Refresh token has expired.",
    40104: "Access token is null.",
    40105: "Access token is incorrect or has been revoked.",
    40107: "Refresh token is invalid.",
    40132: "Too many requests for this advertiser, please try again later.",
    50000: "System error, please try again later.",
    61000: "Your request has reached the rate limit of this advertiser.",
}

_OBJECTIVES = ("TRAFFIC", "CONVERSIONS", "REACH", "VIDEO_VIEWS", "LEAD_GENERATION", "PRODUCT_SALES")
_WORDS = ("Spring", "Launch", "Retarget", "Brand", "Promo", "Creator", "Holiday", "Always-on")


@dataclass
class AdvertiserConfig:
    campaigns: int
    currency: str
    time_zone: str  # advertiser info's `timezone`: the zone reports are cut in
    name: str
    page_size_cap: int = MAX_PAGE_SIZE
    display_timezone: str = "America/Los_Angeles"
    endless_pages: bool = False


class TikTokApp(PlatformApp):
    """TikTok sandbox. ``configure_account`` shapes an advertiser, ``fail_next`` makes the
    next requests answer an error code, ``campaign_rows``/``report_rows`` return the raw
    wire rows (every campaign, deleted ones included)."""

    platform = "tiktok"
    APP_CREDENTIALS = {
        "TIKTOK_APP_ID": "sandbox-tiktok-app-id",
        "TIKTOK_CLIENT_SECRET": "sandbox-tiktok-client-secret",
    }

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self._lock = threading.Lock()
        self._accounts: dict[str, AdvertiserConfig] = {}

    def authorize(self, account_id: str, ttl: float | None = None) -> tuple[str, str | None]:
        """An advertiser token: it does not expire and comes without a refresh token."""
        return self.tokens.issue(None)[0], None

    # --- configuration ------------------------------------------------------------------

    def configure_account(
        self,
        advertiser_id: str,
        *,
        campaigns: int | None = None,
        currency: str | None = None,
        time_zone: str | None = None,
        name: str | None = None,
        page_size_cap: int | None = None,
        display_timezone: str | None = None,
        endless_pages: bool | None = None,
    ) -> AdvertiserConfig:
        """Override the generated settings of one advertiser (unset keeps the default)."""
        config = self.account_config(advertiser_id)
        if campaigns is not None:
            config.campaigns = campaigns
        if currency is not None:
            config.currency = currency
        if time_zone is not None:
            config.time_zone = time_zone
        if name is not None:
            config.name = name
        if page_size_cap is not None:
            config.page_size_cap = page_size_cap
        if display_timezone is not None:
            config.display_timezone = display_timezone
        if endless_pages is not None:
            config.endless_pages = endless_pages
        return config

    def account_config(self, advertiser_id: str) -> AdvertiserConfig:
        advertiser_id = str(advertiser_id)
        with self._lock:
            if advertiser_id not in self._accounts:
                r = rng("tiktok", advertiser_id, "account")
                self._accounts[advertiser_id] = AdvertiserConfig(
                    campaigns=r.randint(3, 8),
                    currency="USD",
                    time_zone="Etc/GMT+8",
                    name=f"Sandbox Advertiser {advertiser_id}",
                )
            return self._accounts[advertiser_id]

    def fail_next(self, code: int, *, times: int = 1, path: str = ".*", message: str | None = None) -> None:
        """Answer the next ``times`` requests whose path matches ``path`` with HTTP 200 and
        envelope ``code`` (e.g. 40100, 50000, 40105)."""
        body = {
            "code": code,
            "message": message if message is not None else MESSAGES.get(code, "Error."),
            "request_id": f"sandbox-fault-{code}",
            "data": {},
        }
        self.faults.add("status", path=path, times=times, status=200, body=body)

    # --- wire data ----------------------------------------------------------------------

    def campaign_rows(self, advertiser_id: str) -> list[dict[str, Any]]:
        """Every campaign of the advertiser exactly as ``campaign/get`` serves it."""
        advertiser_id = str(advertiser_id)
        config = self.account_config(advertiser_id)
        rows = []
        for index in range(config.campaigns):
            r = rng("tiktok", advertiser_id, "campaign", index)
            mode = r.choice(
                ("BUDGET_MODE_DAY", "BUDGET_MODE_DAY", "BUDGET_MODE_TOTAL", "BUDGET_MODE_INFINITE")
            )
            if mode == "BUDGET_MODE_INFINITE":
                budget: int | float = 0
            elif r.random() < 0.5:
                budget = r.randint(20, 500)
            else:
                budget = r.randint(2000, 50000) / 10  # e.g. 50.5: a decimal budget
            # (the draws keep their old order, so ids and names stay what they were)
            campaign_id = str(1_700_000_000_000_000_000 + r.randint(0, 10**17) * 10 + index)
            name = f"{r.choice(_WORDS)} {index + 1}"
            enabled = r.random() < 0.75
            deleted = index % 5 == 3
            rows.append(
                {
                    "advertiser_id": advertiser_id,
                    "campaign_id": campaign_id,
                    "campaign_name": name,
                    "budget": budget,
                    "budget_mode": mode,
                    "operation_status": "ENABLE" if enabled and not deleted else "DISABLE",
                    "secondary_status": (
                        "CAMPAIGN_STATUS_DELETE"
                        if deleted
                        else "CAMPAIGN_STATUS_ENABLE"
                        if enabled
                        else "CAMPAIGN_STATUS_DISABLE"
                    ),
                    "objective_type": r.choice(_OBJECTIVES),
                    "create_time": "2023-06-01 00:00:00",
                }
            )
        return rows

    def _today(self, time_zone: str) -> date:
        """Today in the advertiser's reporting zone (UTC for a name zoneinfo lacks)."""
        try:
            zone: Any = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = UTC
        return datetime.fromtimestamp(self.clock(), zone).date()

    def report_rows(self, advertiser_id: str, since: date, until: date) -> list[dict[str, Any]]:
        """Daily campaign rows for ``since``..``until`` as the report serves them when asked
        for every campaign status (all metrics), ordered by day then campaign. No rows for
        days after today in the advertiser's reporting ``timezone``."""
        advertiser_id = str(advertiser_id)
        config = self.account_config(advertiser_id)
        campaigns = self.campaign_rows(advertiser_id)
        today = self._today(config.time_zone)
        rows = []
        for day in days(since, min(until, today)):
            for index, campaign in enumerate(campaigns):
                r = rng("tiktok", advertiser_id, campaign["campaign_id"], day.isoformat())
                if r.random() < 0.15:
                    continue  # no delivery that day: TikTok serves no row
                impressions = r.randint(100, 20000)
                clicks = r.randint(0, impressions // 30)
                conversion = r.randint(0, clicks // 8) if clicks >= 8 else 0
                cents = r.randint(0, 60000)
                # Web complete payments and, for some campaigns, in-app purchases.
                web_cents = sum(r.randint(500, 20000) for _ in range(r.randint(0, conversion)))
                app_cents = r.randint(0, 9000) if index % 3 == 1 else 0
                if index % 2 == 0:
                    metrics: dict[str, Any] = {
                        "spend": f"{cents // 100}.{cents % 100:02d}",
                        "impressions": str(impressions),
                        "clicks": str(clicks),
                        "conversion": str(conversion),
                        "total_complete_payment_rate": f"{web_cents // 100}.{web_cents % 100:02d}",
                        "total_purchase_value": f"{app_cents // 100}.{app_cents % 100:02d}",
                    }
                else:
                    metrics = {
                        "spend": cents / 100,
                        "impressions": impressions,
                        "clicks": clicks,
                        "conversion": conversion,
                        "total_complete_payment_rate": web_cents / 100,
                        "total_purchase_value": app_cents / 100,
                    }
                rows.append(
                    {
                        "dimensions": {
                            "campaign_id": campaign["campaign_id"],
                            "stat_time_day": f"{day.isoformat()} 00:00:00",
                        },
                        "metrics": metrics,
                    }
                )
        return rows

    # --- HTTP -----------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        if not request.path.startswith(API_PATH + "/"):
            return Reply(
                404, {"code": 40400, "message": "Not found", "request_id": _request_id(), "data": {}}
            )
        route = request.path[len(API_PATH) :]
        routes = {
            "/advertiser/info/": self._advertiser_info,
            "/campaign/get/": self._campaigns,
            "/report/integrated/get/": self._report,
        }
        handler = routes.get(route)
        if handler is None or request.method != "GET":
            return Reply(
                404, {"code": 40400, "message": "Not found", "request_id": _request_id(), "data": {}}
            )
        state = self.tokens.check(request.headers.get("access-token"))
        if state == "missing":
            return _error(40104)
        if state == "expired":
            return _error(40102)
        if state != "ok":
            return _error(40105)
        try:
            return _ok(handler(request.query))
        except _ParamError as exc:
            return _error(40002, str(exc))

    def _advertiser_info(self, query: dict[str, str]) -> dict[str, Any]:
        ids = _json_list(query, "advertiser_ids")
        fields = _json_list(query, "fields", required=False)
        out = []
        for advertiser_id in ids:
            config = self.account_config(str(advertiser_id))
            full = {
                "advertiser_id": str(advertiser_id),
                "name": config.name,
                "currency": config.currency,
                "timezone": config.time_zone,
                "display_timezone": config.display_timezone,
                "status": "STATUS_ENABLE",
            }
            out.append({k: v for k, v in full.items() if not fields or k in fields or k == "advertiser_id"})
        return {"list": out}

    def _paged(
        self, rows: list[dict[str, Any]], query: dict[str, str], config: AdvertiserConfig
    ) -> dict[str, Any]:
        page = _positive_int(query, "page", 1)
        page_size = _positive_int(query, "page_size", 10)
        if page_size > MAX_PAGE_SIZE:
            raise _ParamError(f"page_size: must be between 1 and {MAX_PAGE_SIZE}")
        page_size = min(page_size, config.page_size_cap)
        total_page = (len(rows) + page_size - 1) // page_size
        chunk = rows[(page - 1) * page_size : page * page_size]
        if config.endless_pages:  # a broken total_page over the same rows, forever
            total_page, chunk = ENDLESS_TOTAL_PAGE, rows[:page_size]
        return {
            "list": chunk,
            "page_info": {
                "page": page,
                "page_size": page_size,
                "total_number": len(rows),
                "total_page": total_page,
            },
        }

    def _campaigns(self, query: dict[str, str]) -> dict[str, Any]:
        advertiser_id = _required(query, "advertiser_id")
        config = self.account_config(advertiser_id)
        wanted = _campaign_filter(query)
        rows = [c for c in self.campaign_rows(advertiser_id) if wanted(c["secondary_status"])]
        return self._paged(rows, query, config)

    def _report(self, query: dict[str, str]) -> dict[str, Any]:
        advertiser_id = _required(query, "advertiser_id")
        if query.get("report_type") != "BASIC":
            raise _ParamError("report_type: only BASIC is supported by the sandbox")
        if query.get("data_level") != "AUCTION_CAMPAIGN":
            raise _ParamError("data_level: only AUCTION_CAMPAIGN is supported by the sandbox")
        dimensions = _json_list(query, "dimensions")
        if sorted(dimensions) != ["campaign_id", "stat_time_day"]:
            raise _ParamError('dimensions: must be ["campaign_id","stat_time_day"]')
        metrics = _json_list(query, "metrics")
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise _ParamError(f"metrics: unknown metric {unknown[0]!r}")
        try:
            start = date.fromisoformat(_required(query, "start_date"))
            end = date.fromisoformat(_required(query, "end_date"))
        except ValueError:
            raise _ParamError("start_date/end_date: must be YYYY-MM-DD") from None
        if end < start:
            raise _ParamError("end_date: must not be before start_date")
        if (end - start).days + 1 > MAX_REPORT_DAYS:
            raise _ParamError(
                f"The date range between start_date and end_date cannot exceed {MAX_REPORT_DAYS} days."
            )
        deleted = {
            c["campaign_id"]
            for c in self.campaign_rows(advertiser_id)
            if c["secondary_status"] == "CAMPAIGN_STATUS_DELETE"
        }
        with_deleted = _report_includes_deleted(query)
        rows = [
            {
                "dimensions": row["dimensions"],
                "metrics": {k: v for k, v in row["metrics"].items() if k in metrics},
            }
            for row in self.report_rows(advertiser_id, start, end)
            if with_deleted or row["dimensions"]["campaign_id"] not in deleted
        ]
        config = self.account_config(advertiser_id)
        return self._paged(rows, query, config)


class _ParamError(ValueError):
    pass


def _request_id() -> str:
    return secrets.token_hex(10)


def _ok(data: dict[str, Any]) -> Reply:
    return Reply(200, {"code": 0, "message": "OK", "request_id": _request_id(), "data": data})


def _error(code: int, detail: str | None = None) -> Reply:
    message = MESSAGES.get(code, "Error.") if detail is None else detail
    return Reply(200, {"code": code, "message": message, "request_id": _request_id(), "data": {}})


def _campaign_filter(query: dict[str, str]):
    """Which secondary statuses ``campaign/get`` serves: its ``filtering`` object's
    ``secondary_status`` (``CAMPAIGN_STATUS_ALL``, ``CAMPAIGN_STATUS_NOT_DELETE``, or one
    status) or ``primary_status`` (``STATUS_ALL``); by default every campaign not deleted."""
    raw = query.get("filtering")
    spec: Any = {}
    if raw:
        try:
            spec = json.loads(raw)
        except ValueError:
            raise _ParamError("filtering: must be a JSON object") from None
        if not isinstance(spec, dict):
            raise _ParamError("filtering: must be a JSON object")
    secondary = spec.get("secondary_status")
    primary = spec.get("primary_status")
    if secondary == "CAMPAIGN_STATUS_ALL" or primary == "STATUS_ALL":
        return lambda status: True
    if secondary in (None, "CAMPAIGN_STATUS_NOT_DELETE"):
        return lambda status: status != "CAMPAIGN_STATUS_DELETE"
    if not isinstance(secondary, str) or not secondary.startswith("CAMPAIGN_STATUS_"):
        raise _ParamError(f"filtering.secondary_status: invalid value {secondary!r}")
    return lambda status: status == secondary


def _report_includes_deleted(query: dict[str, str]) -> bool:
    """Whether the report's ``filtering`` asks for deleted campaigns: a ``campaign_status``
    clause ``IN`` ``["STATUS_ALL"]`` (or ``STATUS_DELETE``). By default they are left out."""
    raw = query.get("filtering")
    if not raw:
        return False
    try:
        clauses = json.loads(raw)
    except ValueError:
        raise _ParamError("filtering: must be a JSON array") from None
    if not isinstance(clauses, list):
        raise _ParamError("filtering: must be a JSON array")
    for clause in clauses:
        if not isinstance(clause, dict) or clause.get("field_name") != "campaign_status":
            continue
        if clause.get("filter_type") != "IN":
            raise _ParamError("filtering: campaign_status takes filter_type IN")
        try:
            values = json.loads(clause.get("filter_value") or "")
        except (TypeError, ValueError):
            raise _ParamError("filtering: filter_value must be a JSON array as a string") from None
        if not isinstance(values, list):
            raise _ParamError("filtering: filter_value must be a JSON array as a string")
        if "STATUS_ALL" in values or "STATUS_DELETE" in values:
            return True
    return False


def _required(query: dict[str, str], name: str) -> str:
    value = query.get(name)
    if not value:
        raise _ParamError(f"{name}: Missing data for required field.")
    return value


def _json_list(query: dict[str, str], name: str, *, required: bool = True) -> list[Any]:
    raw = query.get(name)
    if not raw:
        if required:
            raise _ParamError(f"{name}: Missing data for required field.")
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        raise _ParamError(f"{name}: must be a JSON array") from None
    if not isinstance(value, list):
        raise _ParamError(f"{name}: must be a JSON array")
    return value


def _positive_int(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ParamError(f"{name}: Not a valid integer.") from None
    if value < 1:
        raise _ParamError(f"{name}: must be at least 1")
    return value
