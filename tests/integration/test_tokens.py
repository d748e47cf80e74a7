"""Token renewal as a library (issue 6): pacing against one provider, transient failures that
change nothing, compare-and-set that never replaces a newer token, a refused grant after
another run replaced it. The sandboxes over loopback HTTP, a real SQLite store, a
FrozenClock."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from clearlift_cli import commands, tokens
from clearlift_cli.crypto import FieldCipher
from clearlift_cli.settings import ENV_NAMES, resolve
from clearlift_cli.store import open_store
from clearlift_cli.timeutil import FrozenClock, iso_z, parse_ts
from tests.helpers import assert_no_secrets

UTC = UTC
CID = "123-456-7890"


def token_calls(sandbox) -> list:
    return sandbox.google.requests_to(r"^/token$")


@dataclass
class Lib:
    settings: object
    store: object
    clock: FrozenClock
    cipher: FieldCipher

    def add(
        self, platform: str, account: str, access: str, refresh: str | None = None, *, expires_in: float = 60
    ) -> str:
        cid, _ = commands.add_connection(
            self.settings,
            commands.NewConnection(
                organization_id="org-1",
                platform=platform,
                account_id=account,
                account_name=None,
                connected_by="user-1",
                access_token=access,
                refresh_token=refresh,
                expires_at=iso_z(self.clock.now() + timedelta(seconds=expires_in)),
            ),
            clock=self.clock,
        )
        return cid


@pytest.fixture
def lib(tmp_path, sandbox):
    """Settings, a migrated store on a FrozenClock, and the cipher its tokens are sealed with."""
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    flags = {name: sandbox.env()[var] for name, var in ENV_NAMES.items() if var in sandbox.env()}
    flags.update(
        home=str(tmp_path / "lib"), http_timeout="0.5", encryption_key=base64.b64encode(b"k" * 32).decode()
    )
    settings = resolve(flags=flags, environ={}, read_config=False)
    store = open_store(settings.db, clock=clock, create=True)
    store.migrate()
    yield Lib(settings, store, clock, FieldCipher(settings.key_bytes()))
    store.close()


def test_refreshes_against_one_provider_are_paced(lib, sandbox):
    google = [
        lib.add("google", f"{i}00-000-0000", *sandbox.google.tokens.issue(), expires_in=10 + i)
        for i in range(1, 4)
    ]
    facebook = [
        lib.add("facebook", f"{i}0000", sandbox.facebook.tokens.issue()[0], expires_in=10 + i)
        for i in range(1, 3)
    ]

    result = tokens.refresh_due(lib.settings, lib.store, margin_seconds=300, pace_seconds=0.25)

    assert result.summary() == {"refreshed": 5, "skipped": 0, "failed": 0, "needs_reauth": 0, "failures": []}
    # One pause between consecutive refreshes of a platform, none between platforms.
    assert lib.clock.slept == [0.25, 0.25, 0.25]
    for ids in (google, facebook):
        expiries = [parse_ts(lib.store.get_connection(c).expires_at) for c in ids]
        gaps = [(b - a).total_seconds() for a, b in pairwise(expiries)]
        assert gaps == [0.25] * (len(ids) - 1)


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "timeout", "seconds": 1.0},
        {
            "kind": "status",
            "status": 429,
            "body": {"error": "rate_limit_exceeded", "error_description": "Slow down"},
        },
        {"kind": "status", "status": 500, "body": {"error": "internal_failure", "error_description": "Oops"}},
    ],
    ids=["timeout", "429", "500"],
)
def test_transient_refresh_failures_change_nothing(lib, sandbox, fault):
    access, refresh = sandbox.google.tokens.issue()
    cid = lib.add("google", CID, access, refresh)
    before = lib.store.get_connection(cid)
    kind = fault.pop("kind")
    sandbox.google.faults.add(kind, path=r"^/token$", times=-1, **fault)

    result = tokens.refresh_due(lib.settings, lib.store)

    assert [c for c, _ in result.failed] == [cid] and result.needs_reauth == [] and result.refreshed == []
    assert lib.store.get_connection(cid) == before
    assert_no_secrets([reason for _, reason in result.failed])
    sandbox.google.faults.clear()
    assert tokens.refresh_due(lib.settings, lib.store).refreshed == [cid]  # the next run retries


def test_compare_and_set_never_replaces_a_newer_token(lib, sandbox):
    access, refresh = sandbox.google.tokens.issue()
    cid = lib.add("google", CID, access, refresh)
    stale = lib.store.get_connection(cid)  # both runs read the row now

    creds_a = tokens.refresh_connection(lib.settings, lib.store, lib.cipher, stale)  # run A
    after_a = lib.store.get_connection(cid)
    assert after_a.credentials_encrypted != stale.credentials_encrypted
    assert lib.cipher.decrypt(after_a.credentials_encrypted) == creds_a.access_token

    # Run B got a grant too but writes late, from the ciphertext it read before A's write.
    older = lib.cipher.encrypt(sandbox.google.tokens.issue()[0])
    assert not lib.store.swap_tokens(
        cid,
        old_credentials_encrypted=stale.credentials_encrypted,
        credentials_encrypted=older,
        expires_at=iso_z(lib.clock.now()),
        refresh_token_encrypted=None,
    )
    assert lib.store.get_connection(cid) == after_a

    # The same through refresh_connection: B's own grant is dropped, A's token is used.
    creds_b = tokens.refresh_connection(lib.settings, lib.store, lib.cipher, stale)
    assert creds_b.access_token == creds_a.access_token
    assert lib.store.get_connection(cid) == after_a
    assert len(token_calls(sandbox)) == 2


def test_grant_refused_after_another_run_replaced_it_is_not_a_revocation(lib, sandbox):
    access, refresh = sandbox.google.tokens.issue(ttl=120)
    cid = lib.add("google", "700-000-0001", access, refresh)
    stale = lib.store.get_connection(cid)

    creds_a = tokens.refresh_connection(lib.settings, lib.store, lib.cipher, stale)  # stores a new token
    # Meanwhile the old grant is refused (e.g. the user reconnected and it was revoked); run
    # B still holds the row it read before A's write.
    sandbox.google.tokens.revoke(refresh)
    creds_b = tokens.refresh_connection(lib.settings, lib.store, lib.cipher, stale)

    assert creds_b.access_token == creds_a.access_token
    row = lib.store.get_connection(cid)
    assert not row.needs_reauth and row.sync_status == "pending" and not row.consecutive_auth_failures
    assert len(token_calls(sandbox)) == 2
