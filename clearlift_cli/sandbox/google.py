"""A Google Ads REST API on loopback: GAQL over ``googleAds:searchStream`` and
``googleAds:search``, plus Google's OAuth ``/token`` endpoint.

It answers in Google's shapes (lowerCamelCase keys, int64 as strings, doubles as numbers,
zero metrics omitted, ``GoogleAdsFailure`` errors) and understands the small slice of GAQL
clearlift sends. Data is deterministic per customer id; ``campaign_rows`` and
``metric_rows`` return exactly what is served so tests can compute expected values::

    app = GoogleAdsApp(batch_size=5)
    app.configure_account("1234567890", campaigns=4, currency="EUR")
    access, refresh = app.tokens.issue(ttl=3600)
    app.exhaust_quota(times=1, retry_delay=40, rate_scope="DEVELOPER")

Manager (MCC) accounts: ``configure_account(mid, manager=True)`` and, for each client,
``configure_account(cid, manager_id=mid)``. A client then answers only with a
``login-customer-id`` naming one of its managers (``USER_PERMISSION_DENIED`` otherwise, as
after an unlink: ``accessible=False``); the manager answers ``FROM customer_client`` with
itself and every client below it, and refuses metrics (``REQUESTED_METRICS_FOR_MANAGER``).
A sunset API version (``clearlift_cli.platforms.versions``, on the sandbox's clock) gets
Google's HTML 404 page.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from clearlift_cli.platforms import versions
from clearlift_cli.sandbox.data import days, rng
from clearlift_cli.sandbox.server import PlatformApp, Reply, Request

_DATA_PATH = re.compile(
    r"^/(?P<version>v\d+)/customers/(?P<cid>[^/]+)/googleAds:(?P<method>searchStream|search)$"
)

ADWORDS_SCOPE = "https://www.googleapis.com/auth/adwords"

# GAQL field -> (wire object, wire key, kind). kind: "int64" (string on the wire),
# "string", "enum", "double", "date".
FIELDS: dict[str, tuple[str, str, str]] = {
    "customer.id": ("customer", "id", "int64"),
    "customer.descriptive_name": ("customer", "descriptiveName", "string"),
    "customer.currency_code": ("customer", "currencyCode", "string"),
    "customer.time_zone": ("customer", "timeZone", "string"),
    "customer.manager": ("customer", "manager", "bool"),
    "customer_client.id": ("customerClient", "id", "int64"),
    "customer_client.descriptive_name": ("customerClient", "descriptiveName", "string"),
    "customer_client.manager": ("customerClient", "manager", "bool"),
    "customer_client.level": ("customerClient", "level", "int64"),
    "customer_client.status": ("customerClient", "status", "enum"),
    "customer_client.currency_code": ("customerClient", "currencyCode", "string"),
    "customer_client.time_zone": ("customerClient", "timeZone", "string"),
    "customer_client.hidden": ("customerClient", "hidden", "bool"),
    "customer_client.client_customer": ("customerClient", "clientCustomer", "string"),
    "campaign.id": ("campaign", "id", "int64"),
    "campaign.name": ("campaign", "name", "string"),
    "campaign.status": ("campaign", "status", "enum"),
    "campaign.advertising_channel_type": ("campaign", "advertisingChannelType", "enum"),
    "campaign_budget.amount_micros": ("campaignBudget", "amountMicros", "int64"),
    "segments.date": ("segments", "date", "date"),
    "metrics.impressions": ("metrics", "impressions", "int64"),
    "metrics.clicks": ("metrics", "clicks", "int64"),
    "metrics.cost_micros": ("metrics", "costMicros", "int64"),
    "metrics.conversions": ("metrics", "conversions", "double"),
    "metrics.conversions_value": ("metrics", "conversionsValue", "double"),
}
_FROM = {
    "customer": {f for f in FIELDS if f.startswith("customer.")},
    # customer_client rows may also select the fields of the customer asked (attributed).
    "customer_client": {f for f in FIELDS if f.startswith(("customer_client.", "customer."))},
    "campaign": {f for f in FIELDS if not f.startswith(("customer.", "customer_client."))},
}
# Objects that carry a resourceName when any of their fields is selected, as Google does.
_RESOURCE_OBJECTS = {"customer", "customerClient", "campaign", "campaignBudget"}

# The selections clearlift sends (PLATFORM_APIS.md); the public row helpers project on them.
CAMPAIGN_FIELDS = [
    "campaign.id",
    "campaign.name",
    "campaign.status",
    "campaign.advertising_channel_type",
    "campaign_budget.amount_micros",
]
METRIC_FIELDS = [
    "campaign.id",
    "segments.date",
    "metrics.impressions",
    "metrics.clicks",
    "metrics.cost_micros",
    "metrics.conversions",
    "metrics.conversions_value",
]

_CHANNELS = ["SEARCH", "DISPLAY", "SHOPPING", "VIDEO", "PERFORMANCE_MAX"]
_THEMES = ["Brand", "Generic", "Competitors", "Remarketing", "Shopping", "Prospecting"]

_QUERY = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<resource>\w+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.I | re.S,
)
_DAY = r"'(\d{4}-\d{2}-\d{2})'"
_BETWEEN = re.compile(rf"segments\.date\s+BETWEEN\s+{_DAY}\s+AND\s+{_DAY}", re.I)
_DATE_CMP = re.compile(rf"segments\.date\s*(>=|<=|>|<|=)\s*{_DAY}", re.I)
_STATUS_CMP = re.compile(r"campaign\.status\s*(!=|=)\s*'([A-Z_]+)'", re.I)
_STATUS_IN = re.compile(r"campaign\.status\s+(NOT\s+)?IN\s*\(([^)]*)\)", re.I)
_AND = re.compile(r"\s+AND\s+", re.I)


class QueryRejected(Exception):
    """A GAQL query the sandbox (like Google) refuses; carries the queryError code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Query:
    resource: str
    fields: list[str]
    since: date | None = None
    until: date | None = None
    status_in: set[str] | None = None
    status_not_in: set[str] | None = None
    limit: int | None = None


