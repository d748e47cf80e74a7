"""SQL is built only from parameters and fixed identifiers: a scan of clearlift_cli's source for
values spliced into SQL text (f-strings, ``+``, ``%``, ``.format``), with an allowlist of the fixed
identifiers each module may interpolate. Reads the package's source; runs nothing."""

from __future__ import annotations

import ast
import re

from tests.helpers import REPO

PACKAGE = REPO / "clearlift_cli"


SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|PRAGMA|WHERE|VALUES|TRUNCATE|COPY)\b"
)


# Expressions interpolated into SQL text that are fixed identifiers or placeholders, each
# checked by reading the code: constants, names from the schema modules, quoted identifiers.
ALLOWED = {
    # skip: " AND platform NOT IN (?, ?)"; skip_locked / for_update: class constants;
    # marks: rows of "?" placeholders
    "store/queue.py": {"skip", "self.store.skip_locked", "self.store.for_update", "marks"},
    # CONNECTION_COLUMNS / STATUS_COLUMNS (prefixed: cols); LIVE: the fixed live statuses;
    # where: _connection_filter's fixed terms; flag: a fixed CASE condition; metadata_sql: "?"
    # or a fixed json_set expression; marks: "?" placeholders
    "store/operations.py": {
        "CONNECTION_COLUMNS",
        "JobStatus.RUNNING.value",
        "LIVE",
        "cols",
        "flag",
        "metadata_sql",
        "where",
    },
    "store/scheduling.py": {"LIVE", "cols", "live", "marks"},  # live: a fixed NOT EXISTS clause
    # schema.py: table and column names and declarations of the schema itself
    "store/schema.py": {"_NOW_TEXT", "body", "declaration", "self.name", "table"},
    "store/sqlite.py": {"BUSY_TIMEOUT_MS", "table"},  # table: a name from schema.py
    "store/d1.py": {"table"},  # a name from schema.APP_TABLE_NAMES
    # schema: [A-Za-z0-9_]+; cols / names / where: column names both stores' schemas share
    "store/postgres.py": {"cols", "names", "where", "table", "marks", "self.schema"},
    "warehouse/sqlite.py": {
        "updates",
        "where",
        "meta",
        "rev",
        "ch",
        "columns",
        "_TYPES[c.kind]",
        "int(self._busy_timeout * 1000)",
        # quoted column lists, and the ON CONFLICT clause built from them
        "old",
        "new",
        "_on_conflict(tbl)",
        "_on_conflict(STRIPE_DAILY_REVENUE)",
    },
}


QUOTING = {"_q", "_cols"}  # the SQLite warehouse's identifier quoting, over schema names


def _dynamic(node: ast.AST) -> list[str]:
    """The parts of a string expression that are not literal text or '?' placeholders."""
    if isinstance(node, ast.Constant):
        return []
    if isinstance(node, ast.JoinedStr):
        return [part for v in node.values if isinstance(v, ast.FormattedValue) for part in _dynamic(v.value)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _dynamic(node.left) + _dynamic(node.right)
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Mult)
        and isinstance(node.left, ast.Constant)
        and node.left.value == "?"
    ):
        return []  # '?' * n: placeholders
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "join"
        and isinstance(node.func.value, ast.Constant)
        and len(node.args) == 1
    ):
        arg = node.args[0]
        return _dynamic(arg.elt if isinstance(arg, (ast.GeneratorExp, ast.ListComp)) else arg)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in QUOTING:
        return []
    return [ast.unparse(node)]


def _has_sql(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Constant) and isinstance(n.value, str) and SQL_WORDS.search(n.value)
        for n in ast.walk(node)
    )


def sql_built_from_values(source: str, allowed: set[str]) -> list[tuple[int, str]]:
    """(line, expression) for each value spliced into SQL text by an f-string, ``+``, ``%``
    or ``.format`` that is not in ``allowed``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        parts: list[str] = []
        if isinstance(node, ast.JoinedStr) and _has_sql(node):
            parts = _dynamic(node)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and _has_sql(node):
            parts = _dynamic(node)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and _has_sql(node.left):
            parts = [ast.unparse(node.right)]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
            and isinstance(node.func.value, ast.Constant)
            and _has_sql(node.func.value)
        ):
            parts = [ast.unparse(a) for a in [*node.args, *(k.value for k in node.keywords)]]
        found += [(node.lineno, p) for p in parts if p not in allowed]
    return sorted(set(found))


def test_the_sql_scan_finds_values_spliced_into_sql():
    bad = """
def f(c, user_id, name, days):
    c.execute(f"SELECT * FROM sync_jobs WHERE id = '{user_id}'")
    c.execute("DELETE FROM sync_queue WHERE job_id = " + name)
    c.execute("UPDATE sync_jobs SET status = '%s'" % name)
    c.execute("SELECT * FROM t WHERE d > {}".format(days))
    c.execute("SELECT * FROM sync_jobs WHERE id = ?", (user_id,))
    c.execute(f"SELECT x FROM t WHERE id IN ({','.join('?' * len(name))})", name)
    log.info(f"job {user_id} done")
"""
    assert sql_built_from_values(bad, set()) == [(3, "user_id"), (4, "name"), (5, "name"), (6, "days")]


def test_sql_is_built_only_from_parameters_and_fixed_identifiers():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    # The platform sandboxes talk HTTP and run no SQL (their GAQL errors mention FROM and
    # WHERE); the D1 sandbox is a database, so it is scanned like the rest.
    sandboxes = [f for f in files if f.parent.name == "sandbox" and f.name != "d1.py"]
    for f in sandboxes:
        assert not re.search(r"^\s*(import|from)\s+(sqlite3|psycopg)", f.read_text(), re.M), f
    found = {}
    for f in files:
        if f in sandboxes:
            continue
        rel = f.relative_to(PACKAGE).as_posix()
        spliced = sql_built_from_values(f.read_text(), ALLOWED.get(rel, set()))
        if spliced:
            found[rel] = spliced
    assert found == {}
    # The allowlist names only what is really there (it shrinks when the code does).
    for rel, names in ALLOWED.items():
        used = {p for _, p in sql_built_from_values((PACKAGE / rel).read_text(), set())}
        assert names <= used, (rel, names - used)
