"""Documentation stays true: every command has help with an example, the generated
reference is current, and CI runs exactly the README's test command."""

from __future__ import annotations

import re

from clearlift_cli import docs
from tests.helpers import REPO

ROOT = REPO


def test_every_command_has_help_with_an_example():
    missing = []
    for path, cmd in docs.commands():
        if not (cmd.help or "").strip():
            missing.append(" ".join(path) or "clearlift")
        elif not hasattr(cmd, "commands") and "Example" not in cmd.help:
            missing.append(" ".join(path) + " (no example)")
    assert missing == []


def test_reference_lists_every_command_and_is_current():
    text = (ROOT / "docs" / "commands.md").read_text()
    for path, _ in docs.commands():
        assert f"## `{' '.join(['clearlift', *path])}`" in text
    assert text == docs.reference(), (
        "docs/commands.md is stale: python -m clearlift_cli.docs > docs/commands.md"
    )


def test_contract_commands_exist():
    names = {" ".join(p) for p, _ in docs.commands()}
    for name in (
        "init",
        "schedule",
        "consume",
        "refresh-tokens",
        "status",
        "sync",
        "connections add",
        "connections list",
        "connections pause",
        "connections resume",
        "queue",
        "queue dead",
        "queue retry",
        "demo",
    ):
        assert name in names


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:30])
    blocks = re.findall(r"```sh\n(.+?)\n```", first_screen, re.S)
    assert len(blocks) >= 2
    demo, test = blocks[0], blocks[1]
    assert "clearlift demo" in demo and "venv" in demo
    assert "pytest" in test and "venv" in test
    # lint, format and types are checked before the tests run
    for check in ("ruff check .", "ruff format --check .", "mypy"):
        assert test.index(check) < test.index("pytest"), check
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()


def test_every_documented_env_var_is_a_setting():
    from clearlift_cli.settings import ENV_NAMES

    readme = (ROOT / "README.md").read_text()
    for env in ENV_NAMES.values():
        assert f"`{env}`" in readme, f"{env} is not documented in the README's configuration table"


def test_readme_lists_the_versions_clearlift_knows():
    from datetime import date

    from clearlift_cli.platforms import versions

    section = (
        (ROOT / "README.md")
        .read_text()
        .split("### Supported API versions and Google manager accounts")[1]
        .split("\n### ")[0]
    )
    rows = {
        "google": "| Google Ads |",
        "facebook": "| Meta Marketing API |",
        "tiktok": "| TikTok Business API |",
    }
    for platform, table in versions.SUNSETS.items():
        row = next(line for line in section.splitlines() if line.startswith(rows[platform]))
        assert f"**{versions.DEFAULT_VERSIONS[platform]}**" in row
        for version, sunset in table.items():
            if sunset is None or sunset > date(2026, 11, 29):  # alive when the table was written
                assert version in row, (platform, version)
                if sunset is not None:
                    assert (sunset.isoformat() if platform == "facebook" else f"{sunset:-%m}") in row
