"""A guard against pagination that never ends.

A platform that answers every page with a pointer to the next one can keep a client paging
forever: a ``paging.next`` that points back to itself (Graph), a ``total_page`` of 10^9 over
the same rows (TikTok). ``PageGuard`` is told about every page of one walk (one list or one
report window) and stops it with a ``PermanentError`` when a page's cursor was seen before,
when a non-empty page repeats the rows of an earlier page, or when the walk passes its page
cap. It keeps a 16-byte digest per page, so its memory is bounded by the cap, never by what
the platform sends.

Empty pages are not compared with each other: Graph applies filters after reading a page,
so a filtered walk may legitimately answer several empty pages with new cursors; those are
left to the cursor check and the cap.
"""

from __future__ import annotations

import json
from typing import Any

from clearlift_cli.errors import PermanentError


def _digest(value: Any) -> bytes:
    import hashlib  # here: importing the platforms (status reads their defaults) needs none of it

    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class EndlessPagination(PermanentError):
    """The platform kept answering pages that repeat, or more pages than any account has."""


class PageGuard:
    """Checks the pages of one walk. ``what`` names the walk in messages (``campaigns``,
    ``insights 2025-06-01..2025-06-30``); ``max_pages`` is the cap."""

    def __init__(self, platform: str, what: str, max_pages: int):
        self.platform = platform
        self.what = what
        self.max_pages = max_pages
        self.pages = 0
        self._cursors: set[bytes] = set()
        self._rows: set[bytes] = set()

    def page(self, rows: list[Any], cursor: Any = None, *, more: bool = True) -> None:
        """Record one answered page: its rows and the cursor that asked for it (the next
        URL's query...); ``more`` says whether the platform announced another page. Raises
        ``EndlessPagination`` on a repeat, or when another page is announced after the cap."""
        self.pages += 1
        if cursor is not None:
            key = _digest(cursor)
            if key in self._cursors:
                self._fail(f"asked for the same page twice (page {self.pages} points back to an earlier one)")
            self._cursors.add(key)
        if rows:
            # Order within a page does not make it a new page.
            key = _digest(sorted(_digest(r).hex() for r in rows))
            if key in self._rows:
                self._fail(f"page {self.pages} repeats the {len(rows)} rows of an earlier page")
            self._rows.add(key)
        if more and self.pages >= self.max_pages:
            self._fail(f"still more pages after {self.pages}, the most a walk may take")

    def _fail(self, why: str) -> None:
        raise EndlessPagination(
            f"{self.platform}: endless pagination while reading {self.what}: the platform {why}; "
            "stopped instead of paging forever. Retrying will not help until the platform "
            "answers normally again.",
            platform=self.platform,
        )
