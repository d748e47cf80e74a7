"""tests/e2e/: every ``Env`` runs the installed `clearlift` command as a subprocess (the
rest of the suite runs it in-process); fixtures are those of tests/conftest.py."""

from __future__ import annotations

import pytest

from tests.harness import Env


@pytest.fixture(autouse=True)
def installed_command(monkeypatch):
    monkeypatch.setattr(Env, "INSTALLED", True)
