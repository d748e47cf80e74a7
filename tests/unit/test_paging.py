"""PageGuard: the endless-pagination stop shared by the platform clients."""

from __future__ import annotations

import pytest

from clearlift_cli.errors import PermanentError
from clearlift_cli.platforms.paging import EndlessPagination, PageGuard


def rows(*ids):
    return [{"id": i, "spend": "1.00"} for i in ids]


def test_distinct_pages_pass_and_the_last_page_may_be_the_capth():
    guard = PageGuard("facebook", "campaigns", max_pages=3)
    guard.page(rows(1, 2), ["u", "a"])
    guard.page(rows(3, 4), ["u", "b"])
    guard.page(rows(5), ["u", "c"], more=False)  # the cap is reached but nothing more is announced
    assert guard.pages == 3


def test_more_pages_after_the_cap_stop_the_walk():
    guard = PageGuard("tiktok", "report 2024-05-01..2024-05-30", max_pages=2)
    guard.page(rows(1))
    with pytest.raises(EndlessPagination, match="still more pages after 2") as info:
        guard.page(rows(2))
    assert isinstance(info.value, PermanentError)
    assert "report 2024-05-01..2024-05-30" in str(info.value)


def test_a_repeated_cursor_stops_the_walk():
    guard = PageGuard("facebook", "insights", max_pages=100)
    guard.page(rows(1), ["u", [("after", "x")]])
    with pytest.raises(EndlessPagination, match="same page twice"):
        guard.page(rows(2), ["u", [("after", "x")]])


def test_repeated_rows_stop_the_walk_in_any_order():
    guard = PageGuard("tiktok", "campaigns", max_pages=100)
    guard.page(rows(1, 2, 3))
    guard.page(rows(4, 5, 6))
    with pytest.raises(EndlessPagination, match="page 3 repeats the 3 rows"):
        guard.page(list(reversed(rows(1, 2, 3))))


def test_empty_pages_with_new_cursors_are_left_to_the_cursor_check_and_cap():
    guard = PageGuard("facebook", "campaigns", max_pages=5)
    for cursor in "abcd":
        guard.page([], ["u", cursor])
    with pytest.raises(EndlessPagination, match="still more pages"):
        guard.page([], ["u", "e"])