def parse_gaql(text: str) -> Query:
    """Parse the GAQL subset the sandbox serves; raise ``QueryRejected`` for the rest."""
    match = _QUERY.match(text or "")
    if not match:
        raise QueryRejected("UNEXPECTED_INPUT", "Error in query: unexpected input.")
    resource = match.group("resource")
    if resource not in _FROM:
        raise QueryRejected(
            "INVALID_RESOURCE_NAME_IN_FROM_CLAUSE", f"Invalid resource name in FROM clause: '{resource}'."
        )
    fields = [f.strip() for f in match.group("fields").split(",")]
    for name in fields:
        if name not in FIELDS:
            raise QueryRejected("UNRECOGNIZED_FIELD", f"Unrecognized field in the query: '{name}'.")
        if name not in _FROM[resource]:
            raise QueryRejected(
                "PROHIBITED_FIELD_IN_SELECT_CLAUSE",
                f"The following field cannot be selected from '{resource}': '{name}'.",
            )
    query = Query(resource=resource, fields=fields)
    if match.group("limit"):
        query.limit = int(match.group("limit"))
    where = match.group("where")
    if where:
        if resource != "campaign":
            raise QueryRejected("UNEXPECTED_INPUT", "Error in query: unexpected input WHERE.")
        _parse_where(where, query)
    selects_date = "segments.date" in fields
    selects_metrics = any(f.startswith("metrics.") for f in fields)
    has_range = query.since is not None and query.until is not None
    if selects_date and not has_range:
        raise QueryRejected(
            "EXPECTED_FILTERS_ON_DATE_RANGE",
            "A finite date range filter on segments.date is required when segments.date is selected.",
        )
    if selects_metrics and not selects_date:
        raise QueryRejected(
            "UNEXPECTED_INPUT", "This sandbox serves metrics only segmented by segments.date."
        )
    if (query.since or query.until) and not selects_date:
        raise QueryRejected(
            "UNEXPECTED_INPUT", "This sandbox filters on segments.date only when it is selected."
        )
    return query


