"""Field encryption: the API worker's format, base64(12-byte IV || AES-256-GCM ct || 16-byte tag)."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clearlift_cli.crypto import FieldCipher
from clearlift_cli.errors import (
    CiphertextNotBase64,
    CiphertextTooShort,
    ClearliftError,
    CryptoError,
    DecryptionFailed,
)
from tests.helpers import KEY_B64, KEY_BYTES

PLAINTEXTS = [
    "ya29.a0AfH6SMBx-access-token",
    "",
    "ünïcødé — 日本語 — emoji 🚀",
    "x" * 5000,
    "line1\nline2\ttab",
]


def worker_encrypt(key: bytes, plaintext: str) -> str:
    """What the API worker (WebCrypto AES-GCM) stores, built from the raw primitive."""
    iv = os.urandom(12)
    return base64.b64encode(iv + AESGCM(key).encrypt(iv, plaintext.encode("utf-8"), None)).decode()


def worker_decrypt(key: bytes, stored: str) -> str:
    raw = base64.b64decode(stored, validate=True)
    return AESGCM(key).decrypt(raw[:12], raw[12:], None).decode("utf-8")


@pytest.mark.parametrize("plaintext", PLAINTEXTS)
def test_round_trip(plaintext):
    cipher = FieldCipher(KEY_BYTES)
    assert cipher.decrypt(cipher.encrypt(plaintext)) == plaintext


def test_each_encryption_uses_a_fresh_iv():
    cipher = FieldCipher(KEY_BYTES)
    a, b = cipher.encrypt("same"), cipher.encrypt("same")
    assert a != b
    assert base64.b64decode(a)[:12] != base64.b64decode(b)[:12]


@pytest.mark.parametrize("plaintext", PLAINTEXTS)
def test_layout_is_iv_ciphertext_tag(plaintext):
    stored = FieldCipher(KEY_BYTES).encrypt(plaintext)
    raw = base64.b64decode(stored, validate=True)
    assert len(raw) == 12 + len(plaintext.encode("utf-8")) + 16


@pytest.mark.parametrize("plaintext", PLAINTEXTS)
def test_decrypts_what_the_api_worker_wrote(plaintext):
    assert FieldCipher(KEY_BYTES).decrypt(worker_encrypt(KEY_BYTES, plaintext)) == plaintext


@pytest.mark.parametrize("plaintext", PLAINTEXTS)
def test_api_worker_decrypts_what_we_write(plaintext):
    assert worker_decrypt(KEY_BYTES, FieldCipher(KEY_BYTES).encrypt(plaintext)) == plaintext


def test_standard_gcm_vectors():
    # McGrew & Viega GCM spec, test cases 13 and 14: 256-bit zero key, 96-bit zero IV.
    cipher = FieldCipher(bytes(32))
    empty = bytes(12) + bytes.fromhex("530f8afbc74536b9a963b4f1c4cb738b")
    assert cipher.decrypt(base64.b64encode(empty).decode()) == ""
    sixteen_zeros = bytes(12) + bytes.fromhex(
        "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
    )
    assert cipher.decrypt(base64.b64encode(sixteen_zeros).decode()) == "\x00" * 16


SECRET = "refresh-token-that-must-not-leak"


def _failure(cipher: FieldCipher, stored: str) -> CryptoError:
    with pytest.raises(CryptoError) as info:
        cipher.decrypt(stored, what="credentials_encrypted")
    return info.value


def _assert_clean(exc: Exception, *secrets: str) -> None:
    text = str(exc) + repr(exc)
    for secret in secrets:
        assert secret not in text
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    assert "credentials_encrypted" in str(exc)  # says which field


@pytest.mark.parametrize("position", ["iv", "ciphertext", "tag"])
def test_tampered_byte_fails_authentication(position):
    cipher = FieldCipher(KEY_BYTES)
    raw = bytearray(base64.b64decode(cipher.encrypt(SECRET)))
    index = {"iv": 3, "ciphertext": 12 + 5, "tag": len(raw) - 1}[position]
    raw[index] ^= 0x01
    exc = _failure(cipher, base64.b64encode(bytes(raw)).decode())
    assert type(exc) is DecryptionFailed
    _assert_clean(exc, SECRET, KEY_B64)


def test_wrong_key_fails_authentication():
    stored = FieldCipher(KEY_BYTES).encrypt(SECRET)
    other_key = os.urandom(32)
    exc = _failure(FieldCipher(other_key), stored)
    assert type(exc) is DecryptionFailed
    assert "ENCRYPTION_KEY" in str(exc)
    _assert_clean(exc, SECRET, KEY_B64, base64.b64encode(other_key).decode(), other_key.hex())


@pytest.mark.parametrize("stored", ["not base64!!", "abc", "QUJD\n RA==", "ÿÿÿÿ"])
def test_bad_base64(stored):
    exc = _failure(FieldCipher(KEY_BYTES), stored)
    assert type(exc) is CiphertextNotBase64
    _assert_clean(exc, KEY_B64)


def test_none_is_reported_as_not_base64():
    exc = _failure(FieldCipher(KEY_BYTES), None)  # type: ignore[arg-type]
    assert type(exc) is CiphertextNotBase64


@pytest.mark.parametrize("length", [0, 1, 12, 27])
def test_too_short(length):
    stored = base64.b64encode(os.urandom(length)).decode()
    exc = _failure(FieldCipher(KEY_BYTES), stored)
    assert type(exc) is CiphertextTooShort
    assert str(length) in str(exc) and "28" in str(exc)
    _assert_clean(exc, KEY_B64)


def test_shortest_valid_length_is_not_too_short():
    # 28 bytes = IV + tag of an empty plaintext: authentication decides, not length
    exc = _failure(FieldCipher(KEY_BYTES), base64.b64encode(os.urandom(28)).decode())
    assert type(exc) is DecryptionFailed


def test_each_problem_has_its_own_class():
    classes = {CiphertextNotBase64, CiphertextTooShort, DecryptionFailed}
    assert len(classes) == 3
    for cls in classes:
        assert issubclass(cls, CryptoError) and issubclass(cls, ClearliftError)
        assert not any(issubclass(cls, other) for other in classes - {cls})


def test_decrypted_plaintext_is_redacted_from_later_messages():
    from clearlift_cli.redact import redact

    token = "EAAB-unique-" + os.urandom(6).hex()
    FieldCipher(KEY_BYTES).decrypt(worker_encrypt(KEY_BYTES, token))
    assert token not in redact(f"platform said: bad token {token}")
