"""Every PostgreSQL connection clearlift opens, store and warehouse alike: no wait without
an end.

Without bounds a stalled server or network hangs ``consume`` for ever, and a consumer that
hangs (or a host that vanishes) inside a transaction keeps its locks while others wait.
``connect`` opens a connection with:

- libpq client options, unless the URL sets them: ``connect_timeout`` 10 s; TCP keepalives
  (idle 30 s, then a probe every 10 s, 3 lost probes: a dead server is noticed within about
  a minute even while a query runs); ``tcp_user_timeout`` 60 s (data sent and never
  acknowledged);
- session settings on the server, unless the URL's ``options`` set them: the three
  timeouts of ``PgLimits`` (settings ``CLEARLIFT_PG_STATEMENT_TIMEOUT``,
  ``CLEARLIFT_PG_LOCK_TIMEOUT``, ``CLEARLIFT_PG_IDLE_TIMEOUT``), and the server's own TCP
  keepalives (``tcp_keepalives_idle``/``interval``/``count``: the server notices a vanished
  client, and rolls its transaction back, within about a minute).

The session settings are sent with ``set_config`` right after connecting rather than in
the startup ``options`` parameter: PgBouncer refuses unknown startup parameters and
Supavisor ignores them. Behind a pooler in transaction mode (Supabase's port 6543) session
settings do not follow the client from one transaction to the next; set the same values on
the database role there (``ALTER ROLE … SET statement_timeout = '5min'``).

This module imports psycopg only when it connects (the CLI starts faster without it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

DEFAULT_STATEMENT_TIMEOUT = 300.0  # a warehouse slice upsert or a store migration
DEFAULT_LOCK_TIMEOUT = 60.0
# A warehouse transaction stays open while its slice is fetched: Facebook's async reports
# alone may poll for ~18 minutes (40 polls, up to 30 s apart).
DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT = 1800.0

CLIENT_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",  # milliseconds
}
SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
}


@dataclass(frozen=True)
class PgLimits:
    """How long any one statement, lock wait and idle transaction may last, in seconds
    (0 turns one off, as in PostgreSQL)."""

    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    idle_in_transaction_timeout: float = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT

    def session_settings(self) -> dict[str, str]:
        """The server settings ``connect`` applies, by PostgreSQL name."""
        return {
            "statement_timeout": _ms(self.statement_timeout),
            "lock_timeout": _ms(self.lock_timeout),
            "idle_in_transaction_session_timeout": _ms(self.idle_in_transaction_timeout),
            **SERVER_KEEPALIVES,
        }


DEFAULT_LIMITS = PgLimits()


def _ms(seconds: float) -> str:
    return f"{max(0, round(seconds * 1000))}ms"


def connect(url: str, limits: PgLimits | None = None, *, application_name: str = "clearlift", **kwargs: Any):
    """A psycopg connection to ``url`` with the bounds above (``kwargs`` go to
    ``psycopg.connect``). Raises ``psycopg.Error`` like ``psycopg.connect``."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    client: dict[str, Any] = {
        k: v
        for k, v in {**CLIENT_DEFAULTS, "application_name": application_name}.items()
        if k not in params and k not in kwargs
    }
    conn = psycopg.connect(url, **client, **kwargs)
    try:
        options = f"{params.get('options') or ''} {kwargs.get('options') or ''}"
        chosen = {
            name: value
            for name, value in (limits or DEFAULT_LIMITS).session_settings().items()
            if not re.search(rf"(?:^|[\s-]|-c){re.escape(name)}\s*=", options)
        }
        if chosen:
            conn.execute(
                "SELECT set_config(name, value, false) FROM unnest(%s::text[], %s::text[]) AS s(name, value)",
                (list(chosen), list(chosen.values())),
                prepare=False,
            )
            if not conn.autocommit:
                conn.commit()  # session settings made in a transaction last only if it commits
    except BaseException:
        conn.close()
        raise
    return conn


__all__ = ["PgLimits", "DEFAULT_LIMITS", "connect"]
