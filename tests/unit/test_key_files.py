"""Secrets read from files: a file holding binary data is a clear error, never a traceback."""

from __future__ import annotations

import pytest

from clearlift_cli.errors import ConfigError
from clearlift_cli.settings import resolve


@pytest.mark.parametrize(
    "variable, method, says",
    [
        ("ENCRYPTION_KEY_FILE", "key_bytes", "holds binary data, not the key's base64 text"),
        ("CLOUDFLARE_API_TOKEN_FILE", "cloudflare_token", "holds binary data, not an API token"),
    ],
)
def test_a_binary_secret_file_is_a_configuration_error(tmp_path, variable, method, says) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfe\x00raw bytes\x80")
    path.chmod(0o600)
    settings = resolve({"home": str(tmp_path)}, environ={variable: str(path)}, read_config=False)
    with pytest.raises(ConfigError) as info:
        getattr(settings, method)()
    assert f"{variable} {path} {says}" in str(info.value)
