"""Pure pieces of doctor and metrics: exposition text, quantiles from buckets, per-run job
summaries, where each setting came from, URLs shown without passwords."""

from __future__ import annotations

import math
from dataclasses import dataclass

from clearlift_cli.metrics import Family, quantile_from_buckets, render
from clearlift_cli.redact import mask_url
from clearlift_cli.runs import DURATION_BUCKETS, outcomes_by_platform
from clearlift_cli.settings import resolve, sources


def test_exposition_text_escapes_labels_and_help_and_spells_special_values():
    f = Family("clearlift_x", "gauge", "a \\ help\nline")
    f.add(1, platform='go"og\\le\n')
    f.add(math.nan, quantile="0.5")
    f.add(math.inf)
    f.add(2.5)
    f.add(3.0)
    assert render([f]) == (
        "# HELP clearlift_x a \\\\ help line\n"
        "# TYPE clearlift_x gauge\n"
        'clearlift_x{platform="go\\"og\\\\le\\n"} 1\n'
        'clearlift_x{quantile="0.5"} NaN\n'
        "clearlift_x +Inf\n"
        "clearlift_x 2.5\n"
        "clearlift_x 3\n"
    )


def test_quantiles_interpolate_inside_their_bucket_like_histogram_quantile():
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    assert math.isnan(quantile_from_buckets(0.5, counts))
    i = DURATION_BUCKETS.index(10)  # the (5, 10] bucket
    counts[i] = 4
    assert quantile_from_buckets(0.5, counts) == 7.5
    assert quantile_from_buckets(1.0, counts) == 10
    counts[-1] = 4  # slower than the last bound: reported as the last bound
    assert quantile_from_buckets(0.99, counts) == DURATION_BUCKETS[-1]
    assert quantile_from_buckets(0.25, counts) == 7.5


@dataclass
class Outcome:
    platform: str
    status: str
    records: int
    seconds: float


def test_a_runs_jobs_are_summed_per_platform_with_durations_of_completed_ones():
    summary = outcomes_by_platform(
        [
            Outcome("google", "completed", 10, 0.5),
            Outcome("google", "completed", 5, 12.0),
            Outcome("google", "failed", 0, 100.0),
            Outcome("stripe", "deferred", 0, 0.1),
        ]
    )
    g = summary["google"]
    assert g["outcomes"] == {"completed": 2, "failed": 1} and g["records"] == 15 and g["seconds"] == 112.5
    assert sum(g["durations"]) == 2  # the failed job's time is not a sync duration
    assert (
        g["durations"][DURATION_BUCKETS.index(0.5)] == 1 and g["durations"][DURATION_BUCKETS.index(30)] == 1
    )
    assert summary["stripe"]["outcomes"] == {"deferred": 1} and sum(summary["stripe"]["durations"]) == 0


def test_every_setting_says_where_it_came_from(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('tiktok_app_id = "tt-app"\nclearlift_http_timeout = 9\n')
    s = resolve(
        {"db": str(tmp_path / "flag.db"), "home": str(tmp_path)},
        environ={
            "CLEARLIFT_CONFIG": str(config),
            "GOOGLE_CLIENT_SECRET": "g-secret",
            "CLEARLIFT_HOME": str(tmp_path),
            "CLEARLIFT_WAREHOUSE_URL": "postgresql://u:pw@h/db",
        },
        read_config=True,
    )
    got = {name: (value, where) for name, value, where in sources(s)}
    assert got["CLEARLIFT_DB"] == (str(tmp_path / "flag.db"), "flag")
    assert got["CLEARLIFT_HOME"] == (str(tmp_path), "env")  # a flag equal to its env var: the env var
    assert got["CLEARLIFT_CONFIG"] == (str(config), "env")
    assert got["TIKTOK_APP_ID"] == ("tt-app", "config file")
    assert got["CLEARLIFT_HTTP_TIMEOUT"] == ("9.0", "config file")
    assert got["GOOGLE_CLIENT_SECRET"] == ("set", "env")
    assert got["FACEBOOK_APP_SECRET"] == ("not set", "-")
    assert got["CLEARLIFT_WAREHOUSE_URL"] == ("postgresql://u:***@h/db", "env")
    assert got["CLEARLIFT_GOOGLE_ADS_URL"] == ("https://googleads.googleapis.com", "default")
    assert "g-secret" not in repr(sources(s))
    bare = resolve({}, environ={"HOME": str(tmp_path)}, read_config=False)
    assert {n: w for n, _, w in sources(bare)}["CLEARLIFT_HOME"] == "default"
    assert {n: w for n, _, w in sources(bare)}["CLEARLIFT_DB"] == "default"


def test_a_url_without_a_password_is_shown_as_written():
    assert (
        mask_url("sqlite:////var/lib/clearlift/warehouse.db") == "sqlite:////var/lib/clearlift/warehouse.db"
    )
    assert mask_url("postgresql://u:pw@db:5432/x") == "postgresql://u:***@db:5432/x"
