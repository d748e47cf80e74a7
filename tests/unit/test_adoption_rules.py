"""Pure rules behind adoption and store URLs: adopted metadata, a row's last sign of life,
which store settings are files and which are URLs clearlift cannot open."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from clearlift_cli.adoption import adopted_metadata, last_sign_of_life
from clearlift_cli.errors import ConfigError
from clearlift_cli.models import Priority, SyncWindow
from clearlift_cli.store import sqlite_path

UTC = UTC
NOW = datetime(2025, 10, 10, 20, 45, 30, tzinfo=UTC)
WINDOW = SyncWindow(NOW - timedelta(days=7), NOW)


def test_adopted_metadata_keeps_every_key_the_api_worker_wrote() -> None:
    api = {
        "triggered_by": "user-1",
        "manual": True,
        "sync_window": {"type": "full", "start": "x", "end": "y"},
    }
    out = json.loads(
        adopted_metadata(
            json.dumps(api), at="2025-10-10T20:45:30.000Z", window=WINDOW, priority=Priority.HIGH
        )
    )
    assert {k: out[k] for k in api} == api
    assert out["adopted"] == {
        "at": "2025-10-10T20:45:30.000Z",
        "by": "clearlift schedule",
        "sync_window": WINDOW.to_json(),
        "priority": "high",
    }


@pytest.mark.parametrize(
    "text, kept", [(None, None), ("", ""), ("not json", "not json"), ("[1, 2]", "[1, 2]")]
)
def test_adopted_metadata_that_was_not_an_object_is_kept_whole(text, kept) -> None:
    out = json.loads(adopted_metadata(text, at="t", window=WINDOW, priority=Priority.NORMAL))
    if text:
        assert out["original_metadata"] == kept
    assert out["adopted"]["priority"] == "normal"


def test_adopted_metadata_is_json_the_api_worker_can_parse() -> None:
    text = '{"records_synced": NaN, "ratio": Infinity}'  # Python reads it; JSON.parse does not
    out = adopted_metadata(text, at="t", window=WINDOW, priority=Priority.NORMAL)
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} written"))
    assert data["original_metadata"] == text and data["adopted"]["priority"] == "normal"


def test_last_sign_of_life_is_the_newest_timestamp_in_either_spelling() -> None:
    row = {
        "created_at": "2025-10-10 18:00:00",
        "started_at": "2025-10-10T18:30:00.000Z",
        "updated_at": "2025-10-10 19:15:00",
    }
    assert last_sign_of_life(row) == datetime(2025, 10, 10, 19, 15, tzinfo=UTC)
    assert last_sign_of_life({**row, "updated_at": "soon"}) == datetime(2025, 10, 10, 18, 30, tzinfo=UTC)
    assert last_sign_of_life({"created_at": None, "started_at": "", "updated_at": "garbage"}) is None


@pytest.mark.parametrize(
    "setting, path",
    [
        ("/var/lib/clearlift/clearlift.db", "/var/lib/clearlift/clearlift.db"),
        ("clearlift.db", "clearlift.db"),
        ("./odd:name.db", "./odd:name.db"),
        ("sqlite:///rel/c.db", "rel/c.db"),
        ("sqlite:////abs/c.db", "/abs/c.db"),
    ],
)
def test_store_settings_that_name_a_file(setting, path) -> None:
    assert sqlite_path(setting) == path


@pytest.mark.parametrize(
    "setting",
    [
        "d1://acct/db",
        "mysql://u:pw@h/db",
        "HTTP://h/x",
        "sqlite://c.db",
        "sqlite:c.db",
        "file:///tmp/c.db",
        "mysql://u:pw@[::1/db",
    ],
)
def test_store_urls_clearlift_cannot_open_are_config_errors_with_the_password_masked(setting) -> None:
    with pytest.raises(ConfigError) as err:
        sqlite_path(setting)
    assert err.value.exit_code == 3 and "pw" not in str(err.value)
