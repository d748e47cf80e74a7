"""Decode the elements of one top-level JSON array as its bytes arrive.

Google's ``searchStream`` answers one JSON array of batches (``[{"results": [...]}, ...]``)
that can run to hundreds of megabytes; decoding it whole holds the text and every row at
once. ``iter_json_array`` holds one element at a time instead: it appends the bytes it reads
to a buffer and decodes complete elements off its front with ``json.JSONDecoder.raw_decode``
(the C scanner, no new dependency). Each attempt on an incomplete element parses it in
vain, so the next attempt waits until the buffer holds a little more than the last
element took (stream batches are alike in size), or, failing that, until it has doubled
(quadrupled for the first element), or the answer ended: the text is parsed about once,
at worst about twice, and ``max_chars`` bounds what one element may buffer.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from typing import Any

_WHITESPACE = " \t\n\r"


class StreamError(ValueError):
    """The bytes are not one complete JSON array. ``kind`` is ``not-an-array``,
    ``malformed``, ``truncated`` or ``too-large``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _skip_ws(text: str, pos: int) -> int:
    end = len(text)
    while pos < end and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def iter_json_array(chunks: Iterable[bytes], *, max_chars: int) -> Iterator[Any]:
    """Yield each element of the JSON array spread over ``chunks`` (UTF-8 bytes), in
    order, as soon as it is complete. Raises ``StreamError`` when the text is not an
    array, is malformed or ends early, or when one element would need more than
    ``max_chars`` characters of buffer."""
    decode = json.JSONDecoder().raw_decode
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buf = ""  # undecoded text
    parts: list[str] = []  # text read since the last attempt
    waiting = 0  # characters in parts
    need = 1  # try to decode again once buf + parts hold this many characters
    last_size = 0  # characters the last decoded element took
    state = "start"  # start -> value (an element or "]") -> comma ("," or "]") -> end

    def feed() -> Iterator[tuple[str, bool]]:
        try:
            for chunk in chunks:
                if chunk:
                    yield utf8.decode(chunk), False
            yield utf8.decode(b"", final=True), True
        except UnicodeDecodeError as exc:
            raise StreamError("malformed", f"the answer is not UTF-8 ({exc.reason})") from None

    for text, eof in feed():
        if text:
            parts.append(text)
            waiting += len(text)
        if not eof and len(buf) + waiting < need:
            if len(buf) + waiting > max_chars:
                raise StreamError("too-large", f"one element of the answer exceeds {max_chars:,} characters")
            continue
        if parts:
            buf += "".join(parts)
            parts, waiting = [], 0
        pos = 0
        while True:
            pos = _skip_ws(buf, pos)
            if pos >= len(buf):
                break
            ch = buf[pos]
            if state == "start":
                if ch != "[":
                    raise StreamError("not-an-array", "the answer is not a JSON array")
                state, pos = "value", pos + 1
            elif state == "end":
                raise StreamError("malformed", "the answer has text after its JSON array")
            elif ch == "]":
                state, pos = "end", pos + 1
            elif state == "comma":
                if ch != ",":
                    raise StreamError("malformed", f"the answer's array has {ch!r} where ',' belongs")
                state, pos = "value", pos + 1
            else:
                if pos and last_size and not eof and len(buf) - pos < last_size:
                    break  # likely incomplete, as big as the last one: read more first
                try:
                    value, end = decode(buf, pos)
                except json.JSONDecodeError as exc:
                    if eof:
                        kind = (
                            "truncated"
                            if exc.pos >= len(buf) - 1 or "Unterminated" in exc.msg
                            else "malformed"
                        )
                        raise StreamError(kind, f"the answer's JSON is {kind} ({exc.msg})") from None
                    break  # incomplete: read more
                if end >= len(buf) and not eof and not isinstance(value, (dict, list, str)):
                    break  # a number or literal at the very end may go on in the next chunk
                state, pos, last_size = "comma", end, end - pos
                yield value
        buf = buf[pos:]
        if not buf:
            need = 1
        elif pos and last_size:  # something was decoded: expect another of the same size
            need = len(buf) + last_size + last_size // 8
        elif last_size:  # a stall after a wrong guess: wait until the buffer has doubled
            need = 2 * len(buf)
        else:  # the first element, size unknown: grow fast, each vain parse costs its length
            need = max(4 * len(buf), len(buf) + 65536)
        if len(buf) > max_chars:
            raise StreamError("too-large", f"one element of the answer exceeds {max_chars:,} characters")
    if state != "end":
        raise StreamError("truncated", "the answer ended before its JSON array was complete (truncated)")
