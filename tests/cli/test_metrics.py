"""`clearlift metrics`: the Prometheus text exposition format, read back by a small parser
written here from the format's description (not by our own code), after real runs of
schedule / consume / refresh-tokens against the sandbox platforms."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from datetime import UTC, datetime, timedelta

import pytest

from clearlift_cli import commands
from clearlift_cli.settings import resolve
from clearlift_cli.timeutil import FrozenClock
from tests.harness import Env
from tests.helpers import REPO

UTC = UTC

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)(?: (-?\d+))?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_exposition(text: str) -> dict[str, dict]:
    """Families by name: {"type", "help", "samples": [(name, labels, value)]}. Asserts the
    rules of the text format (0.0.4) as it goes: HELP/TYPE before a family's samples, one
    TYPE per family, samples of a family together, well-formed labels and values."""
    assert text.endswith("\n"), "the last line must end with a newline"
    families: dict[str, dict] = {}
    current = None
    closed: set[str] = set()
    for line in text.splitlines():
        assert line.strip(), "no blank lines expected"
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert name not in families, f"{name} described twice"
            if current:
                closed.add(current)
            families[name] = {"help": help_text, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE ") :].split(" ")
            assert name == current and families[name]["type"] is None and not families[name]["samples"]
            assert kind in ("counter", "gauge", "summary", "histogram", "untyped")
            families[name]["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, label_text, value_text = m.group(1), m.group(2) or "", m.group(3)
            base = re.sub(r"_(sum|count|bucket)$", "", name) if name not in families else name
            assert base == current and base not in closed, f"{name} is not with its family"
            labels = {}
            pos = 0
            while pos < len(label_text):
                lm = _LABEL.match(label_text, pos)
                assert lm, f"bad labels in {line!r}"
                labels[lm.group(1)] = (
                    lm.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                )
                pos = lm.end()
            value = float(value_text)  # accepts NaN, +Inf, -Inf
            families[current]["samples"].append((name, labels, value))
    return families


def value(families: dict, name: str, **labels: str) -> float:
    family = families[re.sub(r"_(sum|count)$", "", name) if name not in families else name]
    found = [
        v for n, lab, v in family["samples"] if n == name and all(lab.get(k) == w for k, w in labels.items())
    ]
    assert len(found) >= 1, (name, labels)
    return sum(found)


def test_the_parser_refuses_what_the_format_forbids():
    with pytest.raises(AssertionError):
        parse_exposition("clearlift_x 1")  # no final newline
    with pytest.raises(AssertionError):
        parse_exposition("# HELP a x\n# TYPE a gauge\na 1\n# HELP b y\n# TYPE b gauge\nb 1\na 2\n")
    with pytest.raises(AssertionError):
        parse_exposition('# HELP a x\n# TYPE a gauge\na{l="x} 1\n')
    ok = parse_exposition(
        '# HELP a x\n# TYPE a summary\na{q="1",quantile="0.5"} NaN\na_sum{q="1"} 2\na_count{q="1"} 1\n'
    )
    assert math.isnan(ok["a"]["samples"][0][2]) and ok["a"]["samples"][1] == ("a_sum", {"q": "1"}, 2.0)


# `env` (conftest) with the embedded SQLite warehouse.
pytestmark = pytest.mark.sqlite_warehouse


def scenario(env: Env) -> dict[str, str]:
    """Three Google connections (one revoked) and a Stripe one, one round of cron commands."""
    ids = {}
    for name, acct, revoked in (
        ("ok1", "1111111111", False),
        ("ok2", "2222222222", False),
        ("bad", "3333333333", True),
    ):
        access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
        if revoked:
            env.sandbox.google.tokens.revoke(access)
            env.sandbox.google.tokens.revoke(refresh)
        ids[name] = env.add("org-1", "google", acct, access, refresh)
    ids["stripe"] = env.add("org-2", "stripe", "acct_1Metrics", env.sandbox.stripe.issue_key("acct_1Metrics"))
    env.run("refresh-tokens")
    env.run("schedule")
    env.run("consume")
    return ids


def test_metrics_follow_the_format_and_the_naming_rules(env):
    scenario(env)
    families = parse_exposition(env.run("metrics").stdout)
    for name, fam in families.items():
        assert re.fullmatch(r"clearlift_[a-z][a-z0-9_]*", name), name
        assert fam["help"] and fam["type"], name
        assert (fam["type"] == "counter") == name.endswith("_total"), name
        assert not re.search(r"_(ms|milliseconds|minutes|hours|days)(_|$)", name), name  # base units only
        if re.search(r"_(seconds|age|timestamp)(_|$)", name):
            assert name.endswith(("_seconds", "_seconds_total")), name
    for required in (
        "clearlift_queue_messages",
        "clearlift_queue_dead_letters",
        "clearlift_queue_oldest_ready_age_seconds",
        "clearlift_jobs_total",
        "clearlift_jobs_last_hour",
        "clearlift_records_synced_total",
        "clearlift_job_duration_seconds",
        "clearlift_connections",
        "clearlift_connections_needing_reauth",
        "clearlift_last_success_age_seconds",
        "clearlift_platform_rate_limit_paused",
        "clearlift_queue_expired_leases",
    ):
        assert required in families, required


def test_metrics_count_what_the_runs_did(env):
    ids = scenario(env)
    families = parse_exposition(env.run("metrics").stdout)
    records = {r["connection_id"]: r for r in json.loads(env.run("status", "--json", check=False).stdout)}
    google_records = sum(records[ids[k]]["latest_sync"]["records_synced"] for k in ("ok1", "ok2"))
    stripe_records = records[ids["stripe"]]["latest_sync"]["records_synced"]
    assert google_records > 0 and stripe_records > 0

    assert value(families, "clearlift_jobs_total", platform="google", outcome="completed") == 2
    assert value(families, "clearlift_jobs_total", platform="google", outcome="failed") == 1
    assert value(families, "clearlift_jobs_total", platform="stripe", outcome="completed") == 1
    assert value(families, "clearlift_jobs_last_hour", platform="google", outcome="completed") == 2
    assert value(families, "clearlift_jobs_last_hour", platform="tiktok", outcome="deferred") == 0
    # every way a delivery can end is a label, released (cut short by a stop) included
    assert value(families, "clearlift_jobs_total", platform="google", outcome="released") == 0
    assert value(families, "clearlift_records_synced_total", platform="google") == google_records
    assert value(families, "clearlift_records_synced_last_hour", platform="stripe") == stripe_records
    assert value(families, "clearlift_job_duration_seconds_count", platform="google") == 2
    assert value(families, "clearlift_job_duration_seconds_sum", platform="google") > 0
    q50 = value(families, "clearlift_job_duration_seconds", platform="google", quantile="0.5")
    assert 0 < q50 <= 1800
    assert value(families, "clearlift_connections", platform="google", sync_status="completed") == 2
    assert value(families, "clearlift_connections", platform="google", sync_status="failed") == 1
    assert value(families, "clearlift_connections_needing_reauth", platform="google") == 1
    assert value(families, "clearlift_queue_dead_letters") == 1
    assert value(families, "clearlift_queue_messages", state="ready", priority="high") == 0
    for command in ("schedule", "consume", "refresh-tokens"):
        assert 0 <= value(families, "clearlift_last_success_age_seconds", command=command) < 120
        assert value(families, "clearlift_last_run_success", command=command) == 1
    assert value(families, "clearlift_platform_rate_limit_paused", platform="google") == 0
    sunset = value(
        families, "clearlift_api_version_sunset_timestamp_seconds", platform="google", version="v26"
    )
    assert datetime.fromtimestamp(sunset, UTC).date().isoformat() == "2027-11-01"

    # A second round adds to the counters; a pause in force shows.
    env.run("sync", ids["ok1"], "--now")
    env.run("consume")
    with env.store() as c:
        c.execute(
            "INSERT INTO clearlift_platform_pauses (platform, until, reason) VALUES ('facebook', ?, 'x')",
            (datetime.now(UTC).timestamp() + 300,),
        )
    again = parse_exposition(env.run("metrics").stdout)
    assert value(again, "clearlift_jobs_total", platform="google", outcome="completed") == 3
    assert value(again, "clearlift_job_duration_seconds_count", platform="google") == 3
    assert value(again, "clearlift_platform_rate_limit_paused", platform="facebook") == 1
    assert (
        200
        < value(again, "clearlift_platform_rate_limit_pause_remaining_seconds", platform="facebook")
        <= 300
    )


def test_the_last_hour_moves_on_and_the_counters_stay(env):
    scenario(env)
    s = resolve({}, environ=env.environ(), read_config=False)
    later = FrozenClock(datetime.now(UTC) + timedelta(hours=2))
    families = parse_exposition(commands.metrics(s, clock=later))
    assert value(families, "clearlift_jobs_last_hour", platform="google", outcome="completed") == 0
    assert math.isnan(value(families, "clearlift_job_duration_seconds", platform="google", quantile="0.9"))
    assert value(families, "clearlift_jobs_total", platform="google", outcome="completed") == 2
    assert 7190 < value(families, "clearlift_last_success_age_seconds", command="consume") < 7400


def test_output_is_written_atomically_for_the_textfile_collector(env, tmp_path):
    scenario(env)
    out_dir = tmp_path / "textfile"
    out_dir.mkdir()
    target = out_dir / "clearlift.prom"
    target.write_text("old\n")
    before = target.stat().st_ino
    proc = env.run("metrics", "--output", str(target))
    assert proc.stdout == ""
    assert os.listdir(out_dir) == ["clearlift.prom"]  # no temporary file left behind
    assert target.stat().st_ino != before  # replaced by rename, never rewritten in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    families = parse_exposition(target.read_text())
    assert value(families, "clearlift_jobs_total", platform="google", outcome="completed") == 2
    bad = env.run("metrics", "--output", str(tmp_path / "no-such-dir" / "x.prom"), check=False)
    assert bad.returncode == 3 and bad.stderr.startswith("error: cannot write the metrics file")


def test_metrics_on_a_postgresql_control_plane(pg_control_env, sandbox):
    env = pg_control_env
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    env.add("org-1", "google", "1111111111", access, refresh)
    env.run("schedule")
    env.run("consume")
    env.run("consume")  # a second run adds to the same totals row
    families = parse_exposition(env.run("metrics").stdout)
    assert value(families, "clearlift_jobs_total", platform="google", outcome="completed") == 1
    assert value(families, "clearlift_jobs_last_hour", platform="google", outcome="completed") == 1
    assert value(families, "clearlift_last_run_success", command="consume") == 1
    json.dumps(families)  # plain data all the way down


def test_the_sample_alert_rules_use_only_metrics_that_exist(env):

    rules = (REPO / "contrib" / "prometheus" / "clearlift.rules.yml").read_text()
    families = parse_exposition(env.run("metrics").stdout)
    used = set(re.findall(r"\bclearlift_[a-z_]+", rules))
    assert used, "no clearlift metric in the rules"
    for name in used:
        assert name in families, f"{name} is used by an alert rule but not exported"
    alerts = re.findall(r"^      - alert: (\w+)$", rules, re.M)
    assert len(alerts) == len(set(alerts)) >= 8
    for block in re.split(r"^      - alert: ", rules, flags=re.M)[1:]:
        assert re.search(r"^        expr: ", block, re.M) and "severity:" in block and "summary:" in block, (
            block
        )
    assert "\t" not in rules
