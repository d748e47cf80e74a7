"""Stripe client against the Stripe sandbox over real HTTP on loopback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests

from clearlift_cli.errors import AuthRevoked, PermanentError, RateLimited, TransientError
from clearlift_cli.platforms import registry
from clearlift_cli.platforms.base import Account, Charge, Credentials, PlatformContext
from clearlift_cli.platforms.stripe import STRIPE_VERSION, MissingPermission, StripeClient
from clearlift_cli.sandbox.server import SandboxServer
from clearlift_cli.sandbox.stripe import DEFAULT_ACCOUNT, DEFAULT_API_VERSION, StripeApp
from clearlift_cli.settings import resolve
from clearlift_cli.timeutil import FrozenClock

UTC = UTC
ACCOUNT = "acct_1TestShop"
CHARGES = r"^/v1/charges$"
REFUNDS = r"^/v1/refunds$"


@pytest.fixture
def app() -> StripeApp:
    return StripeApp()


@pytest.fixture
def server(app):
    with SandboxServer(app) as srv:
        yield srv


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2024, 6, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def ctx(tmp_path, server, clock) -> PlatformContext:
    settings = resolve(
        flags={"home": str(tmp_path), "stripe_url": server.base_url, "http_timeout": 2}, environ={}
    )
    return PlatformContext(settings=settings, account_id=ACCOUNT, clock=clock)


@pytest.fixture
def key(app) -> str:
    return app.issue_key(ACCOUNT)


@pytest.fixture
def client(ctx, key) -> StripeClient:
    return StripeClient(ctx, Credentials(access_token=key))


def _expected(wire) -> list[Charge]:
    return [
        Charge(
            charge_id=row["id"],
            amount_minor=row["amount"],
            amount_refunded_minor=row["amount_refunded"],
            currency=row["currency"].upper(),
            status=row["status"],
            paid=row["paid"],
            customer_id=row["customer"],
            created_at=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=row["created"]),
            amount_captured_minor=row["amount_captured"],
            captured=row["captured"],
        )
        for row in wire
    ]


def test_module_registers_client_and_refresh():
    entry = registry.get("stripe")
    assert entry.client is StripeClient and entry.kind == StripeClient.kind == "revenue"
    assert StripeClient.platform == "stripe"
    assert entry.refresh_token is None  # secret keys do not expire


def test_account_reads_currency_timezone_and_name(app, client, key):
    app.configure_account(ACCOUNT, currency="jpy", time_zone="Asia/Tokyo", name="Tokyo Shop")

    assert client.account() == Account(
        account_id=ACCOUNT, currency="JPY", time_zone="Asia/Tokyo", name="Tokyo Shop"
    )
    (sent,) = app.requests_to(r"^/v1/account$")
    assert sent.headers["authorization"] == f"Bearer {key}"


def test_250_charges_come_in_three_pages_exactly(app, client):
    app.configure_account(ACCOUNT, charges_per_day=10)
    since, until = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 26, tzinfo=UTC)
    wire = app.charges_between(ACCOUNT, since, until)
    assert len(wire) == 250

    got = list(client.charges(since, until))

    assert got == _expected(wire)
    sent = app.requests_to(CHARGES)
    assert len(sent) == 3
    assert [r.query.get("starting_after") for r in sent] == [None, wire[99]["id"], wire[199]["id"]]
    for request in sent:
        assert request.query["limit"] == "100"
        assert request.query["created[gte]"] == str(int(since.timestamp()))
        assert request.query["created[lt]"] == str(int(until.timestamp()))


def test_window_bounds_include_since_and_exclude_until(app, client):
    app.configure_account(ACCOUNT, charges_per_day=6)
    day = app.charges_between(ACCOUNT, datetime(2024, 2, 10, tzinfo=UTC), datetime(2024, 2, 13, tzinfo=UTC))
    # newest first: pick a late charge as the (exclusive) end and an early one as the start
    until = datetime.fromtimestamp(day[2]["created"], UTC)
    since = datetime.fromtimestamp(day[-3]["created"], UTC)

    got = list(client.charges(since, until))

    ids = [c.charge_id for c in got]
    assert ids == [row["id"] for row in day[3:-2]]
    assert day[-3]["id"] in ids and day[2]["id"] not in ids
    assert all(since <= c.created_at < until for c in got)


def test_sub_second_bounds_round_up_to_whole_seconds(app, client):
    wire = app.charges_between(ACCOUNT, datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC))
    newest = datetime.fromtimestamp(wire[0]["created"], UTC)

    # a charge at second S is before S + 0.5 s, and not at or after S + 0.5 s
    included = list(client.charges(newest - timedelta(hours=1), newest + timedelta(milliseconds=500)))
    excluded = list(client.charges(newest + timedelta(milliseconds=500), newest + timedelta(hours=1)))

    assert included[0].charge_id == wire[0]["id"]
    assert wire[0]["id"] not in [c.charge_id for c in excluded]


def test_zero_decimal_amounts_are_never_scaled(app, client):
    app.configure_account(ACCOUNT, currency="jpy", charges_per_day=8)
    since, until = datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 8, tzinfo=UTC)
    wire = app.charges_between(ACCOUNT, since, until)

    got = list(client.charges(since, until))

    assert {c.currency for c in got} == {"JPY"}
    assert [c.amount_minor for c in got] == [row["amount"] for row in wire]
    assert sum(c.amount_minor for c in got) == sum(row["amount"] for row in wire)
    assert min(c.amount_minor for c in got) >= 500  # yen as given, not divided by 100
    assert any(c.amount_minor == 500 or c.amount_minor == 1200 for c in got)


def test_refunds_and_failed_charges_are_parsed(app, client):
    app.configure_account(ACCOUNT, charges_per_day=10)
    since, until = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 26, tzinfo=UTC)

    got = list(client.charges(since, until))

    failed = [c for c in got if c.status == "failed"]
    full = [c for c in got if c.paid and c.amount_refunded_minor == c.amount_minor]
    partial = [c for c in got if 0 < c.amount_refunded_minor < c.amount_minor]
    guests = [c for c in got if c.customer_id is None]
    assert failed and full and partial and guests
    assert all(not c.paid and c.amount_refunded_minor == 0 for c in failed)
    assert all(c.status == "succeeded" for c in full + partial)
    assert all(c.created_at.tzinfo is not None and c.created_at.utcoffset() == timedelta(0) for c in got)


@pytest.mark.parametrize("bad", ["unknown", "revoked"])
def test_bad_key_is_auth_revoked_without_the_key(app, ctx, bad):
    key = "sk_test_51" + "Zq9" * 10 + "WXyz"
    if bad == "revoked":
        app.tokens.add_access(key)
        app.tokens.revoke(key)

    with pytest.raises(AuthRevoked) as info:
        list(
            StripeClient(ctx, Credentials(key)).charges(
                datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
            )
        )

    exc = info.value
    assert exc.definitive is True and exc.reason == "Invalid API Key"
    assert len(app.requests_to(CHARGES)) == 1
    # Stripe (and the sandbox) echo a masked key; the client must drop even that
    echoed = requests.get(
        f"{ctx.settings.stripe_url}/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=5
    )
    assert echoed.status_code == 401 and "sk_test_" in echoed.json()["error"]["message"]
    assert echoed.json()["error"]["message"].endswith("WXyz")
    for text in (str(exc), exc.reason, repr(exc.args)):
        assert key not in text and "sk_test" not in text and "WXyz" not in text
    assert "401" in str(exc)


def test_short_rate_limit_is_slept_and_retried(app, client, clock):
    app.rate_limit_next(times=1, retry_after=1)
    since, until = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC)

    got = list(client.charges(since, until))

    assert got == _expected(app.charges_between(ACCOUNT, since, until))
    assert len(app.requests_to(CHARGES)) == 2
    assert clock.slept == [1.0]


def test_rate_limit_without_retry_after_waits_the_default(app, client, clock):
    app.rate_limit_next(times=1, retry_after=None)

    list(client.charges(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)))

    assert clock.slept == [2.0]


def test_long_rate_limit_propagates(app, client, clock):
    app.rate_limit_next(times=1, retry_after=30)

    with pytest.raises(RateLimited) as info:
        list(client.charges(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)))

    assert info.value.retry_after == 30.0 and info.value.scope == "account"
    assert len(app.requests_to(CHARGES)) == 1 and clock.slept == []


def test_should_retry_false_is_permanent(app, client):
    app.rate_limit_next(times=1, retry_after=1, should_retry=False)

    with pytest.raises(PermanentError) as info:
        list(client.charges(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)))

    assert not isinstance(info.value, AuthRevoked)
    assert len(app.requests_to(CHARGES)) == 1


@pytest.mark.parametrize(
    "status, should_retry, expected",
    [
        (500, None, TransientError),
        (503, True, TransientError),
        (409, True, TransientError),
        (400, None, PermanentError),
        (404, None, PermanentError),
    ],
)
def test_error_statuses_are_classified(app, client, status, should_retry, expected):
    app.fail_next(status, times=3, should_retry=should_retry, path=CHARGES)

    with pytest.raises(expected) as info:
        list(client.charges(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)))

    assert type(info.value) is expected
    assert len(app.requests_to(CHARGES)) == (3 if expected is TransientError else 1)


def test_one_server_error_recovers(app, client):
    app.fail_next(500, times=1, path=CHARGES)
    since, until = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)

    assert list(client.charges(since, until)) == _expected(app.charges_between(ACCOUNT, since, until))


def test_keys_issued_by_the_token_authority_read_the_default_account(app, ctx):
    key, _ = app.tokens.issue(ttl=None)
    since, until = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)

    got = list(StripeClient(ctx, Credentials(key)).charges(since, until))

    assert got == _expected(app.charges_between(DEFAULT_ACCOUNT, since, until))


# --- restricted keys --------------------------------------------------------------------------


def _client(ctx, key, **connection_settings) -> StripeClient:
    ctx = PlatformContext(
        settings=ctx.settings,
        account_id=ctx.account_id,
        clock=ctx.clock,
        connection_settings=connection_settings,
    )
    return StripeClient(ctx, Credentials(access_token=key))


def test_a_restricted_key_cannot_read_the_account_and_falls_back_to_utc(app, ctx):
    app.configure_account(ACCOUNT, currency="eur", time_zone="Europe/Paris")
    key = app.issue_key(ACCOUNT, restricted=True)
    assert key.startswith("rk_test_")

    account = _client(ctx, key).account()

    assert account == Account(account_id=ACCOUNT, currency="XXX", time_zone="Etc/UTC", name=None)
    (sent,) = app.requests_to(r"^/v1/account$")
    # What Stripe answers a read-only restricted key there, word for word.
    answer = requests.get(
        f"{ctx.settings.stripe_url}/v1/account", timeout=5, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 403
    message = answer.json()["error"]["message"]
    assert message.startswith("The provided key 'rk_test_***") and f"on account '{ACCOUNT}'" in message
    assert "Having the 'rak_accounts_kyc_id_numbers_read' permission would allow" in message
    # The charges still come, each with its own currency.
    since, until = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC)
    got = list(_client(ctx, key).charges(since, until))
    assert got == _expected(app.charges_between(ACCOUNT, since, until)) and {c.currency for c in got} == {
        "EUR"
    }


def test_settings_time_zone_names_the_days_and_overrides_the_account(app, ctx):
    app.configure_account(ACCOUNT, time_zone="Asia/Tokyo")
    restricted = app.issue_key(ACCOUNT, restricted=True)
    secret = app.issue_key(ACCOUNT)

    assert _client(ctx, restricted, time_zone="America/New_York").account().time_zone == "America/New_York"
    assert _client(ctx, secret, time_zone="America/New_York").account().time_zone == "America/New_York"
    assert _client(ctx, secret).account().time_zone == "Asia/Tokyo"
    with pytest.raises(PermanentError, match=r"settings.time_zone 'Mars/Olympus' is not an IANA"):
        _client(ctx, restricted, time_zone="Mars/Olympus").account()


def test_a_restricted_key_without_charges_fails_saying_which_permission_without_the_key(app, ctx):
    key = app.issue_key(ACCOUNT, restricted=True, permissions={"rak_refund_read"})

    with pytest.raises(MissingPermission) as info:
        list(_client(ctx, key).charges(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)))

    assert "403" in str(info.value) and "rak_charge_read" in str(info.value)
    assert key not in str(info.value) and key[-6:] not in str(info.value)
    assert len(app.requests_to(CHARGES)) == 1  # not retried


# --- captures and the pinned API version --------------------------------------------------


def test_authorisations_and_partial_captures_are_parsed_as_captured(app, client):
    app.configure_account(ACCOUNT, charges_per_day=10)
    since, until = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 31, tzinfo=UTC)

    got = list(client.charges(since, until))

    held = [c for c in got if not c.captured]
    partial = [c for c in got if c.captured and c.amount_captured_minor < c.amount_minor]
    held_ok = [c for c in held if c.paid and c.status == "succeeded"]
    assert held_ok and partial  # authorised but never captured: paid and succeeded all the same
    assert all(c.amount_captured_minor == 0 and c.amount_refunded_minor == 0 for c in held_ok)
    assert all(c.amount_refunded_minor == 0 for c in partial)


def test_every_request_pins_the_api_version_so_a_released_rest_is_no_refund(app, client):
    app.configure_account(ACCOUNT, charges_per_day=10)
    since, until = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 31, tzinfo=UTC)
    # The account's own (older) version counts what a partial capture left as refunded.
    old = {c["id"]: c for c in app.charges_between(ACCOUNT, since, until, api_version=DEFAULT_API_VERSION)}
    partial = [c for c in old.values() if c["captured"] and c["amount_captured"] < c["amount"]]
    assert partial and all(c["amount_refunded"] == c["amount"] - c["amount_captured"] for c in partial)

    got = {c.charge_id: c for c in client.charges(since, until)}

    assert all(got[c["id"]].amount_refunded_minor == 0 for c in partial)
    assert {r.headers.get("stripe-version") for r in app.requests} == {STRIPE_VERSION}


# --- refunds by their own time -----------------------------------------------------------------


def test_refunded_charges_come_by_the_refund_time_whatever_the_charge_time(app, client):
    old_day = app.charges_between(
        ACCOUNT, datetime(2024, 1, 10, tzinfo=UTC), datetime(2024, 1, 11, tzinfo=UTC)
    )
    old = next(c for c in old_day if c["paid"] and c["captured"] and c["amount_refunded"] == 0)
    at = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
    refund = app.refund(old["id"], 300, created=at)
    since, until = at - timedelta(hours=1), at + timedelta(hours=1)

    got = list(client.refunded_charges(since, until))

    mine = [c for c in got if c.charge_id == old["id"]]
    assert len(mine) == 1 and mine[0].amount_refunded_minor == 300
    assert mine[0].created_at == datetime.fromtimestamp(old["created"], UTC)  # the charge's own time
    # Every refund of that hour, generated ones included, and nothing else.
    want = app.refunds_between(ACCOUNT, since, until)
    assert refund["id"] in [r["id"] for r in want] and len(got) == len(want)
    (sent,) = app.requests_to(REFUNDS)
    assert sent.query["expand[]"] == "data.charge" and sent.query["limit"] == "100"
    assert (sent.query["created[gte]"], sent.query["created[lt]"]) == (
        str(int(since.timestamp())),
        str(int(until.timestamp())),
    )


def test_refunds_come_in_pages(app, client):
    app.configure_account(ACCOUNT, charges_per_day=30)
    since, until = datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 20, tzinfo=UTC)
    want = app.refunds_between(ACCOUNT, since, until)
    assert len(want) > 100

    got = list(client.refunded_charges(since, until))

    assert [c.charge_id for c in got] == [r["charge"] for r in want]
    assert len(app.requests_to(REFUNDS)) == -(-len(want) // 100)


def test_a_key_that_cannot_list_refunds_warns_and_still_syncs(app, ctx, caplog):
    key = app.issue_key(ACCOUNT, restricted=True, permissions={"rak_charge_read"})
    client = _client(ctx, key)

    with caplog.at_level("WARNING", logger="clearlift.stripe"):
        got = list(
            client.refunded_charges(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))
        )

    assert got == []
    assert "cannot list refunds" in caplog.text and "Read on Refunds" in caplog.text
    assert key not in caplog.text
    assert list(client.charges(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)))


# --- endless pagination ------------------------------------------------------------------------


@pytest.mark.parametrize("walk", ["charges", "refunds"])
def test_a_page_that_repeats_itself_fails_the_walk(app, client, walk):
    app.configure_account(ACCOUNT, charges_per_day=30)
    app.pagination = "repeat"  # has_more forever, starting_after ignored
    since, until = datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 20, tzinfo=UTC)

    with pytest.raises(PermanentError, match="pagination repeats itself"):
        list(getattr(client, "charges" if walk == "charges" else "refunded_charges")(since, until))

    assert len(app.requests_to(CHARGES if walk == "charges" else REFUNDS)) == 2


def test_an_endless_walk_stops_at_the_page_cap(app, client):
    app.pagination = "endless"  # fresh, ever older charges, has_more forever
    client.max_pages = 7

    with pytest.raises(PermanentError, match="still had more after 7 pages"):
        for _ in client.charges(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)):
            pass

    assert len(app.requests_to(CHARGES)) == 7


def test_late_refunds_are_fenced_like_the_slices(app, client, tmp_path):
    """A delivery whose lease was taken over (a later claim has written the connection's
    rows) writes no late refund either: StaleWrite, the stored charge as it was."""
    from clearlift_cli.errors import StaleWrite
    from clearlift_cli.models import SyncWindow
    from clearlift_cli.warehouse import RowOwner, open_warehouse

    wh = open_warehouse(f"sqlite:///{tmp_path}/warehouse.db")
    try:
        wh.init_schema()
        day = datetime(2024, 1, 10, tzinfo=UTC)
        charges = list(client.charges(day, day + timedelta(days=1)))
        old = next(c for c in charges if c.paid and c.captured and c.amount_refunded_minor == 0)
        owner, account = RowOwner("org-1", "conn-1", ACCOUNT), Account(ACCOUNT, "USD", "UTC")
        with wh.transaction(write_seq=2) as w:  # the later delivery wrote the charges
            w.upsert_charges(owner, account, charges, datetime(2024, 3, 1, tzinfo=UTC))
        at = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
        app.refund(old.charge_id, 300, created=at)
        window = SyncWindow(at - timedelta(hours=1), at + timedelta(hours=1))

        def refunded() -> int:
            rows = wh.fetch_rows("stripe_charges", organization_id="org-1")
            return next(r["amount_refunded_minor"] for r in rows if r["charge_id"] == old.charge_id)

        with pytest.raises(StaleWrite, match="claim 1"):
            client.load_after_slices(owner, account, window, wh, write_seq=1)
        assert refunded() == 0
        assert client.load_after_slices(owner, account, window, wh, write_seq=3) >= 1
        assert refunded() == 300
    finally:
        wh.close()
