"""Domain values: connections, jobs, queue messages and their statuses."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from clearlift_cli.timeutil import iso_z, parse_ts

# The longest sync window a job may ask for (about ten years): no platform serves reports
# older, and an absurd window (a message starting in the year 1) must not start a loop
# of millions of date slices.
MAX_WINDOW_DAYS = 3660

# json.dumps(value, separators=(",", ":"), allow_nan=False), with its encoder built once
# (json.dumps builds one per call for any non-default option: half the time of a message).
_MESSAGE_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
# How json.dumps writes a str (ensure_ascii, its default): quoted, escaped, ASCII only.
_JSON_STR = json.encoder.encode_basestring_ascii


class SyncStatus(enum.StrEnum):
    """platform_connections.sync_status, as the API worker validates it."""

    PENDING = "pending"
    SYNCING = "syncing"
    COMPLETED = "completed"
    FAILED = "failed"


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class JobType(enum.StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


class Priority(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"

    @property
    def rank(self) -> int:
        return 0 if self is Priority.HIGH else 1


class MessageState(enum.StrEnum):
    READY = "ready"
    LEASED = "leased"
    DONE = "done"
    DEAD = "dead"


class Outcome(enum.StrEnum):
    """How one delivery of a job ended; JSON, logs and metrics spell it by its value."""

    COMPLETED = "completed"  # the window is in the warehouse, the message acked
    RETRY = "retry"  # a passing failure: back to the queue with backoff, one attempt used
    DEFERRED = "deferred"  # rate limited: back to the queue after the limit, no attempt used
    RELEASED = "released"  # cut short by a stopping consumer: claimable at once, no attempt used
    FAILED = "failed"  # a permanent failure, or out of attempts
    DROPPED = "dropped"  # its connection is gone or paused
    STALE = "stale"  # the lease was lost, or the job had already ended: its ending not written


def connection_id_for(organization_id: str, platform: str, account_id: str) -> str:
    return f"{organization_id}-{platform}-{account_id}"


@dataclass(frozen=True)
class Connection:
    id: str
    organization_id: str
    platform: str
    account_id: str
    account_name: str | None
    connected_by: str | None
    connected_at: str | None
    last_synced_at: str | None
    sync_status: str | None
    sync_error: str | None
    is_active: bool
    settings_text: str | None
    credentials_encrypted: str | None = field(repr=False)
    refresh_token_encrypted: str | None = field(repr=False)
    expires_at: str | None
    scopes: str | None
    needs_reauth: bool = False
    reauth_reason: str | None = None
    reauth_detected_at: str | None = None
    consecutive_auth_failures: int = 0

    @classmethod
    def from_row(cls, row: Any, keys: frozenset[str] | set[str] | None = None) -> Connection:
        """``keys``: the row's column names, when the caller reads many rows of one query
        (saves building the set once per row)."""
        if keys is None:
            keys = set(row.keys())

        def get(name: str, default: Any = None) -> Any:
            return row[name] if name in keys else default

        return cls(
            id=row["id"],
            organization_id=row["organization_id"],
            platform=row["platform"],
            account_id=str(row["account_id"]),
            account_name=get("account_name"),
            connected_by=get("connected_by"),
            connected_at=get("connected_at"),
            last_synced_at=get("last_synced_at"),
            sync_status=get("sync_status"),
            sync_error=get("sync_error"),
            is_active=bool(get("is_active", 1)),
            settings_text=get("settings"),
            credentials_encrypted=get("credentials_encrypted"),
            refresh_token_encrypted=get("refresh_token_encrypted"),
            expires_at=get("expires_at"),
            scopes=get("scopes"),
            needs_reauth=bool(get("needs_reauth", 0) or 0),
            reauth_reason=get("reauth_reason"),
            reauth_detected_at=get("reauth_detected_at"),
            consecutive_auth_failures=int(get("consecutive_auth_failures", 0) or 0),
        )

    def settings(self) -> dict[str, Any]:
        """The connection's settings JSON; raises ValueError (a ``SettingsError`` naming
        the column) when it is not an object. ``connsettings.load`` also checks ranges."""
        from clearlift_cli.connsettings import parse

        return parse(self.settings_text)

    def last_synced(self) -> datetime | None:
        return parse_ts(self.last_synced_at)

    def expires(self) -> datetime | None:
        return parse_ts(self.expires_at)


class MalformedMessage(ValueError):
    """A queue message that cannot be decoded; the text says which field and why."""


def _show(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class SyncWindow:
    start: datetime
    end: datetime

    def to_json(self) -> dict[str, str]:
        # Computed once: a new job writes its window twice (job metadata and message).
        cached = self.__dict__.get("_json")
        if cached is None:
            cached = {"start": iso_z(self.start), "end": iso_z(self.end)}
            object.__setattr__(self, "_json", cached)
        return dict(cached)

    def json_text(self) -> str:
        """``to_json()`` as compact JSON text (computed once)."""
        text = self.__dict__.get("_json_text")
        if text is None:
            w = self.to_json()
            text = f'{{"start":{_JSON_STR(w["start"])},"end":{_JSON_STR(w["end"])}}}'
            object.__setattr__(self, "_json_text", text)
        return text

    @classmethod
    def from_json(cls, data: Any) -> SyncWindow:
        """Raises MalformedMessage naming the field for anything but a sane window."""
        if not isinstance(data, dict):
            raise MalformedMessage("sync_window is missing or not an object")
        bounds = []
        for name in ("start", "end"):
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise MalformedMessage(
                    f"sync_window.{name} is missing or not a timestamp string ({_show(value)})"
                )
            try:
                bounds.append(parse_ts(value))
            except ValueError:
                raise MalformedMessage(f"sync_window.{name} {_show(value)} is not a timestamp") from None
        start, end = bounds
        assert start is not None and end is not None
        if start > end:
            raise MalformedMessage("sync_window.start is after sync_window.end")
        if end - start > timedelta(days=MAX_WINDOW_DAYS):
            raise MalformedMessage(f"sync_window spans more than {MAX_WINDOW_DAYS} days")
        return cls(start, end)


@dataclass(frozen=True)
class SyncJobMessage:
    """The queue message, field for field the one the Cloudflare workers exchanged."""

    job_id: str
    connection_id: str
    organization_id: str
    platform: str
    account_id: str
    job_type: JobType
    sync_window: SyncWindow
    retry_count: int
    created_at: str
    priority: Priority

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "connection_id": self.connection_id,
            "organization_id": self.organization_id,
            "platform": self.platform,
            "account_id": self.account_id,
            "job_type": self.job_type.value,
            "sync_window": self.sync_window.to_json(),
            "metadata": {
                "retry_count": self.retry_count,
                "created_at": self.created_at,
                "priority": self.priority.value,
            },
        }

    def dumps(self) -> str:
        """``json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False)``, byte for
        byte, written directly for the usual field types (one per job a schedule creates)."""
        n = self.retry_count
        if type(n) is not int:
            return _MESSAGE_JSON(self.to_json())
        q = _JSON_STR
        try:
            return (
                f'{{"job_id":{q(self.job_id)},"connection_id":{q(self.connection_id)},'
                f'"organization_id":{q(self.organization_id)},"platform":{q(self.platform)},'
                f'"account_id":{q(self.account_id)},"job_type":{q(self.job_type.value)},'
                f'"sync_window":{self.sync_window.json_text()},"metadata":{{"retry_count":{n},'
                f'"created_at":{q(self.created_at)},"priority":{q(self.priority.value)}}}}}'
            )
        except TypeError:  # a field that is not text (not from clearlift): the encoder decides
            return _MESSAGE_JSON(self.to_json())

    @classmethod
    def loads(cls, text: str) -> SyncJobMessage:
        """Decode a queue message; MalformedMessage (saying which field) for anything else:
        a message that cannot be decoded must fail alone, at claim time."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise MalformedMessage(f"message is not JSON ({exc})") from None
        except RecursionError:
            raise MalformedMessage("message is not JSON (nested too deeply)") from None
        if not isinstance(data, dict):
            raise MalformedMessage("message is not a JSON object")

        def text_field(name: str, *, may_be_empty: bool = False) -> str:
            value = data.get(name)
            if name == "account_id" and isinstance(value, int) and not isinstance(value, bool):
                return str(value)  # the API worker may write a numeric account id
            if not isinstance(value, str) or not (value or may_be_empty):
                raise MalformedMessage(f"{name} is missing or not a string ({_show(value)})")
            return value

        meta = data.get("metadata")
        if not isinstance(meta, dict):
            meta = {}  # only informational: the queue row holds the priority and attempts
        raw_type = data.get("job_type")
        if not isinstance(raw_type, str) or raw_type not in {t.value for t in JobType}:
            raise MalformedMessage(f"job_type {_show(raw_type)} is not full or incremental")
        job_type = JobType(raw_type)
        try:
            priority = Priority(meta.get("priority", "normal"))
        except ValueError:
            priority = Priority.NORMAL
        try:
            retry_count = max(0, int(meta.get("retry_count", 0)))
        except (ValueError, TypeError, OverflowError):
            retry_count = 0
        created_at = meta.get("created_at")
        created_at = created_at if isinstance(created_at, str) else ""
        return cls(
            job_id=text_field("job_id"),
            connection_id=text_field("connection_id"),
            # copied from the connection row, whose own checks fail the job with a better reason
            organization_id=text_field("organization_id", may_be_empty=True),
            platform=text_field("platform", may_be_empty=True),
            account_id=text_field("account_id", may_be_empty=True),
            job_type=job_type,
            sync_window=SyncWindow.from_json(data.get("sync_window")),
            retry_count=retry_count,
            created_at=created_at,
            priority=priority,
        )


@dataclass(frozen=True)
class ClaimedMessage:
    """A message leased to one consumer. ``lease_token`` fences ack/retry: only the
    delivery that holds the current lease can change the message."""

    id: int
    message: SyncJobMessage
    attempts: int
    max_attempts: int
    lease_token: str
    last_error: str | None = None
    # The store's claim sequence: every claim, on any host, gets a larger number than all
    # before it. Warehouse writes are ordered by it, never by a host's clock.
    claim_seq: int | None = None
