"""Every function of clearlift_cli reads at once: none is longer than ``MAX_LINES`` lines.

A function's length is counted as ``ast`` sees it, from its ``def`` line to its last line
(``end_lineno - lineno + 1``: docstring, comments and blank lines inside included,
decorators not). Nested functions and methods count on their own, and also as part of the
function that holds them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "clearlift_cli"
MAX_LINES = 60


def long_functions(source: str, max_lines: int = MAX_LINES) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of each function in ``source`` longer than ``max_lines``."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert child.end_lineno is not None
                lines = child.end_lineno - child.lineno + 1
                if lines > max_lines:
                    found.append((f"{prefix}{child.name}", lines))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_no_function_in_the_package_is_longer_than_the_limit() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50, "the package was not found where this test looks for it"
    too_long = [
        f"{path.relative_to(PACKAGE.parent).as_posix()}: {name} is {lines} lines (at most {MAX_LINES})"
        for path in modules
        for name, lines in long_functions(path.read_text(encoding="utf-8"))
    ]
    assert too_long == [], "split these into well-named pieces:\n" + "\n".join(too_long)


def test_the_count_runs_from_def_to_the_last_line_and_sees_methods_and_nested_functions() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    at_limit = f"def fits():\n{body}\n"  # 1 + 59 lines
    over = f"class Holder:\n    def method(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n        y = 0\n"
    nested = f"def outer():\n    def inner():\n    {body.replace(chr(10), chr(10) + '    ')}\n        y = 0\n"
    assert long_functions(at_limit) == []
    assert long_functions(over) == [("Holder.method", 61)]
    assert long_functions(nested) == [("outer", 62), ("outer.inner", 61)]
