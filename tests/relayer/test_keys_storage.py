"""relayer/keys.py, keys at rest: encrypted, bound to their row, never shown, and refused
when tampered with."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from eth_account import Account

from orchestrator.infra.errors import DomainError
from relayer.keys import KeyManagerError, key_manager
from relayer.models import KeyPurpose, SigningKey
from tests.support.relays import (
    assert_cannot_sign,
    assert_no_key_material,
    assert_signs_for,
    private_key,
)

pytestmark = pytest.mark.usefixtures("master")  # tests/relayer/conftest.py: a master key of the test's own


def rows_of_the_key_table() -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM relayer_signingkey")
        return list(cursor.fetchall())


def rows_as_text() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT k::text FROM relayer_signingkey k")
        return [row[0] for row in cursor.fetchall()]


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


# --- encrypted at rest ----------------------------------------------------------------------


@pytest.mark.django_db
def test_no_column_of_the_key_table_holds_a_private_key_in_bytes_or_hex() -> None:
    keys = [key_manager().create_key(purpose=purpose, label=f"{purpose} key") for purpose in KeyPurpose.values]
    secrets_by_address = {key.address: private_key(key) for key in keys}
    for address, secret in secrets_by_address.items():
        assert len(secret) == 32
        assert Account.from_key(secret).address == address  # the test knows the right secret

    rows = rows_of_the_key_table()
    texts = rows_as_text()
    assert len(rows) == len(texts) == len(KeyPurpose.values)
    for secret in secrets_by_address.values():
        for row in rows:
            for value in row:
                assert_no_key_material(as_bytes(value), secret)
        for text in texts:  # bytea as PostgreSQL prints it: \x<hex>
            assert_no_key_material(text, secret)

    for key in SigningKey.objects.all():
        assert key.backend == "local" and key.master_key_version == 1
        assert len(bytes(key.nonce)) == 12
        assert len(bytes(key.ciphertext)) == 32 + 16  # the key plus the GCM tag
        assert key.purpose in KeyPurpose.values and key.label == f"{key.purpose} key"


@pytest.mark.django_db
@pytest.mark.parametrize("purpose", KeyPurpose.values)
def test_a_key_of_each_purpose_signs_transactions_messages_and_typed_data(purpose: str) -> None:
    key = key_manager().create_key(purpose=purpose)
    assert_signs_for(SigningKey.objects.get(pk=key.pk))  # as read back from the database


@pytest.mark.django_db
def test_two_keys_are_different_and_encrypted_under_different_nonces() -> None:
    first = key_manager().create_key(purpose="relayer")
    second = key_manager().create_key(purpose="relayer")
    assert first.address != second.address
    assert bytes(first.nonce) != bytes(second.nonce)
    assert private_key(first) != private_key(second)


@pytest.mark.django_db
def test_the_signing_key_repr_and_str_show_no_key_material() -> None:
    key = key_manager().create_key(purpose="executor", label="main")
    secret = private_key(key)
    shown = [repr(key), str(key), repr(SigningKey.objects.all()), str(SigningKey.objects.get(pk=key.pk))]
    for text in shown:
        assert_no_key_material(text, secret)
        assert bytes(key.ciphertext).hex() not in text
        assert bytes(key.nonce).hex() not in text
    assert repr(key) == f"<SigningKey executor {key.address}>"
    assert str(key) == f"executor {key.address}"


# --- tampering ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_ciphertext_copied_onto_another_row_does_not_decrypt() -> None:
    donor = key_manager().create_key(purpose="relayer")
    victim = key_manager().create_key(purpose="relayer")
    secrets_ = [private_key(donor), private_key(victim)]
    SigningKey.objects.filter(pk=victim.pk).update(ciphertext=donor.ciphertext, nonce=donor.nonce)
    tampered = SigningKey.objects.get(pk=victim.pk)

    error = assert_cannot_sign(tampered)
    assert victim.address in str(error) and "does not decrypt" in str(error)
    for secret in secrets_:
        assert_no_key_material(str(error), secret)
        assert_no_key_material(repr(error), secret)
    assert bytes(donor.ciphertext).hex() not in str(error)
    assert error.__cause__ is None and error.__suppress_context__  # no InvalidTag chained in
    assert_signs_for(SigningKey.objects.get(pk=donor.pk))  # the donor is unharmed


@pytest.mark.django_db
def test_a_flipped_ciphertext_bit_or_a_changed_purpose_does_not_decrypt() -> None:
    key = key_manager().create_key(purpose="oracle")
    flipped = bytearray(bytes(key.ciphertext))
    flipped[0] ^= 0x01
    SigningKey.objects.filter(pk=key.pk).update(ciphertext=bytes(flipped))
    assert_cannot_sign(SigningKey.objects.get(pk=key.pk))

    other = key_manager().create_key(purpose="oracle")
    SigningKey.objects.filter(pk=other.pk).update(purpose="relayer")  # the purpose is bound in
    assert_cannot_sign(SigningKey.objects.get(pk=other.pk))


@pytest.mark.django_db
def test_a_key_under_an_unconfigured_master_key_version_cannot_sign() -> None:
    key = key_manager().create_key(purpose="relayer")
    SigningKey.objects.filter(pk=key.pk).update(master_key_version=7)
    error = assert_cannot_sign(SigningKey.objects.get(pk=key.pk))
    assert "version 7 is not configured" in str(error)


@pytest.mark.django_db
@pytest.mark.parametrize("nonce", [b"", b"\x00" * 4, b"\x00" * 12], ids=["empty", "short", "zeroed"])
def test_a_damaged_nonce_does_not_decrypt(nonce: bytes) -> None:
    key = key_manager().create_key(purpose="relayer")
    secret = private_key(key)
    SigningKey.objects.filter(pk=key.pk).update(nonce=nonce)
    error = assert_cannot_sign(SigningKey.objects.get(pk=key.pk))
    assert_no_key_material(str(error), secret)


@pytest.mark.django_db
@pytest.mark.parametrize("purpose", ["admin", "", "RELAYER", "relayer "])
def test_an_unknown_purpose_is_refused_and_creates_no_key(purpose: str) -> None:
    with pytest.raises(KeyManagerError, match="unknown key purpose") as info:
        key_manager().create_key(purpose=purpose)
    assert not SigningKey.objects.exists()
    # A DomainError, but nothing a client can fix: were it to reach the API, a 500.
    assert isinstance(info.value, DomainError) and (info.value.code, info.value.http_status) == ("key_unavailable", 500)
