"""Field encryption compatible with the API worker.

Key: base64 of exactly 32 bytes. Ciphertext: base64(12-byte random IV || AES-256-GCM
ciphertext || 16-byte tag) of the UTF-8 plaintext (what WebCrypto's AES-GCM produces).
Errors say what is wrong and never include the key or the plaintext.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence

from clearlift_cli import redact
from clearlift_cli.errors import (
    CiphertextNotBase64,
    CiphertextTooShort,
    ConfigError,
    CryptoError,
    DecryptionFailed,
)

IV_BYTES = 12
TAG_BYTES = 16


class FieldCipher:
    def __init__(self, key: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != 32:
            raise ValueError("key must be 32 bytes")
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: str) -> str:
        iv = os.urandom(IV_BYTES)
        sealed = self._aead.encrypt(iv, plaintext.encode("utf-8"), None)
        return base64.b64encode(iv + sealed).decode("ascii")

    def decrypt(self, ciphertext: str, *, what: str = "ciphertext") -> str:
        try:
            raw = base64.b64decode(ciphertext.strip(), validate=True)
        except (binascii.Error, ValueError, AttributeError):
            raise CiphertextNotBase64(f"{what} is not valid base64") from None
        if len(raw) < IV_BYTES + TAG_BYTES:
            raise CiphertextTooShort(
                f"{what} is too short to be AES-GCM output ({len(raw)} bytes, "
                f"need at least {IV_BYTES + TAG_BYTES})"
            )
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(raw[:IV_BYTES], raw[IV_BYTES:], None)
        except InvalidTag:
            raise DecryptionFailed(
                f"{what} failed authentication: wrong ENCRYPTION_KEY or tampered data"
            ) from None
        try:
            text = plain.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionFailed(f"{what} does not decrypt to UTF-8 text") from None
        redact.register(text)
        return text


def refuse_a_wrong_key(
    cipher: FieldCipher, ciphertexts: Sequence[str | None], whose: str, outcome: str
) -> None:
    """ConfigError when the key decrypts none of two or more stored tokens. One row that
    does not decrypt may have been tampered with; several, none decrypting, is the key —
    and must not get every connection flagged or every job dead-lettered."""
    sealed = [c for c in ciphertexts if c]
    if len(sealed) < 2:
        return
    for text in sealed:
        try:
            cipher.decrypt(text)
            return
        except DecryptionFailed:
            continue
        except CryptoError:
            return  # a malformed row says nothing about the key
    raise ConfigError(
        f"ENCRYPTION_KEY decrypts none of the {len(sealed)} {whose} tokens: it is probably not "
        f"the API worker's key ({outcome})"
    )
