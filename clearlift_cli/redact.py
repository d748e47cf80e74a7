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
    # the password of a URL: scheme://user:PASSWORD@host (up to the last @ before a space)
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s/?#@:]*:)[^\s@]*(?:@[^\s@]*)*(?=@)"),
    # libpq key/value strings: password='with spaces' or password="..."
    re.compile(r"(?i)((?:password|secret|key)\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"),
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

# Shorter strings would mask ordinary words; real tokens are far longer.
_MIN_SECRET_LEN = 8
# Known secrets, found without trying each one: a consumer registers every connection's
# tokens, so a run of 10,000 jobs knows 20,000 of them, and neither ``redact`` nor
# ``register`` may grow with that (trying each, or re-sorting all, did). A secret is looked
# up where it would start in the text: by its first _MIN_SECRET_LEN characters, then, if it
# is at least _LONG characters long, by its first _LONG (tokens of one platform share a
# prefix, e.g. Google's "ya29.a0A", so the short key alone would pile them in one list).
# Values are tuples, longest first, replaced whole: readers need no lock.
_LONG = 24
_short: dict[str, tuple[str, ...]] = {}  # first 8 characters -> secrets shorter than _LONG
_long: dict[str, tuple[str, ...]] = {}  # first _LONG characters -> secrets at least that long


def _add(index: dict[str, tuple[str, ...]], key: str, secret: str) -> None:
    index[key] = tuple(sorted((*index.get(key, ()), secret), key=len, reverse=True))


def register(*secrets: str | None) -> None:
    """Remember values that must never be shown (tokens, keys, app secrets)."""
    with _lock:
        for secret in secrets:
            if secret and len(secret) >= _MIN_SECRET_LEN and secret not in _known:
                _known.add(secret)
                head = secret[:_MIN_SECRET_LEN]
                if len(secret) >= _LONG:
                    _short.setdefault(head, ())
                    _add(_long, secret[:_LONG], secret)
                else:
                    _add(_short, head, secret)


def known() -> frozenset[str]:
    """Every registered secret (for tests that save and restore the process's state)."""
    with _lock:
        return frozenset(_known)


def forget_all_but(secrets: set[str] | frozenset[str]) -> None:
    """Know exactly ``secrets`` from now on (for tests: each command as a fresh process)."""
    with _lock:
        _known.clear()
        _short.clear()
        _long.clear()
    register(*secrets)


def _secret_at(s: str, i: int) -> str | None:
    """The longest registered secret that starts at ``s[i]``, if any."""
    short = _short.get(s[i : i + _MIN_SECRET_LEN])
    if short is None:
        return None
    for candidates in (_long.get(s[i : i + _LONG], ()), short):
        for secret in candidates:
            if s.startswith(secret, i):
                return secret
    return None


def _mask_known(s: str) -> str:
    """``s`` with every registered secret in it masked; where two start at the same place
    the longer one is masked whole."""
    if not _short:
        return s
    pieces: list[str] = []
    start = i = 0
    end = len(s) - _MIN_SECRET_LEN + 1
    while i < end:
        secret = _secret_at(s, i)
        if secret is None:
            i += 1
            continue
        pieces += (s[start:i], MASK)
        i = start = i + len(secret)
    if not pieces:
        return s
    pieces.append(s[start:])
    return "".join(pieces)


def redact(text: object) -> str:
    """Return ``text`` with every known secret and secret-shaped value masked."""
    s = str(text)
    if not s:
        return s
    s = _mask_known(s)
    for pattern in _PATTERNS:
        s = pattern.sub(lambda m: m.group(1) + MASK, s)
    return s


def mask_url(url: object) -> str:
    """``url`` with the password of its authority (``scheme://user:PASSWORD@host``) and of
    its query (``?password=...``) replaced by ``***``. Never raises and never trusts the URL
    to be well formed: everything between ``user:`` and the last ``@`` is masked, so a
    password holding spaces, ``@``, ``/`` or brackets is masked whole (a malformed URL may
    lose more than its password, never less)."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if sep and "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            text = f"{scheme}://{user}:{MASK}@{host}"
    return redact(text)


_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")


def unquote_error(exc: object) -> str:
    """A parser's error message on one line with every quoted fragment (``"pa ss"``, the
    URL itself) replaced by ``"***"``: parse errors quote the input, and the input may be a
    URL with its password."""
    return redact(_QUOTED.sub(f'"{MASK}"', " ".join(str(exc).split())))


def url_passwords(url: object) -> tuple[str, ...]:
    """The password of ``url`` as written and percent-decoded (empty when it has none), so
    that callers can mask it even where it is too short for ``register``."""
    from urllib.parse import unquote

    _scheme, sep, rest = str(url).partition("://")
    if not sep or "@" not in rest:
        return ()
    _user, colon, password = rest.rpartition("@")[0].partition(":")
    if not colon or not password:
        return ()
    return tuple(dict.fromkeys((password, unquote(password))))


# Masking a very short value would mangle ordinary words of the message.
_MIN_SCRUB_LEN = 4


def scrub(text: object, *secrets: str | None) -> str:
    """``text`` on one line, with ``secrets`` (e.g. the password of the URL at hand, however
    short) and every secret-shaped value masked."""
    s = " ".join(str(text).split())
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        if len(secret) >= _MIN_SCRUB_LEN:
            s = s.replace(secret, MASK)
    return redact(s)


def unencoded_userinfo(url: object) -> bool:
    """True when the user or password of ``url`` holds a character that must be
    percent-encoded there (``@ / ? #``): libpq then splits the URL elsewhere than
    ``mask_url`` does, and its errors would quote pieces of the password as host names."""
    _scheme, sep, rest = str(url).partition("://")
    if not sep or "@" not in rest:
        return False
    userinfo = rest.rpartition("@")[0]
    return any(c in userinfo for c in "@/?#")
