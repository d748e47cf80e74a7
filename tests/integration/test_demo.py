"""`run_demo` as a library, against sandboxes that fail every request: a demo that synced
nothing fails, saying why, and still shows what it did."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from clearlift_cli.demo import run_demo
from clearlift_cli.errors import ClearliftError
from clearlift_cli.sandbox import Sandbox


def test_a_demo_that_synced_nothing_fails(tmp_path):
    sb = Sandbox()
    for platform in ("google", "facebook", "tiktok", "stripe"):
        sb.app(platform).faults.add("reset", times=-1)  # every request: connection reset
    out = io.StringIO()
    with pytest.raises(ClearliftError) as info:
        run_demo(str(tmp_path / "demo"), Console(file=out, width=240), sandbox=sb)
    assert "the demo synced nothing" in str(info.value) and "connection failed" in str(info.value)
    assert "clearlift status" in info.value.hint
    assert "rows: " in out.getvalue()  # what it did is still shown
