"""Decoding queue messages: the contract's shape, or MalformedMessage saying which field."""

from __future__ import annotations

import json

import pytest

from clearlift_cli.models import MalformedMessage, SyncJobMessage
from clearlift_cli.store.queue import decode_message

GOOD = {
    "job_id": "j-1",
    "connection_id": "org-1-google-123",
    "organization_id": "org-1",
    "platform": "google",
    "account_id": "123",
    "job_type": "incremental",
    "sync_window": {"start": "2025-10-07T00:00:00.000Z", "end": "2025-10-10T20:45:30.000Z"},
    "metadata": {"retry_count": 0, "created_at": "2025-10-10T20:45:30.000Z", "priority": "normal"},
}


def body(**changes) -> str:
    data = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = data
        for p in parents:
            node = node[p]
        if value is ...:
            del node[leaf]
        else:
            node[leaf] = value
    return json.dumps(data)


def test_the_contract_message_round_trips() -> None:
    msg = SyncJobMessage.loads(json.dumps(GOOD))
    assert json.loads(msg.dumps()) == GOOD
    assert decode_message(json.dumps(GOOD), "j-1") == msg


@pytest.mark.parametrize(
    "text, says",
    [
        (body(sync_window__end=None), "sync_window.end is missing or not a timestamp string (null)"),
        (body(sync_window__start=...), "sync_window.start is missing"),
        (body(sync_window=None), "sync_window is missing or not an object"),
        (body(sync_window__end="yesterday"), "sync_window.end 'yesterday' is not a timestamp"),
        (
            body(sync_window__start="0001-01-01T00:00:00+01:00"),
            "sync_window.start '0001-01-01T00:00:00+01:00' is not a timestamp",
        ),
        (body(sync_window__start="0001-01-01T00:00:00.000Z"), "sync_window spans more than 3660 days"),
        (body(sync_window__start="2025-10-11T00:00:00.000Z"), "sync_window.start is after sync_window.end"),
        (body(job_id=...), "job_id is missing or not a string (null)"),
        (body(connection_id=12), "connection_id is missing or not a string (12)"),
        (body(connection_id=""), "connection_id is missing or not a string"),
        (body(platform=None), "platform is missing or not a string"),
        (body(account_id=None), "account_id is missing"),
        (body(job_type="weekly"), "job_type 'weekly' is not full or incremental"),
        ("not json at all", "message is not JSON"),
        ("", "message is not JSON"),
        ("[1, 2]", "message is not a JSON object"),
        ("[" * 100_000 + "]" * 100_000, "message is not JSON (nested too deeply)"),
    ],
)
def test_malformed_messages_say_which_field(text, says) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_message(text, "j-1")
    assert says in str(info.value)


def test_informational_metadata_never_fails_a_message() -> None:
    # the queue row holds the priority and attempts: odd metadata is not worth a failed job
    for meta in (None, "x", {"retry_count": "lots", "priority": "urgent", "created_at": 5}):
        msg = SyncJobMessage.loads(body(metadata=meta))
        assert (msg.retry_count, msg.priority.value, msg.created_at) == (0, "normal", "")
    assert SyncJobMessage.loads(body(account_id=123)).account_id == "123"
    # copied from the connection row: the job fails later with the platform's own reason
    assert SyncJobMessage.loads(body(account_id="")).account_id == ""


def test_a_message_for_another_job_than_its_row_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="job_id 'j-1' is not its queue row's job 'j-2'"):
        decode_message(json.dumps(GOOD), "j-2")


def test_invalid_input_names_parameters_and_the_cli_names_flags():
    from clearlift_cli.cli import _flag_of
    from clearlift_cli.errors import InvalidInput, UsageError

    exc = InvalidInput("since", "2025-01-05 is after <until> 2025-01-01")
    assert isinstance(exc, UsageError) and exc.exit_code == 2
    assert str(exc) == "since 2025-01-05 is after until 2025-01-01"  # the library never speaks of flags
    assert exc.worded(_flag_of) == "--since 2025-01-05 is after --until 2025-01-01"
    assert InvalidInput("lease_seconds", "must be …").worded(_flag_of) == "--lease-seconds must be …"
    assert InvalidInput("settings", ": out of range").worded(_flag_of) == "--settings: out of range"


def test_the_library_raises_no_message_that_quotes_a_command_line_flag():
    """Only the CLI speaks of flags: no string literal in a raise outside cli.py names one."""
    import ast
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "clearlift_cli"
    offenders = []
    for f in package.rglob("*.py"):
        if f.name in ("cli.py", "docs.py") or "sandbox" in f.parts:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for part in ast.walk(node.exc):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        if re.search(r"(^|[\s(])--[a-z][a-z-]+", part.value):
                            offenders.append(f"{f.name}:{node.lineno}: {part.value[:60]}")
    assert offenders == []


def test_every_status_the_stores_sql_names_is_one_of_the_enums():
    """The store's SQL spells statuses as literals (readable SQL); each must be a value of
    the enum in models.py for its column, so a typo cannot create a status nobody knows."""
    import re
    from pathlib import Path

    from clearlift_cli.models import JobStatus, MessageState, SyncStatus

    allowed = {
        "status": {s.value for s in JobStatus},
        "sync_status": {s.value for s in SyncStatus},
        "state": {s.value for s in MessageState},
    }
    store = Path(__file__).resolve().parents[2] / "clearlift_cli" / "store"
    seen = {k: set() for k in allowed}
    for f in store.glob("*.py"):
        text = f.read_text()
        for column, values in re.findall(
            r"\b(status|sync_status|state)\s*(?:=|!=|IN)\s*(\([^)]*\)|'[a-z_]+')", text
        ):
            found = set(re.findall(r"'([a-z_]+)'", values))
            seen[column] |= found
            assert found <= allowed[column], (f.name, column, found - allowed[column])
    assert seen["status"] >= {"pending", "running", "failed"} and seen["state"] >= {"ready", "leased"}
