"""The platform registry is the one place that knows which platforms exist, and each entry
holds together: client, token renewal, settings, warehouse tables, API versions, sandbox."""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import fields
from pathlib import Path

import pytest

from clearlift_cli.errors import UnknownPlatform, UsageError
from clearlift_cli.platforms import registry, versions
from clearlift_cli.platforms.base import AdsClient, RevenueClient
from clearlift_cli.sandbox import Sandbox, app_credentials
from clearlift_cli.sandbox.server import PlatformApp
from clearlift_cli.settings import _SECRET_FIELDS, ENV_NAMES, Settings, resolve
from clearlift_cli.warehouse import schema

PACKAGE = Path(registry.__file__).resolve().parent.parent
REGISTRY = Path(registry.__file__).resolve()
NAMES = set(registry.names())
ENTRIES = registry.platforms()


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _lists_of_names(source: str) -> list[str]:
    """Where ``source`` keeps its own list of platform names or tests one by a literal: a
    tuple, list, set or dict keys holding two names or more, a comparison with a name
    (``platform == "stripe"``, ``in``), or a string (not a docstring) naming two or more."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        items = None
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        if items is not None:
            hits = [e.value for e in items if isinstance(e, ast.Constant) and e.value in NAMES]
            if len(hits) >= 2:
                found.append(f"line {node.lineno}: a literal holding {hits}")
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                for value in values:
                    if isinstance(value, ast.Constant) and value.value in NAMES:
                        found.append(f"line {node.lineno}: compares with {value.value!r}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            named = NAMES & set(re.findall(r"[a-z]+", node.value))
            if len(named) >= 2:
                found.append(f"line {node.lineno}: a string naming {sorted(named)}")
    return found


def test_no_module_but_the_registry_lists_the_platforms():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() == REGISTRY:
            continue
        found = _lists_of_names(path.read_text())
        if found:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert offenders == {}, "ask clearlift_cli.platforms.registry instead"


@pytest.mark.parametrize(
    "source",
    [
        'PLATFORMS = ("google", "facebook")',
        'if platform == "stripe": pass',
        'ok = p in {"tiktok"}',
        'VERSIONS = {"google": "v1", "tiktok": "v2"}',
        'HELP = "google, facebook or stripe"',
    ],
)
def test_the_scan_sees_a_list_or_a_literal_check(source):
    assert _lists_of_names(source) != []


def test_the_scan_lets_one_module_name_its_own_platform():
    assert _lists_of_names('PLATFORM = "google"\nr = rng("google", "account")') == []


# --- the entries ------------------------------------------------------------------------


def test_names_are_unique_and_kinds_known():
    assert len(NAMES) == len(ENTRIES) >= 4
    assert {p.kind for p in ENTRIES} <= set(registry.KINDS)
    assert registry.names() == tuple(p.name for p in ENTRIES)
    assert {p.name for p in registry.of_kind(registry.ADS)} | {
        p.name for p in registry.of_kind(registry.REVENUE)
    } == NAMES


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda p: p.name)
def test_client_matches_its_entry(entry):
    client = entry.client
    assert client.platform == entry.name
    assert issubclass(client, AdsClient if entry.kind == registry.ADS else RevenueClient)
    assert client.kind == entry.kind


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda p: p.name)
def test_token_renewal_is_a_refresh_function_or_none(entry):
    renew = entry.refresh_token
    if renew is None:
        assert entry.refresh_requires == () and entry.renewal_margin_seconds == 0
        return
    assert list(inspect.signature(renew).parameters) == ["ctx", "credentials"]
    assert entry.renewal_margin_seconds >= 0


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda p: p.name)
def test_settings_are_typed_settings_fields_with_their_env_names(entry):
    declared = {f.name for f in fields(Settings)}
    for setting in entry.settings:
        assert setting.field in declared, f"add `{setting.field}` to Settings"
        assert ENV_NAMES[setting.field] == setting.env
        assert (setting.field in _SECRET_FIELDS) == setting.secret
    app_fields = {s.field for s in entry.app}
    assert set(entry.requires) <= app_fields and set(entry.refresh_requires) <= app_fields
    defaults = resolve(flags={"home": "/nonexistent"}, environ={}, read_config=False)
    for url in entry.urls:
        assert url.default and getattr(defaults, url.field) == url.default.rstrip("/")


def test_every_platform_setting_is_declared_by_its_platform():
    """A Settings field named after a platform belongs to that platform's entry."""
    owned = {s.field: p.name for p in ENTRIES for s in p.settings}
    for f in fields(Settings):
        prefix = f.name.split("_")[0]
        if prefix in NAMES:
            assert owned.get(f.name) == prefix, f"{f.name} is not declared by {prefix}'s registry entry"