def _parse_where(where: str, query: Query) -> None:
    pos = 0
    while True:
        if m := _BETWEEN.match(where, pos):
            _narrow(query, ">=", m.group(1))
            _narrow(query, "<=", m.group(2))
        elif m := _DATE_CMP.match(where, pos):
            _narrow(query, m.group(1), m.group(2))
        elif m := _STATUS_CMP.match(where, pos):
            values = {m.group(2).upper()}
            if m.group(1) == "!=":
                query.status_not_in = (query.status_not_in or set()) | values
            else:
                query.status_in = values if query.status_in is None else query.status_in & values
        elif m := _STATUS_IN.match(where, pos):
            values = {v.strip().strip("'\"").upper() for v in m.group(2).split(",") if v.strip()}
            if m.group(1):
                query.status_not_in = (query.status_not_in or set()) | values
            else:
                query.status_in = values if query.status_in is None else query.status_in & values
        else:
            near = where[pos : pos + 30]
            raise QueryRejected("UNEXPECTED_INPUT", f"Error in query: unexpected input {near}.")
        pos = m.end()
        if pos >= len(where.rstrip()):
            return
        conj = _AND.match(where, pos)
        if not conj:
            near = where[pos : pos + 30]
            raise QueryRejected("UNEXPECTED_INPUT", f"Error in query: unexpected input {near}.")
        pos = conj.end()


def _narrow(query: Query, op: str, text: str) -> None:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise QueryRejected("INVALID_VALUE_WITH_DATE", f"Invalid date: '{text}'.") from None
    if op in (">=", ">", "="):
        start = day + timedelta(days=1) if op == ">" else day
        query.since = start if query.since is None else max(query.since, start)
    if op in ("<=", "<", "="):
        end = day - timedelta(days=1) if op == "<" else day
        query.until = end if query.until is None else min(query.until, end)


@dataclass
class CustomerConfig:
    """How one customer account looks and behaves."""

    campaigns: int = 3
    removed: int | None = None  # REMOVED campaigns (the last ones); None: one in three
    currency: str = "USD"
    time_zone: str = "America/New_York"
    name: str | None = None
    enabled: bool = True  # False: 403 CUSTOMER_NOT_ENABLED (customer_client status CANCELED)
    accessible: bool = True  # False: 403 USER_PERMISSION_DENIED (e.g. unlinked from its manager)
    manager_id: str | None = None  # set: the login-customer-id header must name it (or its managers)
    manager: bool = False  # a manager (MCC): no campaigns, no metrics, clients below it


def _duration(seconds: float) -> str:
    """A protobuf Duration as JSON spells it: whole seconds then 0, 3, 6 or 9 fractional
    digits and "s" ("40s", "1.500s", "1000000000000s"), never an exponent."""
    whole = int(seconds)
    frac = f"{round(abs(seconds - whole) * 1e9):09d}"
    while frac.endswith("000"):
        frac = frac[:-3]
    return f"{whole}.{frac}s" if frac else f"{whole}s"


@dataclass
class _QuotaFault:
    times: int
    retry_delay: float
    rate_scope: str


@dataclass
class _StreamFault:
    times: int
    after_batches: int
    code: int
    status: str
    query: str | None = None  # a regex: only streams whose GAQL matches it


def google_error(
    code: int,
    status: str,
    message: str,
    error_code: dict[str, str] | None = None,
    *,
    detail_message: str | None = None,
    details: dict[str, Any] | None = None,
    version: str = "v26",
) -> dict:
    """An error body in Google Ads' shape, with a ``GoogleAdsFailure`` when ``error_code``
    (e.g. ``{"authorizationError": "CUSTOMER_NOT_ENABLED"}``) is given."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if error_code:
        failure: dict[str, Any] = {"errorCode": error_code, "message": detail_message or message}
        if details:
            failure["details"] = details
        error["details"] = [
            {
                "@type": f"type.googleapis.com/google.ads.googleads.{version}.errors.GoogleAdsFailure",
                "errors": [failure],
                "requestId": secrets.token_urlsafe(16),
            }
        ]
    return {"error": error}


def _wire(value: Any, kind: str) -> Any:
    """A value as proto3 JSON writes it; None for a zero that Google leaves out."""
    if kind == "int64":
        return str(value) if value else None
    if kind == "double":
        return float(value) if value else None
    if kind == "bool":
        return True if value else None
    return value


def not_found_page(path: str) -> bytes:
    """Google's front end 404 page, as a retired API version gets it (HTML, not JSON)."""
    return (
        "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
        "  <title>Error 404 (Not Found)!!1</title>\n"
        "  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n"
        f"  <p>The requested URL <code>{path}</code> was not found on this server.  "
        "<ins>That\u2019s all we know.</ins>\n"
    ).encode()


