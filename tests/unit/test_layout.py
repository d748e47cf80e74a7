"""The tests' own house rules (tests/README.md): every test module lives in a layer's
directory, no test module imports another test module (shared helpers live in modules
that are not test modules: tests/helpers.py, tests/harness.py, conftest.py ...), and
tests/cli/ never starts the installed command (that is what tests/e2e/ is for).
Reads the repository's Python files; touches nothing else."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
LAYERS = {"unit", "integration", "contract", "cli", "e2e"}


def is_test_module(name: str) -> bool:
    """A dotted module name whose last part is a test module (``test_*``)."""
    return name.rsplit(".", 1)[-1].startswith("test_")


def imported_test_modules(source: str) -> list[str]:
    """The test modules ``source`` imports, by statement or in a string it runs
    (``python -c "from tests... import ..."``)."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if is_test_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if is_test_module(module):
                found.append(module)
            else:  # `from tests.cli import test_status`
                found += [f"{module}.{a.name}" for a in node.names if is_test_module(a.name)]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            found += [
                a.value for a in node.args if isinstance(a, ast.Constant) and is_test_module(str(a.value))
            ]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            try:  # code run by a child process: `python -c "from tests... import ..."`
                found += imported_test_modules(node.value)
            except SyntaxError:  # prose, not code
                pass
    return found


def test_the_scan_finds_every_way_of_importing_a_test_module():
    source = (
        "import tests.cli.test_status\n"
        "from tests.e2e.test_reliability import child_main\n"
        "from tests.cli import test_status as s\n"
        "import importlib\n"
        "importlib.import_module('tests.unit.test_paging')\n"
        "CODE = 'import sys; from tests.e2e.test_reliability import child_main'\n"
    )
    assert imported_test_modules(source) == [
        "tests.cli.test_status",
        "tests.e2e.test_reliability",
        "tests.cli.test_status",
        "tests.unit.test_paging",
        "tests.e2e.test_reliability",
    ]
    helpers = (
        "from tests.helpers import raw\nfrom tests.e2e.children import child_main\n"
        "import pytest\nDOC = 'test modules import from here, e.g. tests/e2e/test_reliability.py'\n"
    )
    assert imported_test_modules(helpers) == []


def test_no_test_module_imports_another_test_module():
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        if path == Path(__file__).resolve():  # its examples above are strings, not imports
            continue
        found = imported_test_modules(path.read_text())
        if found:
            offenders[str(path.relative_to(TESTS))] = found
    assert offenders == {}, "move what they share into tests/helpers.py, tests/harness.py or a conftest"


def test_every_test_module_is_in_a_layer():
    stray = [
        str(p.relative_to(TESTS))
        for p in TESTS.rglob("test_*.py")
        if p.relative_to(TESTS).parts[0] not in LAYERS
    ]
    assert stray == [], f"put each test module under one of tests/{{{','.join(sorted(LAYERS))}}}/"


# What starts the installed command as a process (tests/helpers.py, tests/harness.py).
STARTS_THE_INSTALLED_COMMAND = {"CLEARLIFT", "run_cli", "popen", "Popen"}


def test_the_cli_layer_runs_the_command_in_process():
    found = {}
    for path in sorted((TESTS / "cli").rglob("*.py")):
        names = {
            n.id if isinstance(n, ast.Name) else n.attr
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.Name, ast.Attribute))
        } | {
            a.name
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ImportFrom)
            for a in n.names
        }
        if names & STARTS_THE_INSTALLED_COMMAND:
            found[path.name] = sorted(names & STARTS_THE_INSTALLED_COMMAND)
    assert found == {}, (
        "tests/cli/ runs the command with helpers.invoke or Env.run; processes go in tests/e2e/"
    )