@pytest.mark.parametrize("entry", [p for p in ENTRIES if p.api], ids=lambda p: p.name)
def test_api_versions_default_to_a_known_version(entry):
    api = entry.api
    assert api.default in api.sunsets
    settings = resolve(flags={"home": "/nonexistent"}, environ={}, read_config=False)
    assert versions.configured_versions(settings)[entry.name] == api.default
    assert versions.label(entry.name) == api.label
    if api.setting:
        assert versions.VERSION_SETTINGS[entry.name] == api.setting.env


def test_tables_are_the_warehouse_tables():
    owned = [t for p in ENTRIES for t in p.tables]
    assert len(owned) == len(set(owned)) and set(owned) == set(schema.TABLES)
    for p in registry.of_kind(registry.ADS):
        assert (schema.campaigns_table(p.name).name, schema.daily_metrics_table(p.name).name) == p.tables
    (revenue,) = registry.of_kind(registry.REVENUE)
    assert (schema.STRIPE_CHARGES.name, schema.STRIPE_DAILY_REVENUE.name) == revenue.tables
    with pytest.raises(ValueError, match="unknown ad platform 'stripe'"):
        schema.campaigns_table("stripe")


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda p: p.name)
def test_sandbox_app_serves_the_platform(entry):
    app = entry.sandbox_app
    assert issubclass(app, PlatformApp) and app.platform == entry.name
    assert set(app.APP_CREDENTIALS) <= {s.env for s in entry.app}


def test_sandbox_env_points_every_url_at_its_server_and_gives_the_app_credentials():
    with Sandbox() as sb:
        env = sb.env()
        for p in ENTRIES:
            assert getattr(sb, p.name) is sb.app(p.name) and isinstance(sb.app(p.name), p.sandbox_app)
            for url in p.urls:
                assert env[url.env] == sb.servers[p.name].base_url
        assert {k: env[k] for k in app_credentials()} == app_credentials()
        settings = resolve(flags={"home": "/nonexistent"}, environ=env, read_config=False)
        for p in ENTRIES:  # the sandbox satisfies what every job and renewal needs
            assert all(getattr(settings, f) for f in p.requires + p.refresh_requires), p.name


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda p: p.name)
def test_sandbox_authorize_gives_what_the_platform_stores(entry):
    app = entry.sandbox_app()
    access, refresh = app.authorize("acct-1", ttl=None)
    assert app.tokens.check(access) == "ok"
    if entry.refresh_token is None:
        assert refresh is None  # tokens that never expire come without one
    else:
        assert refresh is not None


# --- look-ups --------------------------------------------------------------------------


def test_get_find_and_is_known():
    assert registry.get("google").name == "google" and registry.find("google") is registry.get("google")
    assert registry.find("myspace") is None
    assert registry.is_known("stripe") and not registry.is_known("myspace") and not registry.is_known(None)
    with pytest.raises(UnknownPlatform) as info:
        registry.get("myspace")
    assert isinstance(info.value, UsageError)
    assert str(info.value) == registry.unknown_message("myspace")
    assert str(info.value) == f"unknown platform 'myspace' (known: {', '.join(registry.names())})"


def test_spoken_list():
    assert registry.spoken_list() == ", ".join(registry.names()[:-1]) + " or " + registry.names()[-1]
    assert registry.spoken_list("and").endswith(f" and {registry.names()[-1]}")
