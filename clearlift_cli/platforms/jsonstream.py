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
    # The buffer is a local of this loop, which runs once per element and per comma: ``+=``
    # then extends it in place, and each cut lets go of the text before it at once.
    decode = json.JSONDecoder().raw_decode
    pending = _Pending(max_chars)
    buf = ""  # undecoded text
    state = "start"  # start -> value (an element or "]") -> comma ("," or "]") -> end
    last_size = 0  # characters the last decoded element took
    for text, eof in _texts(chunks):
        if not pending.add(text, eof, len(buf)):
            continue
        buf += pending.take()
        pos = 0
        while True:
            pos = _skip_ws(buf, pos)
            if pos >= len(buf):
                break
            ch = buf[pos]
            if state == "comma" and ch == ",":  # the common case first
                state, pos = "value", pos + 1
                continue
            if state != "value" or ch == "]":  # the array's other characters
                following = _GRAMMAR.get((state, ch))
                if following is None:
                    raise _out_of_place(state, ch)
                state, pos = following, pos + 1
                continue
            if pos and last_size and not eof and len(buf) - pos < last_size:
                break  # likely incomplete, as big as the last one: read more first
            try:
                value, end = decode(buf, pos)
            except json.JSONDecodeError as exc:
                if eof:
                    raise _undecodable(exc, len(buf)) from None
                break  # incomplete: read more
            if end >= len(buf) and not eof and not isinstance(value, (dict, list, str)):
                break  # a number or literal at the very end may go on in the next chunk
            state, pos, last_size = "comma", end, end - pos
            yield value
        buf = buf[pos:]
        pending.wait_after(len(buf), pos, last_size)
    if state != "end":
        raise StreamError("truncated", "the answer ended before its JSON array was complete (truncated)")


def _texts(chunks: Iterable[bytes]) -> Iterator[tuple[str, bool]]:
    """The text of each chunk, decoded as UTF-8 across chunk boundaries, and whether it is
    the end (a last, possibly empty, text)."""
    utf8 = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in chunks:
            if chunk:
                yield utf8.decode(chunk), False
        yield utf8.decode(b"", final=True), True
    except UnicodeDecodeError as exc:
        raise StreamError("malformed", f"the answer is not UTF-8 ({exc.reason})") from None


# The array's grammar outside its elements: (state, character) -> the next state.
_GRAMMAR = {("start", "["): "value", ("value", "]"): "end", ("comma", "]"): "end", ("comma", ","): "value"}


def _out_of_place(state: str, ch: str) -> StreamError:
    if state == "start":
        return StreamError("not-an-array", "the answer is not a JSON array")
    if state == "end":
        return StreamError("malformed", "the answer has text after its JSON array")
    return StreamError("malformed", f"the answer's array has {ch!r} where ',' belongs")


def _too_large(max_chars: int) -> StreamError:
    return StreamError("too-large", f"one element of the answer exceeds {max_chars:,} characters")


def _undecodable(exc: json.JSONDecodeError, length: int) -> StreamError:
    """An element that cannot be decoded once the answer has ended."""
    kind = "truncated" if exc.pos >= length - 1 or "Unterminated" in exc.msg else "malformed"
    return StreamError(kind, f"the answer's JSON is {kind} ({exc.msg})")


class _Pending:
    """The text read since the last attempt to decode, and how many characters the buffer
    and it must hold before the next attempt."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self.parts: list[str] = []  # text read since the last attempt
        self.waiting = 0  # characters in parts
        self.need = 1  # try to decode again once buf + parts hold this many characters

    def add(self, text: str, eof: bool, buffered: int) -> bool:
        """Take ``text``; True when it is time to decode (enough text, or the end)."""
        if text:
            self.parts.append(text)
            self.waiting += len(text)
        if not eof and buffered + self.waiting < self.need:
            if buffered + self.waiting > self.max_chars:
                raise _too_large(self.max_chars)
            return False
        return True

    def take(self) -> str:
        """The text read since the last attempt, as one string."""
        text = "".join(self.parts) if self.parts else ""
        self.parts, self.waiting = [], 0
        return text

    def wait_after(self, left: int, pos: int, last_size: int) -> None:
        """The wait after an attempt that left ``left`` characters in the buffer, having
        decoded up to ``pos`` (0: nothing); ``last_size``: the last element's size."""
        if not left:
            self.need = 1
        elif pos and last_size:  # something was decoded: expect another of the same size
            self.need = left + last_size + last_size // 8
        elif last_size:  # a stall after a wrong guess: wait until the buffer has doubled
            self.need = 2 * left
        else:  # the first element, size unknown: grow fast, each vain parse costs its length
            self.need = max(4 * left, left + 65536)
        if left > self.max_chars:
            raise _too_large(self.max_chars)
