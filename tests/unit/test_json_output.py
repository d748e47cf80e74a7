"""Lists in JSON keep their layout, one compact item per line (the C encoder), and what JSON
refuses is still refused."""

from __future__ import annotations

import json
import math
from datetime import date
from decimal import Decimal

import pytest

from clearlift_cli import cli


def test_json_lists_print_one_compact_item_per_line(capsys):
    items = [
        {"id": "a", "name": "Café ☕", "nested": {"n": [1, 2.5, None, True]}, "day": date(2025, 10, 10)},
        {"money": Decimal("1.10"), "quote": 'say "hi"\n'},
        [],
        "text",
    ]
    cli._print_json(items)
    cli._print_json([])
    out = capsys.readouterr().out
    each = ",\n".join("  " + json.dumps(i, default=str, allow_nan=False) for i in items)
    assert out == f"[\n{each}\n]\n[]\n"
    assert json.loads(out[: -len("[]\n")]) == json.loads(json.dumps(items, default=str))
    with pytest.raises(ValueError):
        cli._print_json([{"x": math.nan}])
    with pytest.raises(ValueError):  # a cycle is refused, not looped over
        cycle: dict = {}
        cycle["self"] = cycle
        cli._print_json([cycle])
