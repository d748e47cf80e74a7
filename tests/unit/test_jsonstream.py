"""Decoding one JSON array element by element as its bytes arrive."""

from __future__ import annotations

import json

import pytest

from clearlift_cli.platforms.jsonstream import StreamError, iter_json_array

BATCHES = [
    {
        "results": [{"campaign": {"id": str(i), "name": f'Brand \u00e9 "{i}"'}} for i in range(50)],
        "fieldMask": "campaign.id",
        "requestId": "r",
    }
    for _ in range(5)
]


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 7, 1000, 10**6])
def test_any_chunking_yields_the_same_elements(size):
    data = json.dumps([*BATCHES, 12, "x", None, [1, 2]], indent=1).encode()
    assert list(iter_json_array(pieces(data, size), max_chars=10**6)) == [*BATCHES, 12, "x", None, [1, 2]]


def test_elements_come_out_before_the_array_ends():
    data = json.dumps(BATCHES).encode()

    def first_half_then_stall():
        yield data[: len(data) // 2 + 1]
        raise RuntimeError("the rest never came")

    got = iter_json_array(first_half_then_stall(), max_chars=10**6)
    assert next(got) == BATCHES[0]
    assert next(got) == BATCHES[1]


def test_a_number_cut_between_chunks_is_not_taken_early():
    assert list(iter_json_array([b"[12", b"34, 5", b"6]"], max_chars=100)) == [1234, 56]


def test_empty_array_and_whitespace():
    assert list(iter_json_array([b"  [ ", b" ]\n"], max_chars=100)) == []


@pytest.mark.parametrize(
    "data, kind",
    [
        (b'{"error": {}}', "not-an-array"),
        (b"<html>502</html>", "not-an-array"),
        (b'[{"a": 1}, {"b": ', "truncated"),
        (b'[{"a": 1}', "truncated"),
        (b"", "truncated"),
        (b'[{"a": 1} {"b": 2}]', "malformed"),
        (b'[{"a": 1}] extra', "malformed"),
        (b'[{"a": tru}]', "malformed"),
        (b'["\xff\xfe"]', "malformed"),
    ],
)
def test_broken_answers_are_named(data, kind):
    with pytest.raises(StreamError) as exc:
        list(iter_json_array(pieces(data, 4), max_chars=10**6))
    assert exc.value.kind == kind


def test_one_element_larger_than_the_limit_is_refused_before_it_is_held():
    big = json.dumps([{"x": "y" * 5000}]).encode()
    seen = []

    def chunks():
        for chunk in pieces(big, 100):
            seen.append(chunk)
            yield chunk

    with pytest.raises(StreamError) as exc:
        list(iter_json_array(chunks(), max_chars=1000))
    assert exc.value.kind == "too-large"
    assert sum(map(len, seen)) < 1300  # stopped reading soon after the limit


def test_many_small_elements_never_trip_a_small_limit():
    data = json.dumps([{"i": i} for i in range(5000)]).encode()
    assert len(list(iter_json_array(pieces(data, 65536), max_chars=200))) == 5000
