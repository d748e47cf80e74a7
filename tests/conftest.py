"""Shared fixtures: real PostgreSQL (a schema per test), real SQLite files, sandboxes, and
clearlift hosts (``Env``) pointed at them. See tests/README.md."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from tests.helpers import PG_URL


def _pg_connect(url: str):
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # fail, never skip: CI must have Postgres
        pytest.fail(f"PostgreSQL is required for this test and is unreachable at {url}: {exc}")


def with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_schema_url():
    """A PostgreSQL URL whose search_path is a fresh, empty schema (dropped afterwards)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = _pg_connect(PG_URL)
    conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(PG_URL, schema)
    finally:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()


@pytest.fixture
def sandbox():
    """All four platform sandboxes on loopback, stopped afterwards."""
    from clearlift_cli.sandbox import Sandbox

    with Sandbox() as sb:
        yield sb


@pytest.fixture
def env(request, tmp_path, sandbox):
    """An ``Env`` (tests/harness.py), initialised: a fresh store and a PostgreSQL warehouse
    schema, pointed at the sandboxes; a module or test marked ``sqlite_warehouse`` gets the
    embedded SQLite warehouse instead. Its commands run in-process, or installed under
    tests/e2e/."""
    from tests.harness import Env

    if request.node.get_closest_marker("sqlite_warehouse"):
        warehouse_url = f"sqlite:///{tmp_path}/warehouse.db"
    else:
        warehouse_url = request.getfixturevalue("pg_schema_url")
    e = Env(home=tmp_path / "home", warehouse_url=warehouse_url, sandbox=sandbox)
    e.run("init")
    return e


@pytest.fixture
def pg_control_env(tmp_path, sandbox, pg_schema_url):
    """An ``Env`` with both the control plane and the warehouse in PostgreSQL
    (one schema: the store's tables and the warehouse's do not collide)."""
    from tests.harness import Env

    e = Env(
        home=tmp_path / "home",
        warehouse_url=pg_schema_url,
        sandbox=sandbox,
        extra={"CLEARLIFT_DB": pg_schema_url},
    )
    e.run("init")
    return e


@pytest.fixture
def recording_env(tmp_path, sandbox):
    """A ``RecordingEnv`` (tests/harness.py) with the embedded SQLite warehouse, initialised;
    at the end of the test no sandbox token or app secret may show in any command's output
    or in the texts the store holds."""
    from tests.harness import RecordingEnv
    from tests.helpers import assert_no_secrets

    e = RecordingEnv(
        home=tmp_path / "home", warehouse_url=f"sqlite:///{tmp_path / 'warehouse.db'}", sandbox=sandbox
    )
    e.run("init")
    yield e
    assert_no_secrets(e.outputs + e.stored_texts())


@pytest.fixture
def live_d1():
    """The sandbox D1 (Cloudflare's REST API over a SQLite file) with ClearLift's tables,
    served on loopback: ``(app, server)``."""
    from clearlift_cli.sandbox.d1 import D1App
    from clearlift_cli.sandbox.server import SandboxServer

    app = D1App()
    app.create_clearlift_tables()
    with SandboxServer(app) as srv:
        yield app, srv
    app.close()


@pytest.fixture
def d1env(tmp_path, sandbox, live_d1):
    """An ``Env`` whose store is that D1 (``CLEARLIFT_DB=d1://…``; clearlift's own tables in
    the local control database), with the embedded SQLite warehouse, initialised."""
    from tests.harness import Env

    app, srv = live_d1
    env = Env(home=tmp_path / "home", warehouse_url=f"sqlite:///{tmp_path}/warehouse.db", sandbox=sandbox)
    env.extra.update({"CLEARLIFT_DB": app.store_url, **app.env(srv)})
    env.run("init")
    return env
