"""Start-up: parse plain options without importing pydantic.

Typer 0.2x converts every option value it parses through a pydantic ``TypeAdapter``, built
on first use, so any command given a ``str`` option imports pydantic: ~0.1 s, a third of
``clearlift status``'s start-up. A value that already has its option's exact plain type
(``str``, ``int``, ``float``, ``bool``; no parser, range or choices) comes out of that adapter
unchanged, so here it skips the adapter; any other value (``"5"`` for an ``int`` option,
a bounded or file option) goes through Typer's own conversion, with its own errors.

``install()`` does nothing with a Typer that converts values some other way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_PLAIN = (str, int, float, bool)


def install() -> bool:
    """Route plain options through ``_PlainParam``; True if this Typer allows it."""
    try:
        from typer import core
        from typer._coercion import RuntimeParam
    except ImportError:
        return False
    found = getattr(core, "build_runtime_param", None)
    if found is None:
        return False
    if getattr(found, "plain_params", False):
        return True
    build: Callable[[Any], Any] = found

    @dataclass(frozen=True)
    class _PlainParam(RuntimeParam):
        descriptor: Any = None
        _full: list[Any] = field(default_factory=list, compare=False, repr=False)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if type(value) is self.annotation:
                return value
            if not self._full:
                self._full.append(build(self.descriptor))
            return self._full[0]._coerce_value(value, param=param, ctx=ctx)

    def build_runtime_param(descriptor: Any) -> Any:
        info = descriptor.parameter_info
        if (
            descriptor.annotation in _PLAIN
            and descriptor.file_annotation is None
            and getattr(info, "parser", None) is None
            and getattr(info, "min", None) is None
            and getattr(info, "max", None) is None
            and not descriptor.is_choice
        ):
            return _PlainParam(parameter_info=info, annotation=descriptor.annotation, descriptor=descriptor)
        return build(descriptor)

    build_runtime_param.plain_params = True  # type: ignore[attr-defined]
    core.build_runtime_param = build_runtime_param
    return True
