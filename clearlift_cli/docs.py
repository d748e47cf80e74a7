"""Generate the command reference (docs/commands.md) from the commands' own --help.

python -m clearlift_cli.docs > docs/commands.md
"""

from __future__ import annotations

import typer.main
from typer.core import TyperGroup

from clearlift_cli.cli import app


def walk(cmd, path: list[str]):
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name in sorted(cmd.commands):
            yield from walk(cmd.commands[name], path + [name])


def command_help(path: list[str]) -> str:
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="clearlift", terminal_width=100, max_content_width=100)
    cmd = root
    for name in path:
        assert isinstance(cmd, TyperGroup), f"{name}: {cmd.name} has no subcommands"
        sub = cmd.commands[name]
        ctx = sub.context_class(sub, info_name=name, parent=ctx, terminal_width=100, max_content_width=100)
        cmd = sub
    return cmd.get_help(ctx)


def commands() -> list:
    return list(walk(typer.main.get_command(app), []))


def reference() -> str:
    out = [
        "# clearlift command reference",
        "",
        "Generated from `--help` by `python -m clearlift_cli.docs > docs/commands.md`; "
        "a test fails when it is out of date.",
        "",
    ]
    for path, _cmd in commands():
        title = " ".join(["clearlift", *path])
        out += [f"## `{title}`", "", "```text", command_help(path).rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    sys.stdout.write(reference())