class _Refused(Exception):
    """A data request the sandbox refuses before running its query; carries the reply."""

    def __init__(self, reply: Reply):
        super().__init__(reply.status)
        self.reply = reply


def _refused(
    version: str,
    code: int,
    status: str,
    message: str,
    error_code: dict | None = None,
    detail: str | None = None,
    details: dict | None = None,
) -> _Refused:
    return _Refused(
        Reply(
            code,
            google_error(
                code, status, message, error_code, detail_message=detail, details=details, version=version
            ),
        )
    )


def _invalid_argument(version: str, kind: str, code: str, detail: str) -> _Refused:
    return _refused(
        version, 400, "INVALID_ARGUMENT", "Request contains an invalid argument.", {kind: code}, detail
    )


def _permission_denied(version: str, code: str, detail: str) -> _Refused:
    return _refused(
        version,
        403,
        "PERMISSION_DENIED",
        "The caller does not have permission",
        {"authorizationError": code},
        detail,
    )


def _parse_search(request: Request, config: CustomerConfig, version: str) -> tuple[dict, Query]:
    """The request's body and its GAQL query, which must not ask a manager for metrics."""
    try:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            raise QueryRejected("QUERY_ERROR", "The query is missing.")
        query = parse_gaql(body["query"])
    except ValueError:
        raise _refused(version, 400, "INVALID_ARGUMENT", "Invalid JSON payload received.") from None
    except QueryRejected as exc:
        raise _invalid_argument(version, "queryError", exc.code, exc.message) from None
    if config.manager and any(f.startswith("metrics.") for f in query.fields):
        raise _invalid_argument(
            version,
            "queryError",
            "REQUESTED_METRICS_FOR_MANAGER",
            "Metrics cannot be requested for a manager account. To retrieve metrics, "
            "issue separate requests against each client account under the manager account.",
        )
    return body, query


