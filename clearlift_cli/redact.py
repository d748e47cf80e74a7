"""Keep secrets out of every line a person or the database can see.

Two layers: values we know are secret (registered with ``register``) are replaced
wherever they appear, and patterns that carry secrets on the wire (``access_token=...`` in
Facebook URLs, ``Bearer ...``, Stripe keys, client secrets in form bodies) are masked even
when the value was never registered.
"""

from __future__ import annotations

import re
import threading

MASK = "***"

_PATTERNS = [
    # query-string or form parameters that carry secrets
    re.compile(
        r"(?i)((?:access_token|fb_exchange_token|client_secret|refresh_token|"
        r"developer_token|appsecret_proof|secret|password|key)=)[^&\s'\"]+"
    ),
    # JSON fields that carry secrets
    re.compile(
        r"(?i)(\"(?:access_token|refresh_token|client_secret|fb_exchange_token)\"\s*:\s*\")"
        r"[^\"]*"
    ),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)(access-token:\s*)\S+"),
    re.compile(r"()\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]+"),
]

_lock = threading.Lock()
_known: set[str] = set()
# longest first, so a secret containing another is masked whole; rebuilt only on register
_ordered: tuple[str, ...] = ()

# Shorter strings would mask ordinary words; real tokens are far longer.
_MIN_SECRET_LEN = 8


def register(*secrets: str | None) -> None:
    """Remember values that must never be shown (tokens, keys, app secrets)."""
    global _ordered
    with _lock:
        fresh = [s for s in secrets if s and len(s) >= _MIN_SECRET_LEN and s not in _known]
        if fresh:
            _known.update(fresh)
            _ordered = tuple(sorted(_known, key=len, reverse=True))


def redact(text: object) -> str:
    """Return ``text`` with every known secret and secret-shaped value masked."""
    s = str(text)
    if not s:
        return s
    for secret in _ordered:  # a tuple swapped whole by register(): safe to read unlocked
        if secret in s:
            s = s.replace(secret, MASK)
    for pattern in _PATTERNS:
        s = pattern.sub(lambda m: m.group(1) + MASK, s)
    return s
