"""A Graph API (Meta Marketing API) sandbox on loopback.

Serves ``/{version}/act_{id}``, ``/act_{id}/campaigns``, ``/act_{id}/insights`` (GET, and
POST for an async report), ``/{report_run_id}``, ``/{report_run_id}/insights`` and
``/{version}/oauth/access_token`` in Graph's shapes: every number a string, cursors plus a
full ``next`` URL that carries the access token back (as Graph does), OAuthException
errors with HTTP 400, and usage headers on every answer. Data is deterministic per account.

Like Graph, it leaves ARCHIVED and DELETED campaigns (and their insights) out unless the
request's ``filtering`` (``effective_status`` on the campaigns edge,
``campaign.effective_status`` in insights) lists their status; it answers a request to an
API version past its expiry (per ``platforms.versions`` and the sandbox clock) with error
2635; an insights request above ``max_sync_rows`` fails the way Graph does (HTTP 500, code
1, "Please reduce the amount of data..."); and exchanging a token that is already
long-lived hands the same token back without extending it (``long_lived_renewal``).

Tests steer it with ``configure_account`` (campaign count, currency, time zone, page size,
the oversize row limit and its error shape, async report behaviour, endless paging faults),
``pin_insight`` (exact wire values for one campaign-day), ``set_usage`` (usage header
values), ``rate_limit_next`` (the next N requests answer a rate-limit error) and
``self.tokens`` (issue, expire, revoke) or ``issue_long_lived``. ``campaign_rows`` and
``insight_rows`` return the raw wire rows.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from clearlift_cli.money import minor_units_per_unit
from clearlift_cli.platforms import versions
from clearlift_cli.sandbox.data import days, rng
from clearlift_cli.sandbox.server import PlatformApp, Reply, Request

EXCHANGED_TOKEN_TTL = 5183944  # seconds, what Graph answers for a long-lived token

_OBJECTIVES = ["OUTCOME_SALES", "OUTCOME_TRAFFIC", "OUTCOME_LEADS", "OUTCOME_AWARENESS"]
# (status, effective_status) of the campaigns, in turn.
_STATUSES = [
    ("ACTIVE", "ACTIVE"),
    ("ACTIVE", "ACTIVE"),
    ("PAUSED", "PAUSED"),
    ("ARCHIVED", "ARCHIVED"),
    ("ACTIVE", "WITH_ISSUES"),
    ("DELETED", "DELETED"),
    ("ACTIVE", "IN_PROCESS"),
]
# Statuses Graph leaves out of edges and account insights unless a filter asks for them.
HIDDEN_BY_DEFAULT = frozenset({"ARCHIVED", "DELETED"})
# Every value the effective_status filter accepts (the campaigns-edge reference lists the
# ad-level ones too; a campaign never has them, so they match nothing).
FILTER_STATUSES = frozenset(
    {
        "ACTIVE",
        "PAUSED",
        "DELETED",
        "ARCHIVED",
        "IN_PROCESS",
        "WITH_ISSUES",
        "PENDING_REVIEW",
        "DISAPPROVED",
        "PREAPPROVED",
        "PENDING_BILLING_INFO",
        "CAMPAIGN_PAUSED",
        "ADSET_PAUSED",
    }
)
TOO_MUCH_DATA = "Please reduce the amount of data you're asking for, then retry your request"
_NAMES = ["Brand", "Prospecting", "Retargeting", "Catalog", "Lookalike", "Video", "Leads"]
_CAMPAIGN_FIELDS = {
    "id",
    "name",
    "status",
    "effective_status",
    "objective",
    "daily_budget",
    "lifetime_budget",
    "created_time",
    "updated_time",
}
_INSIGHT_FIELDS = {
    "account_id",
    "campaign_id",
    "campaign_name",
    "impressions",
    "clicks",
    "spend",
    "actions",
    "action_values",
    "date_start",
    "date_stop",
}
# Meta writes these currencies' amounts without a minor unit ("offset 1").
_OFFSET_ONE = frozenset("CLP COP CRC HUF ISK IDR JPY KRW PYG TWD VND".split())

RATE_LIMIT_MESSAGES = {
    4: "Application request limit reached",
    17: "User request limit reached",
    32: "Page request limit reached",
    613: "Calls to this api have exceeded the rate limit.",
    80004: "There have been too many calls to this ad-account. Wait a bit and try again.",
}


@dataclass
class AccountConfig:
    campaigns: int
    currency: str = "USD"
    timezone_name: str = "America/Los_Angeles"
    name: str = ""
    exists: bool = True
    # Rows on one page at most (None: as many as `limit` asks for).
    max_page_rows: int | None = None
    # A synchronous insights request that would return more rows fails as too large, in
    # Graph's usual shape ("plain": HTTP 500, code 1, no subcode) or the rarer "subcode" one
    # (code 1, subcode 99, "An unknown error occurred", the advice in error_user_msg).
    max_sync_rows: int | None = None
    oversize_shape: str = "plain"
    # Paging faults: "self" (paging.next points at the page just served), "same_rows" (every
    # page serves the first page's rows with a new cursor, forever).
    endless_paging: str | None = None
    # Polls of a report before it reports `async_outcome` (earlier polls: not started, running).
    async_polls: int = 2
    async_outcome: str = "Job Completed"


@dataclass
class _Report:
    account_id: str
    since: date
    until: date
    fields: list[str]
    statuses: frozenset[str]
    polls: int = 0


@dataclass
class Usage:
    """The values the usage headers report (percentages; the wait in minutes)."""

    app_call_count: float = 3
    app_total_time: float = 2
    app_total_cputime: float = 1
    call_count: float = 4
    total_time: float = 3
    total_cputime: float = 2
    estimated_time_to_regain_access: int = 0
    acc_id_util_pct: float = 2.5
    reset_time_duration: int = 0
    # Raw header values sent instead of the computed ones (to test tolerance of garbage).
    raw: dict[str, str] = field(default_factory=dict)


@dataclass
class _RateLimitPlan:
    remaining: int
    code: int
    minutes: int
    subcode: int | None


def _graph_error(
    message: str,
    code: int,
    subcode: int | None = None,
    *,
    type_: str = "OAuthException",
    is_transient: bool = False,
    include_transient: bool = True,
    status: int = 400,
    headers: dict[str, str] | None = None,
    **extra: str,
) -> Reply:
    error: dict[str, Any] = {"message": message, "type": type_, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error.update(extra)
    if include_transient:
        error["is_transient"] = is_transient
    error["fbtrace_id"] = "A" + base64.b32encode(message.encode()[:10]).decode().strip("=")
    return Reply(status, {"error": error}, headers or {})


def _too_much_data(shape: str) -> Reply:
    """Graph's answer to a request for too much data: HTTP 500 with code 1 and, as a rule,
    no subcode; sometimes subcode 99 with the advice in ``error_user_msg``."""
    if shape == "subcode":
        return _graph_error(
            "An unknown error occurred",
            1,
            99,
            include_transient=False,
            status=500,
            error_user_title="Please reduce the amount of data",
            error_user_msg=TOO_MUCH_DATA,
        )
    return _graph_error(TOO_MUCH_DATA, 1, include_transient=False, status=500)


def _offset(currency: str) -> int:
    return 1 if currency.upper() in _OFFSET_ONE else minor_units_per_unit(currency)


def _money(amount_minor: int, currency: str) -> str:
    """A minor-unit amount as Graph writes spend: a decimal string in currency units."""
    offset = _offset(currency)
    if offset == 1:
        return str(amount_minor)
    return f"{Decimal(amount_minor) / offset:.2f}"


class FacebookApp(PlatformApp):
    platform = "facebook"
    APP_CREDENTIALS = {
        "FACEBOOK_APP_ID": "sandbox-facebook-app-id",
        "FACEBOOK_APP_SECRET": "sandbox-facebook-app-secret",
    }

    def __init__(self, *, clock: Callable[[], float] = time.time):
        super().__init__(clock=clock)
        self._lock = threading.Lock()
        self._accounts: dict[str, AccountConfig] = {}
        self._reports: dict[str, _Report] = {}
        self._report_ids = itertools.count(6082319423871001)
        self.usage = Usage()
        self._rate_limits: list[_RateLimitPlan] = []
        self._pinned: dict[tuple[str, str, str], dict[str, Any]] = {}
        # Long-lived tokens and when they expire (epoch seconds). Exchanging one of these
        # while it is valid: "unchanged" hands it back with its remaining lifetime (what
        # Meta's 2012 notes describe and users report), "renewed" gives a new 60-day token.
        self._long_lived: dict[str, float] = {}
        self.long_lived_renewal = "unchanged"

    # --- configuration ----------------------------------------------------------------

    def configure_account(self, account_id: str | int, **changes: Any) -> AccountConfig:
        """Set an account's shape: ``campaigns``, ``currency``, ``timezone_name``, ``name``,
        ``exists``, ``max_page_rows``, ``max_sync_rows``, ``async_polls``, ``async_outcome``."""
        digits = _digits(account_id)
        config = self.account_config(digits)
        for key, value in changes.items():
            if not hasattr(config, key):
                raise TypeError(f"unknown account setting {key!r}")
            setattr(config, key, value)
        return config

    def account_config(self, account_id: str | int) -> AccountConfig:
        digits = _digits(account_id)
        with self._lock:
            if digits not in self._accounts:
                r = rng("facebook", digits, "account")
                self._accounts[digits] = AccountConfig(
                    campaigns=r.randint(3, 8), name=f"Sandbox Ads {digits[-4:]}"
                )
            return self._accounts[digits]

    def issue_long_lived(self, ttl: float = EXCHANGED_TOKEN_TTL) -> str:
        """A long-lived user token (what the API worker stores) expiring in ``ttl`` seconds."""
        token = self.tokens.issue(ttl)[0]
        with self._lock:
            self._long_lived[token] = self.clock() + ttl
        return token

    def set_usage(self, **values: Any) -> Usage:
        """Set usage header values: ``call_count``, ``total_time``, ``total_cputime``,
        ``estimated_time_to_regain_access`` (minutes; business use case header),
        ``app_call_count``, ``app_total_time``, ``app_total_cputime`` (x-app-usage),
        ``acc_id_util_pct``, ``reset_time_duration`` (x-ad-account-usage), ``raw``."""
        for key, value in values.items():
            if not hasattr(self.usage, key):
                raise TypeError(f"unknown usage value {key!r}")
            setattr(self.usage, key, value)
        return self.usage

    def rate_limit_next(
        self, times: int = 1, *, code: int = 17, minutes: int = 5, subcode: int | None = None
    ) -> None:
        """The next ``times`` authenticated requests answer rate-limit error ``code`` with a
        business-use-case header that blocks for ``minutes`` (0: no estimate)."""
        if subcode is None and code == 80004:
            subcode = 2446079
        with self._lock:
            self._rate_limits.append(_RateLimitPlan(times, code, minutes, subcode))

    def pin_insight(self, account_id: str | int, campaign_id: str, day: date, **fields: Any) -> None:
        """Serve the given wire values (e.g. ``spend="14.35"``, ``actions=[...]``) in the
        campaign's row for ``day``, which then always has a row."""
        with self._lock:
            self._pinned[(_digits(account_id), campaign_id, day.isoformat())] = fields

    # --- the data ---------------------------------------------------------------------

    def campaign_rows(self, account_id: str | int) -> list[dict[str, Any]]:
        """Every campaign of the account exactly as served (all fields)."""
        digits = _digits(account_id)
        config = self.account_config(digits)
        r = rng("facebook", digits, "campaigns")
        first_id = 120200000000000 + r.randrange(10**9) * 1000
        rows = []
        for i in range(config.campaigns):
            c = rng("facebook", digits, "campaign", i)
            status, effective = _STATUSES[i % len(_STATUSES)]
            row: dict[str, Any] = {
                "id": str(first_id + i),
                "name": f"{_NAMES[i % len(_NAMES)]} {i + 1}",
                "status": status,
                "effective_status": effective,
                "objective": _OBJECTIVES[i % len(_OBJECTIVES)],
                "created_time": "2024-03-12T15:02:47-0700",
                "updated_time": "2024-06-01T09:30:00-0700",
            }
            budget = str(c.randrange(10, 2000) * 100 + c.randrange(100))
            if i % 3 == 0:
                row["daily_budget"] = budget
            elif i % 3 == 1:
                # Graph sends "0" for the budget kind a campaign does not use.
                row["daily_budget"] = "0"
                row["lifetime_budget"] = budget
            rows.append(row)  # i % 3 == 2: budgets live on the ad sets
        return rows

    def insight_rows(
        self, account_id: str | int, since: date, until: date, statuses: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Daily campaign insight rows for since..until, exactly as served (all fields),
        ordered by day then campaign, of the campaigns whose effective_status is in
        ``statuses`` (None: every campaign, archived and deleted ones included: their past
        delivery is real). Days without delivery have no row."""
        digits = _digits(account_id)
        config = self.account_config(digits)
        wanted = None if statuses is None else set(statuses)
        campaigns = [
            c for c in self.campaign_rows(digits) if wanted is None or c["effective_status"] in wanted
        ]
        rows = []
        for day in days(since, until):
            for campaign in campaigns:
                r = rng("facebook", digits, campaign["id"], day.isoformat())
                pinned = self._pinned.get((digits, campaign["id"], day.isoformat()))
                if pinned is None and r.random() < 0.15:
                    continue
                row = self._insight(digits, config.currency, campaign, day, r)
                rows.append({**row, **(pinned or {})})
        return rows

    @staticmethod
    def _insight(
        account: str, currency: str, campaign: dict[str, Any], day: date, r: random.Random
    ) -> dict[str, Any]:
        impressions = r.randint(100, 20000)
        clicks = r.randint(0, impressions // 10)
        spend_minor = r.randint(0, 50000)
        purchases = r.randint(0, 6)
        carts = purchases + r.randint(0, 10)
        row: dict[str, Any] = {
            "account_id": account,
            "campaign_id": campaign["id"],
            "campaign_name": campaign["name"],
            "impressions": str(impressions),
            "clicks": str(clicks),
            "spend": _money(spend_minor, currency),
            "date_start": day.isoformat(),
            "date_stop": day.isoformat(),
        }
        actions = [{"action_type": "link_click", "value": str(clicks)}]
        values = []
        if carts:
            actions.append({"action_type": "add_to_cart", "value": str(carts)})
            values.append(
                {"action_type": "add_to_cart", "value": _money(carts * r.randint(500, 9000), currency)}
            )
        if purchases:
            worth = _money(sum(r.randint(500, 20000) for _ in range(purchases)), currency)
            pixel = purchases - r.randint(0, purchases)  # the pixel sees only some of them
            for kind, count in (
                ("purchase", purchases),
                ("omni_purchase", purchases),
                ("offsite_conversion.fb_pixel_purchase", pixel),
            ):
                actions.append({"action_type": kind, "value": str(count)})
            for kind in ("purchase", "omni_purchase"):
                values.append({"action_type": kind, "value": worth})
            values.append(
                {
                    "action_type": "offsite_conversion.fb_pixel_purchase",
                    "value": _money(pixel * 1999, currency),
                }
            )
        if clicks:
            actions.append({"action_type": "landing_page_view", "value": str(clicks - clicks // 4)})
        row["actions"] = actions
        if values:
            row["action_values"] = values
        return row

    # --- serving ----------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        params = dict(request.query)
        if request.method == "POST" and request.body:
            params.update(request.form())
        parts = [p for p in request.path.split("/") if p]
        if not parts or not parts[0].startswith("v"):
            return _graph_error("Unknown path components: " + request.path, 2500)
        route = parts[1:]
        if route == ["oauth", "access_token"] and request.method == "GET":
            # OAuth is Graph API, whose versions live longer than the Ads API's.
            return self._exchange(params)
        expired = self._expired_version(parts[0])
        if expired is not None:
            return expired
        refused = self._check_token(params.get("access_token"))
        if refused is not None:
            return refused
        account = route[0][4:] if route and route[0].startswith("act_") else None
        limited = self._take_rate_limit(account)
        if limited is not None:
            return limited
        reply = self._route(request, route, params, account)
        reply.headers.update(self._usage_headers(account))
        return reply

    def _route(
        self, request: Request, route: list[str], params: dict[str, str], account: str | None
    ) -> Reply:
        if account is not None:
            if not account.isdigit() or not self.account_config(account).exists:
                return _graph_error(
                    f"Unsupported get request. Object with ID 'act_{account}' does not exist, "
                    "cannot be loaded due to missing permissions, or does not support this "
                    "operation.",
                    100,
                    33,
                    type_="GraphMethodException",
                )
            if len(route) == 1 and request.method == "GET":
                return self._account(account, params)
            if route[1:] == ["campaigns"] and request.method == "GET":
                try:
                    statuses = _statuses(params, "effective_status")
                except ValueError as exc:
                    return _graph_error(f"(#100) {exc}", 100)
                rows = [c for c in self.campaign_rows(account) if c["effective_status"] in statuses]
                return self._page(request, params, rows, _CAMPAIGN_FIELDS, account)
            if route[1:] == ["insights"]:
                return self._insights(request, params, account)
        elif route and route[0].isdigit() and route[0] in self._reports:
            if len(route) == 1 and request.method == "GET":
                return self._report_status(route[0])
            if route[1:] == ["insights"] and request.method == "GET":
                return self._report_rows(request, params, route[0])
        return _graph_error(
            f"Unsupported {request.method.lower()} request. Object does not exist or "
            "does not support this operation.",
            100,
            33,
            type_="GraphMethodException",
        )

    def _expired_version(self, version: str) -> Reply | None:
        """Graph's answer to an Ads API call on a version past its expiry (or older than
        every version the table knows), else None."""
        table = versions.SUNSETS[self.platform]
        today = datetime.fromtimestamp(self.clock(), UTC).date()
        sunset = table.get(version)
        if version in table:
            gone = sunset is not None and today >= sunset
        else:
            gone = _version_key(version) < min(_version_key(v) for v in table)
        if not gone:
            return None
        latest = versions.DEFAULT_VERSIONS[self.platform]
        return _graph_error(
            "(#2635) You are calling a deprecated version of the Ads API. Please update to the "
            f"latest version: {latest}.",
            2635,
            include_transient=False,
        )

    def _exchange(self, params: dict[str, str]) -> Reply:
        if params.get("grant_type") != "fb_exchange_token":
            return _graph_error("Invalid grant_type", 100)
        if params.get("client_id") != self.APP_CREDENTIALS["FACEBOOK_APP_ID"]:
            return _graph_error("Error validating application. Invalid application ID.", 101)
        if params.get("client_secret") != self.APP_CREDENTIALS["FACEBOOK_APP_SECRET"]:
            return _graph_error("Error validating client secret.", 1)
        old = params.get("fb_exchange_token") or ""
        with self._lock:
            expiry = self._long_lived.get(old)
        if expiry is not None and self.long_lived_renewal == "unchanged" and self.tokens.check(old) == "ok":
            return Reply(
                200,
                {
                    "access_token": old,
                    "token_type": "bearer",
                    "expires_in": max(0, int(expiry - self.clock())),
                },
            )
        new = self.tokens.exchange(old, EXCHANGED_TOKEN_TTL)
        if new is None:
            return self._token_error(old)
        with self._lock:
            self._long_lived[new] = self.clock() + EXCHANGED_TOKEN_TTL
        return Reply(200, {"access_token": new, "token_type": "bearer", "expires_in": EXCHANGED_TOKEN_TTL})

    def _check_token(self, token: str | None) -> Reply | None:
        if self.tokens.check(token) == "ok":
            return None
        return self._token_error(token)

    def _token_error(self, token: str | None) -> Reply:
        state = self.tokens.check(token)
        if state == "missing":
            return _graph_error(
                "An active access token must be used to query information about the current user.", 2500
            )
        if state == "expired":
            return _graph_error(
                "Error validating access token: Session has expired on Tuesday, 01-Jul-25 "
                "10:00:00 PDT. The current time is Wednesday, 02-Jul-25 10:00:00 PDT.",
                190,
                463,
            )
        if state == "revoked":
            return _graph_error(
                "Error validating access token: The session has been invalidated because the "
                "user changed their password or Facebook has changed the session for security "
                "reasons.",
                190,
                460,
            )
        # Graph echoes a token it cannot parse: clients must redact what they show.
        return _graph_error(f"Malformed access token {token}", 190)

    def _take_rate_limit(self, account: str | None) -> Reply | None:
        with self._lock:
            plan = next((p for p in self._rate_limits if p.remaining > 0), None)
            if plan is None:
                return None
            plan.remaining -= 1
        key = account or "0"
        bucket = {
            "type": "ads_insights",
            "call_count": 100,
            "total_cputime": 40,
            "total_time": 40,
            "estimated_time_to_regain_access": plan.minutes,
        }
        headers = {
            "x-app-usage": json.dumps(
                {"call_count": 100 if plan.code == 4 else 20, "total_time": 10, "total_cputime": 10}
            ),
            "x-business-use-case-usage": json.dumps({key: [bucket]}),
        }
        message = RATE_LIMIT_MESSAGES.get(plan.code, "Rate limit reached")
        return _graph_error(message, plan.code, plan.subcode, is_transient=True, headers=headers)

    def _usage_headers(self, account: str | None) -> dict[str, str]:
        u = self.usage
        headers = {
            "x-app-usage": json.dumps(
                {
                    "call_count": u.app_call_count,
                    "total_time": u.app_total_time,
                    "total_cputime": u.app_total_cputime,
                }
            )
        }
        if account is not None:
            headers["x-business-use-case-usage"] = json.dumps(
                {
                    account: [
                        {
                            "type": "ads_insights",
                            "call_count": u.call_count,
                            "total_cputime": u.total_cputime,
                            "total_time": u.total_time,
                            "estimated_time_to_regain_access": u.estimated_time_to_regain_access,
                        }
                    ]
                }
            )
            headers["x-ad-account-usage"] = json.dumps(
                {
                    "acc_id_util_pct": u.acc_id_util_pct,
                    "reset_time_duration": u.reset_time_duration,
                    "ads_api_access_tier": "standard_access",
                }
            )
        headers.update(u.raw)
        return headers

    def _account(self, account: str, params: dict[str, str]) -> Reply:
        config = self.account_config(account)
        full = {
            "id": f"act_{account}",
            "account_id": account,
            "name": config.name,
            "currency": config.currency,
            "timezone_name": config.timezone_name,
        }
        wanted = _fields(params) or ["id"]
        return Reply(200, {k: full[k] for k in ["id", *wanted] if k in full})

    def _page(
        self,
        request: Request,
        params: dict[str, str],
        rows: list[dict[str, Any]],
        known: set[str],
        account: str | None = None,
    ) -> Reply:
        wanted = _fields(params)
        unknown = [f for f in wanted if f not in known]
        if unknown:
            return _graph_error(f"(#100) Tried accessing nonexisting field ({unknown[0]})", 100)
        try:
            limit = int(params.get("limit") or 25)
            offset = _decode_cursor(params["after"]) if params.get("after") else 0
        except ValueError:
            return _graph_error("(#100) Invalid parameter", 100)
        config = self.account_config(account) if account else None
        cap = config.max_page_rows if config else None
        size = max(1, min(limit, cap or limit))
        fault = config.endless_paging if config else None
        page = rows[:size] if fault == "same_rows" else rows[offset : offset + size]
        # Graph always sends an object's id, and an insight row's dates.
        keep = set(wanted) | ({"date_start", "date_stop"} if "date_start" in known else {"id"})
        body: dict[str, Any] = {
            "data": [{k: v for k, v in row.items() if k in keep or not wanted} for row in page]
        }
        host = request.headers.get("host", "127.0.0.1")
        if page:
            body["paging"] = {
                "cursors": {"before": _encode_cursor(offset), "after": _encode_cursor(offset + len(page))}
            }
            if fault == "self":
                body["paging"]["next"] = f"http://{host}{request.path}?{urlencode(params)}"
            elif offset + len(page) < len(rows) or fault == "same_rows":
                query = {**params, "after": _encode_cursor(offset + len(page))}
                body["paging"]["next"] = f"http://{host}{request.path}?{urlencode(query)}"
        return Reply(200, body)

    def _insights(self, request: Request, params: dict[str, str], account: str) -> Reply:
        if params.get("level") != "campaign" or params.get("time_increment") != "1":
            return _graph_error("(#100) this sandbox serves level=campaign, time_increment=1", 100)
        try:
            window = json.loads(params["time_range"])
            since, until = date.fromisoformat(window["since"]), date.fromisoformat(window["until"])
        except (KeyError, ValueError, TypeError):
            return _graph_error("(#100) time_range must be {'since':'YYYY-MM-DD','until':...}", 100)
        if since > until:
            return _graph_error("(#100) time_range since must not be after until", 100)
        fields = _fields(params)
        unknown = [f for f in fields if f not in _INSIGHT_FIELDS]
        if unknown:
            return _graph_error(f"(#100) {unknown[0]} is not valid for fields param.", 100)
        try:
            statuses = _statuses(params, "campaign.effective_status")
        except ValueError as exc:
            return _graph_error(f"(#100) {exc}", 100)
        config = self.account_config(account)
        if request.method == "POST":
            report_id = str(next(self._report_ids))
            with self._lock:
                self._reports[report_id] = _Report(account, since, until, fields, statuses)
            return Reply(200, {"report_run_id": report_id})
        rows = self.insight_rows(account, since, until, statuses)
        if config.max_sync_rows is not None and len(rows) > config.max_sync_rows:
            return _too_much_data(config.oversize_shape)
        return self._page(request, params, rows, _INSIGHT_FIELDS, account)

    def _report_status(self, report_id: str) -> Reply:
        with self._lock:
            report = self._reports[report_id]
            report.polls += 1
            polls = report.polls
        config = self.account_config(report.account_id)
        if polls > config.async_polls:
            status, pct = config.async_outcome, 100
        elif polls == 1:
            status, pct = "Job Not Started", 0
        else:
            status, pct = "Job Running", min(99, 100 * (polls - 1) // max(1, config.async_polls))
        return Reply(
            200,
            {
                "id": report_id,
                "account_id": report.account_id,
                "async_status": status,
                "async_percent_completion": pct,
                "date_start": report.since.isoformat(),
                "date_stop": report.until.isoformat(),
                "time_ref": int(self.clock()),
            },
        )

    def _report_rows(self, request: Request, params: dict[str, str], report_id: str) -> Reply:
        report = self._reports[report_id]
        config = self.account_config(report.account_id)
        if report.polls <= config.async_polls or config.async_outcome != "Job Completed":
            return _graph_error("(#100) The report is not ready", 100)
        rows = self.insight_rows(report.account_id, report.since, report.until, report.statuses)
        query = {**params, "fields": ",".join(report.fields)}
        return self._page(request, query, rows, _INSIGHT_FIELDS, report.account_id)

    def report_run_ids(self) -> list[str]:
        """Ids of every async report started so far."""
        with self._lock:
            return list(self._reports)


def _digits(account_id: str | int) -> str:
    text = str(account_id)
    return text[4:] if text.startswith("act_") else text


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.lstrip("v").split("."))
    except ValueError:
        return (0,)


def _statuses(params: dict[str, str], field_name: str) -> frozenset[str]:
    """The effective statuses a request asks for: its ``filtering`` on ``field_name`` (or,
    on the campaigns edge, the ``effective_status`` parameter); by default every status but
    ARCHIVED and DELETED. Raises ValueError for a filter Graph would refuse."""
    wanted: set[str] | frozenset[str] | None = None
    raw = params.get("filtering")
    if raw:
        try:
            clauses = json.loads(raw)
        except ValueError:
            raise ValueError("filtering must be a JSON array") from None
        if not isinstance(clauses, list):
            raise ValueError("filtering must be a JSON array")
        for clause in clauses:
            if not isinstance(clause, dict) or clause.get("field") != field_name:
                raise ValueError(f"Filtering field {clause!r} is not supported here")
            op, value = str(clause.get("operator", "")).upper(), clause.get("value")
            if op not in ("IN", "NOT_IN") or not isinstance(value, list):
                raise ValueError(f"Filtering operator {op!r} with value {value!r} is invalid")
            bad = [v for v in value if v not in FILTER_STATUSES]
            if bad:
                raise ValueError(f"Filtering value {bad[0]!r} is not a valid effective_status")
            chosen = set(value) if op == "IN" else FILTER_STATUSES - set(value)
            wanted = chosen if wanted is None else wanted & chosen
    if field_name == "effective_status" and params.get("effective_status"):
        try:
            value = json.loads(params["effective_status"])
        except ValueError:
            raise ValueError("effective_status must be a JSON array") from None
        bad = [v for v in value if v not in FILTER_STATUSES] if isinstance(value, list) else [value]
        if bad:
            raise ValueError(f"param effective_status: {bad[0]!r} is not a valid value")
        wanted = set(value) if wanted is None else wanted & set(value)
    if wanted is None:
        return FILTER_STATUSES - HIDDEN_BY_DEFAULT
    return frozenset(wanted)


def _fields(params: dict[str, str]) -> list[str]:
    return [f.strip() for f in (params.get("fields") or "").split(",") if f.strip()]


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    if not raw.startswith("offset:"):
        raise ValueError(cursor)
    return int(raw[len("offset:") :])
