"""`clearlift init` creates the warehouse's read policy from CLEARLIFT_WAREHOUSE_READ_POLICY for
Supabase's roles, in one transaction (a condition PostgreSQL refuses creates nothing), the
command in-process against a real PostgreSQL."""

from __future__ import annotations

from tests.helpers import cli_env, invoke, pg_policies, pg_row_security, supabase_roles, warehouse_query

ALL_TABLES = [
    *(f"{p}_ads_{kind}" for p in ("google", "facebook", "tiktok") for kind in ("campaigns", "daily_metrics")),
    "stripe_charges",
    "stripe_daily_revenue",
]


def test_init_creates_the_read_policy_from_the_setting_for_supabase_roles(tmp_path, pg_schema_url):

    env = cli_env(
        tmp_path,
        CLEARLIFT_WAREHOUSE_URL=pg_schema_url,
        CLEARLIFT_WAREHOUSE_READ_POLICY="organization_id = 'nobody' AND (",
    )
    with supabase_roles():
        try:
            proc = invoke(["init"], env)  # the condition goes to PostgreSQL as written
            assert proc.returncode == 5 and "syntax error" in proc.stderr, proc.stderr
            assert not pg_row_security(pg_schema_url)  # nothing was created: one transaction
            env["CLEARLIFT_WAREHOUSE_READ_POLICY"] = "organization_id = current_setting('request.org', true)"
            proc = invoke(["init"], env)
            assert proc.returncode == 0, proc.stderr
            policies = pg_policies(pg_schema_url)
            assert {t for t, *_ in policies} == set(ALL_TABLES)
            assert {(p, r) for _, p, r, _ in policies} == {("clearlift_read", ("anon", "authenticated"))}
        finally:  # the policies name the roles: they go before the roles do
            for table in pg_row_security(pg_schema_url):
                warehouse_query(pg_schema_url, f'DROP TABLE "{table}" CASCADE')
