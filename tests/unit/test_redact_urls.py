"""URL masking: a pure function that must never raise and never show a password."""

from __future__ import annotations

import pytest

from clearlift_cli.redact import mask_url, redact, unencoded_userinfo, unquote_error, url_passwords


@pytest.mark.parametrize(
    "url,shown",
    [
        ("postgresql://u:pa ss@127.0.0.1:5432/db", "postgresql://u:***@127.0.0.1:5432/db"),
        ("postgresql://u:Sekr1tPw@[::1/db", "postgresql://u:***@[::1/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://:pw@h/db", "postgresql://:***@h/db"),
        ("postgresql://h/db?password=abc&sslmode=require", "postgresql://h/db?password=***&sslmode=require"),
        ("postgresql://user@h:5432/db", "postgresql://user@h:5432/db"),
        ("sqlite:////var/lib/clearlift/warehouse.db", "sqlite:////var/lib/clearlift/warehouse.db"),
        ("/var/lib/clearlift/clearlift.db", "/var/lib/clearlift/clearlift.db"),
        ("", ""),
    ],
)
def test_mask_url_hides_the_password_of_any_url_however_malformed(url, shown):
    assert mask_url(url) == shown


def test_log_lines_mask_urls_and_quoted_key_value_passwords():
    line = "could not reach postgresql://bob:hunter22@db:5432/x (timeout); mail bob@example.com"
    assert redact(line) == "could not reach postgresql://bob:***@db:5432/x (timeout); mail bob@example.com"
    assert redact("host=db password='pa ss' dbname=x") == "host=db password=*** dbname=x"


def test_parse_errors_lose_every_quoted_fragment():
    message = 'unexpected spaces found in "pa ss", use percent-encoded spaces (%20) instead'
    assert (
        unquote_error(message) == 'unexpected spaces found in "***", use percent-encoded spaces (%20) instead'
    )


def test_url_passwords_and_unencoded_userinfo():
    assert url_passwords("postgresql://u:p%40ss@h/db") == ("p%40ss", "p@ss")
    assert url_passwords("postgresql://u@h/db") == ()
    assert unencoded_userinfo("postgresql://u:p@ss@h/db")
    assert unencoded_userinfo("postgresql://u:p/ss@h/db")
    assert not unencoded_userinfo("postgresql://u:p%40ss@h/db?x=1")