class GoogleAdsApp(PlatformApp):
    """Google Ads and Google OAuth on loopback. Tokens: ``self.tokens.issue(ttl)``; faults:
    ``self.faults`` (generic), ``exhaust_quota`` (429 RESOURCE_EXHAUSTED) and
    ``break_stream`` (an error after some batches of a 200 stream)."""

    platform = "google"
    APP_CREDENTIALS = {
        "GOOGLE_CLIENT_ID": "sandbox-google-client-id",
        "GOOGLE_CLIENT_SECRET": "sandbox-google-client-secret",
        "GOOGLE_ADS_DEVELOPER_TOKEN": "sandbox-developer-token",
    }

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        batch_size: int = 10_000,
        page_size: int = 10_000,
        refresh_ttl: float = 3599,
        strict_customers: bool = False,
        rotate_refresh_tokens: bool = False,
        wrap_stream_errors: bool = True,
    ):
        super().__init__(clock=clock)
        self.batch_size = batch_size
        self.page_size = page_size
        self.refresh_ttl = refresh_ttl  # lifetime of access tokens issued by /token
        self.strict_customers = strict_customers  # True: unconfigured customers are refused
        self.rotate_refresh_tokens = rotate_refresh_tokens  # True: /token returns a new one
        self.wrap_stream_errors = wrap_stream_errors  # searchStream errors as [{"error": ...}]
        self._customers: dict[str, CustomerConfig] = {}
        self._quota: list[_QuotaFault] = []
        self._stream_faults: list[_StreamFault] = []
        self._lock = threading.Lock()

    # --- configuration and fault helpers --------------------------------------------------

    def configure_account(self, customer_id: str, **changes: Any) -> CustomerConfig:
        """Set how ``customer_id`` looks: ``campaigns``, ``removed``, ``currency``,
        ``time_zone``, ``name``, ``enabled``, ``accessible``, ``manager_id``."""
        cid = str(customer_id).replace("-", "")
        with self._lock:
            config = replace(self._customers.get(cid, CustomerConfig()), **changes)
            self._customers[cid] = config
        return config

    def customer(self, customer_id: str) -> CustomerConfig | None:
        with self._lock:
            config = self._customers.get(str(customer_id).replace("-", ""))
        if config is None and not self.strict_customers:
            return CustomerConfig()
        return config

    def exhaust_quota(self, times: int = 1, retry_delay: float = 40, rate_scope: str = "DEVELOPER") -> None:
        """The next ``times`` data requests answer 429 RESOURCE_EXHAUSTED asking for
        ``retry_delay`` seconds; ``rate_scope`` is ``DEVELOPER`` (app-wide) or ``ACCOUNT``."""
        with self._lock:
            self._quota.append(_QuotaFault(times, retry_delay, rate_scope))

    def break_stream(
        self,
        times: int = 1,
        after_batches: int = 1,
        code: int = 500,
        status: str = "INTERNAL",
        query: str | None = None,
    ) -> None:
        """The next ``times`` searchStream answers (to a GAQL query matching the regex
        ``query``, when given) are HTTP 200 arrays that end in an error element after
        ``after_batches`` good batches, as a stream that fails midway does."""
        with self._lock:
            self._stream_faults.append(_StreamFault(times, after_batches, code, status, query))

    def _take(self, faults: list, text: str = "") -> Any:
        with self._lock:
            for fault in faults:
                if fault.times != 0 and not (
                    getattr(fault, "query", None) and not re.search(fault.query, text)
                ):
                    fault.times -= 1
                    return fault
        return None

    # --- deterministic data -----------------------------------------------------------------

    def _campaigns(self, cid: str, config: CustomerConfig) -> list[dict]:
        if config.manager:
            return []  # a manager account has no campaigns of its own
        removed = config.campaigns // 3 if config.removed is None else config.removed
        out: list[dict] = []
        seen: set[int] = set()
        for i in range(config.campaigns):
            r = rng("google", cid, "campaign", i)
            campaign_id = r.randint(10_000_000_000, 29_999_999_999)
            while campaign_id in seen:
                campaign_id += 1
            seen.add(campaign_id)
            if i >= config.campaigns - removed:
                status = "REMOVED"
            elif i == 0:
                status = "ENABLED"
            else:
                status = r.choice(["ENABLED", "ENABLED", "PAUSED"])
            out.append(
                {
                    "id": campaign_id,
                    "name": f"{r.choice(_THEMES)} {i + 1}",
                    "status": status,
                    "channel": r.choice(_CHANNELS),
                    "budget_id": campaign_id + 7_000_000_000,
                    # Budgets are whole cents, as the UI allows.
                    "budget_micros": r.randint(100, 50_000) * 10_000,
                }
            )
        return out

    @staticmethod
    def _day_metrics(cid: str, campaign_id: int, day: date) -> dict | None:
        """One campaign-day's numbers, or None when the campaign had no activity."""
        r = rng("google", cid, campaign_id, day.isoformat())
        if r.random() < 0.15:
            return None
        impressions = r.randint(1, 20_000)
        clicks = 0 if r.random() < 0.1 else r.randint(0, impressions // 15)
        cost_micros = clicks * r.randint(5, 300) * 10_000
        conversions = 0.0
        value = 0.0
        if clicks and r.random() < 0.6:
            conversions = r.randint(1, max(1, clicks // 4) * 2) / 2  # e.g. 4.0 or 2.5
            value = r.randint(100, 2_000_000) / 100  # e.g. 120.5 or 33.17
        return {
            "impressions": impressions,
            "clicks": clicks,
            "cost_micros": cost_micros,
            "conversions": conversions,
            "conversions_value": value,
        }

    def _full_rows(self, cid: str, config: CustomerConfig, query: Query) -> list[dict]:
        """Rows with every field the sandbox knows, as {GAQL field: value}."""
        me = {
            "customer.id": int(cid),
            "customer.descriptive_name": config.name or f"Sandbox Account {cid[-4:]}",
            "customer.currency_code": config.currency,
            "customer.time_zone": config.time_zone,
            "customer.manager": config.manager,
        }
        if query.resource == "customer":
            return [me]
        if query.resource == "customer_client":
            return [
                {**me, **self._client_fields(client_id, client, level)}
                for client_id, client, level in self.clients_of(cid)
            ]
        campaigns = [
            c
            for c in self._campaigns(cid, config)
            if (query.status_in is None or c["status"] in query.status_in)
            and (query.status_not_in is None or c["status"] not in query.status_not_in)
        ]
        rows: list[dict] = []
        if "segments.date" not in query.fields:
            for c in campaigns:
                rows.append(self._campaign_fields(c))
            return rows
        assert query.since is not None and query.until is not None
        for day in days(query.since, query.until):
            for c in campaigns:
                numbers = self._day_metrics(cid, c["id"], day)
                if numbers is None:
                    continue
                row = self._campaign_fields(c)
                row["segments.date"] = day.isoformat()
                row.update({f"metrics.{k}": v for k, v in numbers.items()})
                rows.append(row)
        return rows

    def clients_of(self, manager_id: str) -> list[tuple[str, CustomerConfig, int]]:
        """(customer id, config, level) of the manager itself (level 0) and of every customer
        below it, direct (1) or through other managers (2, ...), as ``customer_client`` has
        them. A client unlinked (``accessible=False``) is no longer below its manager."""
        with self._lock:
            customers = dict(self._customers)
        out = [(manager_id, customers.get(manager_id) or CustomerConfig(), 0)]
        frontier = [manager_id]
        level = 0
        while frontier:
            level += 1
            below = [
                cid
                for cid, c in sorted(customers.items())
                if c.manager_id in frontier and c.accessible and cid != manager_id
            ]
            out += [(cid, customers[cid], level) for cid in below]
            frontier = [cid for cid in below if customers[cid].manager]
        return out

    @staticmethod
    def _client_fields(cid: str, config: CustomerConfig, level: int) -> dict:
        return {
            "customer_client.id": int(cid),
            "customer_client.descriptive_name": config.name or f"Sandbox Account {cid[-4:]}",
            "customer_client.manager": config.manager,
            "customer_client.level": level,
            "customer_client.status": "ENABLED" if config.enabled else "CANCELED",
            "customer_client.currency_code": config.currency,
            "customer_client.time_zone": config.time_zone,
            "customer_client.hidden": False,
            "customer_client.client_customer": f"customers/{cid}",
        }

    @staticmethod
    def _campaign_fields(c: dict) -> dict:
        return {
            "campaign.id": c["id"],
            "campaign.name": c["name"],
            "campaign.status": c["status"],
            "campaign.advertising_channel_type": c["channel"],
            "campaign_budget.amount_micros": c["budget_micros"],
            "_budget_id": c["budget_id"],
        }

    @staticmethod
    def _project(cid: str, full: dict, fields: list[str]) -> dict:
        """A row as Google serves it: only selected fields, camelCase, int64 as strings,
        zero numbers omitted, resourceName on every resource object touched."""
        row: dict[str, dict] = {}
        for name in fields:
            obj, key, kind = FIELDS[name]
            target = row.setdefault(obj, {})
            if obj in _RESOURCE_OBJECTS and "resourceName" not in target:
                if obj == "customer":
                    target["resourceName"] = f"customers/{cid}"
                elif obj == "customerClient":
                    target["resourceName"] = f"customers/{cid}/customerClients/{full['customer_client.id']}"
                elif obj == "campaign":
                    target["resourceName"] = f"customers/{cid}/campaigns/{full['campaign.id']}"
                else:
                    target["resourceName"] = f"customers/{cid}/campaignBudgets/{full['_budget_id']}"
            value = _wire(full[name], kind)
            if value is not None:
                target[key] = value
        return row

    def _rows(self, cid: str, config: CustomerConfig, query: Query) -> list[dict]:
        rows = [self._project(cid, full, query.fields) for full in self._full_rows(cid, config, query)]
        return rows if query.limit is None else rows[: query.limit]

    def campaign_rows(self, customer_id: str, include_removed: bool = False) -> list[dict]:
        """The wire rows served for clearlift's campaigns query (REMOVED ones only when
        ``include_removed``)."""
        cid = str(customer_id).replace("-", "")
        query = Query(
            "campaign", list(CAMPAIGN_FIELDS), status_not_in=None if include_removed else {"REMOVED"}
        )
        return self._rows(cid, self.customer(cid) or CustomerConfig(), query)

    def metric_rows(self, customer_id: str, since: date, until: date) -> list[dict]:
        """The wire rows served for clearlift's daily metrics query over since..until."""
        cid = str(customer_id).replace("-", "")
        query = Query("campaign", list(METRIC_FIELDS), since=since, until=until)
        return self._rows(cid, self.customer(cid) or CustomerConfig(), query)

    # --- HTTP ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        if request.path == "/token":
            return self._token(request)
        match = _DATA_PATH.match(request.path)
        if not match or request.method != "POST":
            return Reply(404, google_error(404, "NOT_FOUND", f"Not found: {request.path}"))
        version, method = match.group("version"), match.group("method")
        if self.version_is_gone(version):
            # Google's front end answers a retired version before the API sees the request.
            return Reply(404, not_found_page(request.path), {"Content-Type": "text/html; charset=UTF-8"})
        reply = self._data(request, version, match.group("cid"), method)
        # A failed searchStream answers its error inside the stream's array.
        if method == "searchStream" and reply.status >= 400 and self.wrap_stream_errors:
            if isinstance(reply.body, dict) and "error" in reply.body:
                reply.body = [reply.body]
        return reply

    def version_is_gone(self, version: str) -> bool:
        """Past its sunset on the sandbox's clock, or older than every version in the table."""
        today = datetime.fromtimestamp(self.clock(), UTC).date()
        if versions.check(self.platform, version, today).is_sunset:
            return True
        known = [int(v[1:]) for v in versions.SUNSETS[self.platform]]
        return version[1:].isdigit() and int(version[1:]) < min(known)

    def managers_above(self, customer_id: str) -> list[str]:
        """The managers of ``customer_id``, nearest first (each may be the login customer)."""
        out: list[str] = []
        with self._lock:
            config = self._customers.get(customer_id)
            while config is not None and config.manager_id and config.manager_id not in out:
                out.append(config.manager_id)
                config = self._customers.get(config.manager_id)
        return out

    def _data(self, request: Request, version: str, raw_cid: str, method: str) -> Reply:
        """A search or searchStream request, refused as Google refuses it at the first check
        it fails: credentials, the customer, the quota, then the query."""
        try:
            self._authenticate(request, version)
            config = self._customer_for(request, raw_cid, version)
            self._check_quota(version)
            body, query = _parse_search(request, config, version)
        except _Refused as exc:
            return exc.reply
        rows = self._rows(raw_cid, config, query)
        mask = ",".join(".".join(_camel(p) for p in f.split(".")) for f in query.fields)
        request_id = secrets.token_urlsafe(16)
        if method == "search":
            return self._page(rows, body, mask, request_id, version)
        return self._stream(rows, mask, request_id, version, body["query"])

    def _authenticate(self, request: Request, version: str) -> None:
        """The OAuth access token, then the developer token."""
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        state = self.tokens.check(token)
        if state != "ok":
            reason = "OAUTH_TOKEN_EXPIRED" if state == "expired" else "OAUTH_TOKEN_INVALID"
            raise _refused(
                version,
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                {"authenticationError": reason},
                "Authentication of the request failed."
                if state != "expired"
                else "The OAuth access token has expired.",
            )
        developer_token = request.headers.get("developer-token")
        if not developer_token:
            raise _invalid_argument(
                version,
                "requestError",
                "DEVELOPER_TOKEN_PARAMETER_MISSING",
                "developer-token parameter is missing.",
            )
        if developer_token != self.APP_CREDENTIALS["GOOGLE_ADS_DEVELOPER_TOKEN"]:
            raise _refused(
                version,
                401,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential.",
                {"authenticationError": "DEVELOPER_TOKEN_INVALID"},
                "The developer token is not valid.",
            )

    def _customer_for(self, request: Request, raw_cid: str, version: str) -> CustomerConfig:
        """The customer of the URL, when its id and the login-customer-id header are well
        formed and the caller may read it (through a manager above it for a client)."""
        if not raw_cid.isdigit():
            raise _invalid_argument(
                version, "requestError", "INVALID_CUSTOMER_ID", f"Invalid customer ID '{raw_cid}'."
            )
        login = request.headers.get("login-customer-id")
        if login is not None and not login.isdigit():
            raise _invalid_argument(
                version, "requestError", "INVALID_INPUT", "Invalid login-customer-id header."
            )
        config = self.customer(raw_cid)
        if (
            config is None
            or not config.accessible
            or (config.manager_id is not None and login not in self.managers_above(raw_cid))
        ):
            raise _permission_denied(
                version,
                "USER_PERMISSION_DENIED",
                "User doesn't have permission to access customer. Note: If you're accessing a "
                "client customer, the manager's customer id must be set in the 'login-customer-id' header.",
            )
        if not config.enabled:
            raise _permission_denied(
                version,
                "CUSTOMER_NOT_ENABLED",
                "The customer account can't be accessed because it is not yet enabled "
                "or has been deactivated.",
            )
        return config

    def _check_quota(self, version: str) -> None:
        """A quota fault armed by the test, if any, answers 429 with its retry delay."""
        quota = self._take(self._quota)
        if quota is not None:
            raise _refused(
                version,
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                {"quotaError": "RESOURCE_EXHAUSTED"},
                f"Too many requests. Retry in {quota.retry_delay:g} seconds.",
                {
                    "quotaErrorDetails": {
                        "rateScope": quota.rate_scope,
                        "rateName": "Number of operations for basic access",
                        "retryDelay": _duration(quota.retry_delay),
                    }
                },
            )

    def _stream(self, rows: list[dict], mask: str, request_id: str, version: str, query: str) -> Reply:
        size = max(1, self.batch_size)
        batches = [
            {"results": rows[i : i + size], "fieldMask": mask, "requestId": request_id}
            for i in range(0, len(rows), size)
        ] or [{"fieldMask": mask, "requestId": request_id}]
        broken = self._take(self._stream_faults, query)
        if broken is not None:
            batches = batches[: broken.after_batches]
            batches.append(
                google_error(
                    broken.code,
                    broken.status,
                    "Internal error encountered.",
                    {"internalError": "INTERNAL_ERROR"},
                    version=version,
                )
            )
        return Reply(200, batches)

    def _page(self, rows: list[dict], body: dict, mask: str, request_id: str, version: str) -> Reply:
        digest = hashlib.sha256(body["query"].encode()).hexdigest()[:12]
        offset = 0
        token = body.get("pageToken")
        if token:
            try:
                seen_digest, raw = base64.urlsafe_b64decode(token.encode()).decode().split(":")
                offset = int(raw)
                if seen_digest != digest or offset < 0:
                    raise ValueError(token)
            except ValueError:
                return Reply(
                    400,
                    google_error(
                        400,
                        "INVALID_ARGUMENT",
                        "Request contains an invalid argument.",
                        {"requestError": "INVALID_PAGE_TOKEN"},
                        detail_message="Page token is invalid.",
                        version=version,
                    ),
                )
        size = max(1, self.page_size)
        page: dict[str, Any] = {"fieldMask": mask, "requestId": request_id}
        if rows[offset : offset + size]:
            page["results"] = rows[offset : offset + size]
        if offset + size < len(rows):
            page["nextPageToken"] = base64.urlsafe_b64encode(f"{digest}:{offset + size}".encode()).decode()
        return Reply(200, page)

    def _token(self, request: Request) -> Reply:
        if request.method != "POST":
            return Reply(405, {"error": "invalid_request", "error_description": "POST required"})
        form = request.form()
        if form.get("grant_type") != "refresh_token":
            return Reply(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": f"Invalid grant_type: {form.get('grant_type', '')}",
                },
            )
        if (
            form.get("client_id") != self.APP_CREDENTIALS["GOOGLE_CLIENT_ID"]
            or form.get("client_secret") != self.APP_CREDENTIALS["GOOGLE_CLIENT_SECRET"]
        ):
            return Reply(401, {"error": "invalid_client", "error_description": "Unauthorized"})
        refresh = form.get("refresh_token")
        if not refresh:
            return Reply(
                400,
                {
                    "error": "invalid_request",
                    "error_description": "Missing required parameter: refresh_token",
                },
            )
        access = self.tokens.refresh_grant(refresh, ttl=self.refresh_ttl)
        if access is None:
            return Reply(
                400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            )
        answer: dict[str, Any] = {
            "access_token": access,
            "expires_in": int(self.refresh_ttl),
            "scope": ADWORDS_SCOPE,
            "token_type": "Bearer",
        }
        if self.rotate_refresh_tokens:
            answer["refresh_token"] = self.tokens.add_refresh(f"google-rt-{secrets.token_urlsafe(24)}")
        return Reply(200, answer)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)
