"""The store's connection operations on every backend: reading, the API worker's upsert,
pausing, the token compare-and-set, auth failures, refresh candidates, token samples and
the operator's counts. Rows are seeded and checked with plain SQL (see conftest.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from clearlift_cli.errors import NotFound
from clearlift_cli.timeutil import iso_z, julian_day

from .conftest import T0

# -- reading ------------------------------------------------------------------------------------


def test_get_connection_reads_every_column(backend):
    cid = backend.insert_connection(
        account_id="111",
        account_name="Shop",
        last_synced_at="2025-10-09 08:00:00",  # the SQLite spelling, as the API worker's defaults write
        sync_status="failed",
        sync_error="Token refresh failed: invalid_grant",
        settings='{"lookback_days": 30}',
        credentials_encrypted="c-111",
        refresh_token_encrypted="r-111",
        expires_at="2025-10-10T21:45:30.000Z",
        scopes="ads.read",
        needs_reauth=1,
        reauth_reason="invalid_grant",
        reauth_detected_at="2025-10-10T20:00:00.000Z",
        consecutive_auth_failures=3,
    )
    conn = backend.store.get_connection(cid)
    assert (conn.id, conn.organization_id, conn.platform, conn.account_id) == (cid, "org-1", "google", "111")
    assert (conn.account_name, conn.connected_by, conn.connected_at) == (
        "Shop",
        "user-1",
        "2025-10-01T10:00:00.000Z",
    )
    assert (conn.last_synced_at, conn.sync_status, conn.sync_error) == (
        "2025-10-09 08:00:00",
        "failed",
        "Token refresh failed: invalid_grant",
    )
    assert conn.is_active is True and conn.settings() == {"lookback_days": 30}
    assert (conn.credentials_encrypted, conn.refresh_token_encrypted) == ("c-111", "r-111")
    assert (conn.expires_at, conn.scopes) == ("2025-10-10T21:45:30.000Z", "ads.read")
    assert conn.needs_reauth is True and conn.consecutive_auth_failures == 3
    assert (conn.reauth_reason, conn.reauth_detected_at) == ("invalid_grant", "2025-10-10T20:00:00.000Z")
    with pytest.raises(NotFound, match="no connection 'org-1-google-nope'"):
        backend.store.get_connection("org-1-google-nope")


def test_list_connections_in_order_and_filtered(backend):
    a = backend.insert_connection(organization_id="org-1", platform="google", account_id="222")
    b = backend.insert_connection(organization_id="org-1", platform="facebook", account_id="999")
    c = backend.insert_connection(organization_id="org-2", platform="google", account_id="111", is_active=0)
    d = backend.insert_connection(organization_id="org-1", platform="google", account_id="111")
    store = backend.store
    assert [x.id for x in store.list_connections()] == [b, d, a, c]  # organisation, platform, account
    assert [x.id for x in store.list_connections(organization_id="org-1")] == [b, d, a]
    assert [x.id for x in store.list_connections(platform="google")] == [d, a, c]
    assert [x.id for x in store.list_connections(organization_id="org-2", platform="google")] == [c]
    assert store.list_connections(organization_id="org-3") == []
    assert store.get_connection(c).is_active is False


# -- the API worker's upsert ----------------------------------------------------------------------

UPSERT = {
    "organization_id": "org-1",
    "platform": "google",
    "account_id": "123-456-7890",
    "account_name": "Shop",
    "connected_by": "user-1",
    "credentials_encrypted": "c1",
    "refresh_token_encrypted": "r1",
    "expires_at": "2025-10-10T21:45:30.000Z",
    "settings_text": '{"lookback_days": 30}',
    "scopes": "ads",
}


def test_upsert_connection_creates_a_pending_active_connection(backend):
    cid, created = backend.store.upsert_connection(**UPSERT)
    assert (cid, created) == ("org-1-google-123-456-7890", True)
    row = backend.connection(cid)
    assert row is not None
    assert {
        k: row[k] for k in ("organization_id", "platform", "account_id", "account_name", "connected_by")
    } == {
        "organization_id": "org-1",
        "platform": "google",
        "account_id": "123-456-7890",
        "account_name": "Shop",
        "connected_by": "user-1",
    }
    assert (row["credentials_encrypted"], row["refresh_token_encrypted"]) == ("c1", "r1")
    assert (row["expires_at"], row["settings"], row["scopes"]) == (
        "2025-10-10T21:45:30.000Z",
        '{"lookback_days": 30}',
        "ads",
    )
    assert row["connected_at"] == backend.now_iso()  # as JavaScript writes it
    assert (row["sync_status"], row["is_active"], row["needs_reauth"], row["consecutive_auth_failures"]) == (
        "pending",
        1,
        0,
        0,
    )
    assert row["last_synced_at"] is None and row["sync_error"] is None


def test_a_reconnect_updates_the_tokens_and_clears_reauth(backend):
    cid, _ = backend.store.upsert_connection(**UPSERT)
    # the refresh gave up, then the operator paused the connection
    backend.app.execute(
        "UPDATE platform_connections SET needs_reauth = 1, reauth_reason = 'invalid_grant', "
        "reauth_detected_at = '2025-10-10T20:00:00.000Z', consecutive_auth_failures = 3, "
        "sync_status = 'failed', sync_error = 'Token refresh failed: invalid_grant', is_active = 0 WHERE id = ?",
        (cid,),
    )
    backend.clock.advance(3600)
    again = {
        **UPSERT,
        "account_name": None,  # not sent: the stored name stays
        "scopes": None,
        "connected_by": "user-2",
        "credentials_encrypted": "c2",
        "refresh_token_encrypted": None,
        "expires_at": None,
        "settings_text": "{}",
    }
    assert backend.store.upsert_connection(**again) == (cid, False)
    row = backend.connection(cid)
    assert row is not None
    assert (row["account_name"], row["scopes"], row["connected_by"]) == ("Shop", "ads", "user-2")
    assert (row["credentials_encrypted"], row["refresh_token_encrypted"], row["expires_at"]) == (
        "c2",
        None,
        None,
    )
    assert (row["settings"], row["is_active"]) == ("{}", 1)
    assert (row["needs_reauth"], row["reauth_reason"], row["reauth_detected_at"]) == (0, None, None)
    assert (row["consecutive_auth_failures"], row["sync_status"], row["sync_error"]) == (0, "pending", None)
    assert row["connected_at"] == iso_z(T0)  # first connected then


def test_a_reconnect_without_reauth_keeps_the_sync_state(backend):
    cid, _ = backend.store.upsert_connection(**UPSERT)
    backend.app.execute(
        "UPDATE platform_connections SET sync_status = 'completed', sync_error = 'partial: 1 campaign skipped', "
        "last_synced_at = '2025-10-10T19:00:00.000Z' WHERE id = ?",
        (cid,),
    )
    assert backend.store.upsert_connection(**{**UPSERT, "credentials_encrypted": "c2"}) == (cid, False)
    row = backend.connection(cid)
    assert row is not None
    assert (row["sync_status"], row["sync_error"], row["last_synced_at"]) == (
        "completed",
        "partial: 1 campaign skipped",
        "2025-10-10T19:00:00.000Z",
    )
    assert row["credentials_encrypted"] == "c2"
    assert len(backend.app.rows("SELECT id FROM platform_connections")) == 1


def test_set_active_pauses_and_resumes(backend):
    cid = backend.insert_connection()
    other = backend.insert_connection()
    backend.store.set_active(cid, False)
    assert backend.connection(cid)["is_active"] == 0
    assert backend.connection(other)["is_active"] == 1
    backend.store.set_active(cid, False)  # already paused: still found
    backend.store.set_active(cid, True)
    assert backend.connection(cid)["is_active"] == 1
    with pytest.raises(NotFound, match="no connection 'org-1-google-nope'"):
        backend.store.set_active("org-1-google-nope", True)


# -- tokens ------------------------------------------------------------------------------------------


def test_swap_tokens_is_a_compare_and_set(backend):
    cid = backend.insert_connection(
        credentials_encrypted="a1",
        refresh_token_encrypted="r1",
        expires_at="2025-10-10T21:00:00.000Z",
        consecutive_auth_failures=2,
    )
    store = backend.store
    assert store.swap_tokens(
        cid,
        old_credentials_encrypted="a1",
        credentials_encrypted="a2",
        expires_at="2025-10-10T22:00:00.000Z",
        refresh_token_encrypted=None,
    )
    row = backend.connection(cid)
    assert (row["credentials_encrypted"], row["refresh_token_encrypted"], row["expires_at"]) == (
        "a2",
        "r1",  # no new refresh token: the old one stays
        "2025-10-10T22:00:00.000Z",
    )
    assert row["consecutive_auth_failures"] == 2  # only a successful sync resets it
    # a slower refresh that started from a1 ends after: the older token never overwrites the newer
    before = backend.connection(cid)
    assert not store.swap_tokens(
        cid,
        old_credentials_encrypted="a1",
        credentials_encrypted="a-late",
        expires_at="2025-10-10T21:59:00.000Z",
        refresh_token_encrypted="r-late",
    )
    assert backend.connection(cid) == before
    assert store.swap_tokens(
        cid,
        old_credentials_encrypted="a2",
        credentials_encrypted="a3",
        expires_at=None,
        refresh_token_encrypted="r3",
    )
    row = backend.connection(cid)
    assert (row["credentials_encrypted"], row["refresh_token_encrypted"], row["expires_at"]) == (
        "a3",
        "r3",
        None,
    )


def test_swap_tokens_from_no_token_and_on_a_missing_connection(backend):
    cid = backend.insert_connection(credentials_encrypted=None)
    store = backend.store
    assert not store.swap_tokens(
        cid,
        old_credentials_encrypted="a1",
        credentials_encrypted="b1",
        expires_at=None,
        refresh_token_encrypted=None,
    )
    assert store.swap_tokens(
        cid,
        old_credentials_encrypted=None,
        credentials_encrypted="b1",
        expires_at=None,
        refresh_token_encrypted=None,
    )
    assert backend.connection(cid)["credentials_encrypted"] == "b1"
    assert not store.swap_tokens(
        "org-1-google-nope",
        old_credentials_encrypted=None,
        credentials_encrypted="x",
        expires_at=None,
        refresh_token_encrypted=None,
    )


def test_record_auth_failure_flags_reauth_at_the_threshold(backend):
    cid = backend.insert_connection(sync_status="completed")
    store = backend.store
    for n in (1, 2):
        assert store.record_auth_failure(cid, reason="invalid_grant", definitive=False) is False
        row = backend.connection(cid)
        assert (row["consecutive_auth_failures"], row["needs_reauth"], row["reauth_reason"]) == (n, 0, None)
        assert (row["sync_status"], row["sync_error"]) == ("failed", "Token refresh failed: invalid_grant")
        assert row["reauth_detected_at"] is None
    backend.clock.advance(60)
    flagged_at = backend.now_iso()
    assert store.record_auth_failure(cid, reason="invalid_grant (3)", definitive=False) is True
    row = backend.connection(cid)
    assert (row["consecutive_auth_failures"], row["needs_reauth"], row["reauth_reason"]) == (
        3,
        1,
        "invalid_grant (3)",
    )
    assert row["reauth_detected_at"] == flagged_at
    backend.clock.advance(60)
    assert store.record_auth_failure(cid, reason="still refused", definitive=False) is True
    row = backend.connection(cid)
    assert (row["consecutive_auth_failures"], row["reauth_reason"]) == (4, "still refused")
    assert row["reauth_detected_at"] == flagged_at  # when it was first detected


def test_record_auth_failure_definitive_flags_at_once(backend):
    cid = backend.insert_connection()
    other = backend.insert_connection()
    store = backend.store
    assert (
        store.record_auth_failure(cid, reason="token revoked", definitive=True, prefix="Sync failed") is True
    )
    row = backend.connection(cid)
    assert (row["consecutive_auth_failures"], row["needs_reauth"], row["reauth_reason"]) == (
        1,
        1,
        "token revoked",
    )
    assert (row["sync_status"], row["sync_error"], row["reauth_detected_at"]) == (
        "failed",
        "Sync failed: token revoked",
        backend.now_iso(),
    )
    assert store.record_auth_failure(other, reason="refused", definitive=False, threshold=1) is True
    assert backend.connection(other)["needs_reauth"] == 1
    assert store.record_auth_failure("org-1-google-nope", reason="x", definitive=True) is False


def test_record_auth_failure_stores_no_secret(backend):
    cid = backend.insert_connection()
    backend.store.record_auth_failure(
        cid, reason="POST /token refresh_token=1//0gSecretValue9 -> 400", definitive=False
    )
    row = backend.connection(cid)
    assert "1//0gSecretValue9" not in row["sync_error"]
    assert "refresh_token=***" in row["sync_error"]


def test_connections_expiring_are_the_refresh_candidates_by_platform_earliest_first(backend):
    ins = backend.insert_connection
    in_1h = ins(platform="google", expires_at=iso_z(T0 + timedelta(hours=1)))
    in_10m = ins(platform="google", expires_at="2025-10-10 20:55:30")  # the SQLite spelling
    facebook = ins(platform="facebook", expires_at=iso_z(T0 + timedelta(minutes=30)))
    expired = ins(platform="google", expires_at=iso_z(T0 - timedelta(hours=1)))
    ins(platform="google", expires_at=iso_z(T0 + timedelta(hours=3)))  # after the cutoff
    ins(platform="google", expires_at=iso_z(T0), is_active=0)
    ins(platform="google", expires_at=iso_z(T0), needs_reauth=1)
    ins(platform="google", expires_at=None)
    found = backend.store.connections_expiring(julian_day(T0 + timedelta(hours=2)))
    assert [c.id for c in found] == [facebook, expired, in_10m, in_1h]


def test_stored_ciphertexts_sample_the_access_tokens(backend):
    a = backend.insert_connection(credentials_encrypted="cipher-a")
    b = backend.insert_connection(credentials_encrypted="cipher-b")
    backend.insert_connection(credentials_encrypted=None)
    store = backend.store
    assert sorted(store.stored_ciphertexts()) == ["cipher-a", "cipher-b"]
    assert store.stored_ciphertexts(first=b)[0] == "cipher-b"
    assert store.stored_ciphertexts(1, first=a) == ["cipher-a"]
    assert store.stored_ciphertexts(1, first=b) == ["cipher-b"]


def test_queued_ciphertexts_are_those_of_live_messages(backend):
    store = backend.store
    assert store.queued_ciphertexts() == []
    ready = backend.insert_connection(credentials_encrypted="cipher-ready")
    leased = backend.insert_connection(credentials_encrypted="cipher-leased")
    done = backend.insert_connection(credentials_encrypted="cipher-done")
    no_token = backend.insert_connection(credentials_encrypted=None)
    backend.insert_connection(credentials_encrypted="cipher-idle")
    for cid, state in ((ready, "ready"), (leased, "leased"), (done, "done"), (no_token, "ready")):
        job_id = backend.insert_job(cid)
        backend.insert_message(backend.message_for(job_id, cid), state=state)
    assert sorted(store.queued_ciphertexts()) == ["cipher-leased", "cipher-ready"]


def test_token_sample_takes_active_connections_tokens(backend):
    a = backend.insert_connection(credentials_encrypted="ca", refresh_token_encrypted="ra")
    b = backend.insert_connection(credentials_encrypted="cb", refresh_token_encrypted=None)
    backend.insert_connection(credentials_encrypted="cc", refresh_token_encrypted="rc", is_active=0)
    backend.insert_connection(credentials_encrypted=None, refresh_token_encrypted="rd")
    sample = backend.store.token_sample(10)
    assert sorted(sample) == sorted(
        [
            (a, "credentials_encrypted", "ca"),
            (a, "refresh_token_encrypted", "ra"),
            (b, "credentials_encrypted", "cb"),
        ]
    )
    assert len(backend.store.token_sample(1)) == 1


# -- the operator's view --------------------------------------------------------------------------------


def test_connection_counts_group_by_platform_activity_status_and_reauth(backend):
    ins = backend.insert_connection
    ins(platform="google", sync_status="completed", expires_at=iso_z(T0))
    ins(platform="google", sync_status="completed", expires_at=None, refresh_token_encrypted=None)
    ins(platform="google", sync_status="completed", expires_at=None, refresh_token_encrypted="r")
    ins(platform="google", sync_status=None)  # the API worker left it unset
    ins(platform="facebook", sync_status="failed", is_active=0, needs_reauth=1, refresh_token_encrypted="r")
    assert sorted(backend.store.connection_counts()) == [
        ("facebook", False, "failed", True, 1, 1),
        ("google", True, "completed", False, 3, 2),
        ("google", True, "pending", False, 1, 0),
    ]


def test_connections_with_latest_job(backend):
    a = backend.insert_connection(organization_id="org-1", account_id="1")
    b = backend.insert_connection(organization_id="org-1", account_id="2")
    c = backend.insert_connection(organization_id="org-2", platform="facebook", account_id="3")
    backend.insert_job(a, status="completed", created_at=iso_z(T0 - timedelta(days=2)), records_synced=10)
    latest = backend.insert_job(
        a,
        status="failed",
        created_at=iso_z(T0 - timedelta(hours=1)),
        completed_at=iso_z(T0 - timedelta(minutes=50)),
        error_message="HTTP 500",
        metadata='{"k": 1}',
    )
    c_job = backend.insert_job(c, status="running")
    rows = backend.store.connections_with_latest_job()
    assert [r["id"] for r in rows] == [a, b, c]
    ra, rb, rc = rows
    assert "credentials_encrypted" not in ra.keys()  # tokens stay out of the operator's view
    assert (ra["job_id"], ra["job_status"], ra["job_type"], ra["job_error_message"]) == (
        latest,
        "failed",
        "full",
        "HTTP 500",
    )
    assert (ra["job_completed_at"], ra["job_records_synced"], ra["job_metadata"]) == (
        iso_z(T0 - timedelta(minutes=50)),
        0,
        '{"k": 1}',
    )
    assert ra["job_created_at"] == iso_z(T0 - timedelta(hours=1))
    assert rb["job_id"] is None and rb["job_status"] is None
    assert (rc["job_id"], rc["job_status"]) == (c_job, "running")
    assert [r["id"] for r in backend.store.connections_with_latest_job(organization_id="org-2")] == [c]
    assert [r["id"] for r in backend.store.connections_with_latest_job(platform="google")] == [a, b]
