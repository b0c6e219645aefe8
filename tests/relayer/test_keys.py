"""The key manager: keys encrypted at rest, signing, tamper protection, master key rotation.

Every test here runs under a master key of its own (KEY_MASTER_KEYS through the `settings`
fixture); `master_keys()` is cached, so the cache is cleared after every settings change."""

from __future__ import annotations

import base64
import secrets
import stat
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data

from relayer.keys import KeyManagerError, LocalKeyManager, key_manager, master_keys
from relayer.models import KeyPurpose, SigningKey

Configure = Callable[[str], None]

RECEIVER = "0x000000000000000000000000000000000000dEaD"
DOMAIN = {
    "name": "Vault Orchestrator",
    "version": "1",
    "chainId": 31337,
    "verifyingContract": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
}
TYPES = {
    "Withdrawal": [
        {"name": "vault", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "memo", "type": "string"},
    ]
}
MESSAGE = {"vault": RECEIVER, "amount": 10**18, "memo": "rebalance"}


def b64_key(size: int = 32) -> str:
    return base64.b64encode(secrets.token_bytes(size)).decode()


def run_command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def key_forms(secret: bytes) -> list[bytes]:
    """The private key as raw bytes and as hex (lower and upper case, with and without 0x)."""
    hexed = secret.hex()
    return [secret, *(form.encode() for form in (hexed, "0x" + hexed, hexed.upper(), "0x" + hexed.upper()))]


def assert_no_key_material(blob: bytes | str, secret: bytes) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for form in key_forms(secret):
        assert form not in data
    assert secret.hex() not in data.decode("latin-1").lower()


def private_key(key: SigningKey) -> bytes:
    return key_manager()._private_key(key)


def a_transaction(nonce: int = 0) -> dict[str, Any]:
    return {
        "to": RECEIVER,
        "value": 12345,
        "gas": 21000,
        "maxFeePerGas": 2 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "nonce": nonce,
        "chainId": 31337,
        "type": 2,
    }


def assert_signs_for(key: SigningKey, manager: LocalKeyManager | None = None) -> None:
    """All three kinds of signature recover to the key's address."""
    km = manager or key_manager()
    signed = km.sign_transaction(key=key, tx=a_transaction())
    assert Account.recover_transaction(signed.raw_transaction) == key.address

    signature = km.sign_message(key=key, text="hello from the relayer")
    assert signature.startswith("0x") and len(signature) == 132
    assert Account.recover_message(encode_defunct(text="hello from the relayer"), signature=signature) == (key.address)

    typed = km.sign_typed_data(key=key, domain=DOMAIN, types=TYPES, message=MESSAGE)
    signable = encode_typed_data(domain_data=DOMAIN, message_types=TYPES, message_data=MESSAGE)
    assert typed.startswith("0x") and Account.recover_message(signable, signature=typed) == key.address


def assert_cannot_sign(key: SigningKey) -> KeyManagerError:
    km = key_manager()
    attempts: list[Callable[[], Any]] = [
        lambda: km.sign_transaction(key=key, tx=a_transaction()),
        lambda: km.sign_message(key=key, text="x"),
        lambda: km.sign_typed_data(key=key, domain=DOMAIN, types=TYPES, message=MESSAGE),
    ]
    errors = []
    for attempt in attempts:
        with pytest.raises(KeyManagerError) as info:
            attempt()
        errors.append(info.value)
    return errors[0]


@pytest.fixture(autouse=True)
def master(settings: Any) -> Iterator[Configure]:
    """Sets KEY_MASTER_KEYS (starting with a fresh version-1 key) and clears the cache."""

    def configure(raw: str) -> None:
        settings.KEY_MASTER_KEYS = raw
        master_keys.cache_clear()

    configure(f"1:{b64_key()}")
    yield configure
    # The settings fixture restores KEY_MASTER_KEYS after this; the cache must not outlive it.
    master_keys.cache_clear()


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
@pytest.mark.parametrize("purpose", ["admin", "", "RELAYER", "relayer "])
def test_an_unknown_purpose_is_refused_and_creates_no_key(purpose: str) -> None:
    with pytest.raises(KeyManagerError, match="unknown key purpose"):
        key_manager().create_key(purpose=purpose)
    assert not SigningKey.objects.exists()


# --- master keys and rotation ---------------------------------------------------------------


@pytest.mark.django_db
def test_rotate_master_re_encrypts_every_key_under_the_new_version(master: Configure) -> None:
    old, new = b64_key(), b64_key()
    master(f"1:{old}")
    created = [key_manager().create_key(purpose=purpose) for purpose in KeyPurpose.values]
    before = {key.pk: (bytes(key.ciphertext), bytes(key.nonce), private_key(key)) for key in created}

    master(f"2:{new},1:{old}")
    assert master_keys().current == 2
    out, _ = run_command("keys", "rotate-master")
    assert out.strip() == f"re-encrypted {len(created)} key(s) under master key v2"

    rotated = list(SigningKey.objects.all())
    assert {key.pk for key in rotated} == set(before)
    for key in rotated:
        ciphertext, nonce, secret = before[key.pk]
        assert key.master_key_version == 2 and key.rotated_at is not None
        assert bytes(key.ciphertext) != ciphertext and bytes(key.nonce) != nonce
        assert private_key(key) == secret  # the same private key, so the same address
        assert_signs_for(key)
        for value in (key.ciphertext, key.nonce):
            assert_no_key_material(bytes(value), secret)

    out, _ = run_command("keys", "rotate-master")
    assert out.strip() == "re-encrypted 0 key(s) under master key v2"

    master(f"2:{new}")  # the old master key retired
    for key in SigningKey.objects.all():
        assert_signs_for(key)
    assert key_manager().create_key(purpose="relayer").master_key_version == 2

    master(f"1:{old}")  # a deployment that still has only the old one
    for key in SigningKey.objects.filter(pk__in=before):
        error = assert_cannot_sign(key)
        assert "version 2 is not configured" in str(error)

    master(f"2:{b64_key()}")  # a wrong key under the right version number
    for key in SigningKey.objects.filter(pk__in=before):
        assert "does not decrypt" in str(assert_cannot_sign(key))


@pytest.mark.django_db
def test_the_highest_version_encrypts_whatever_the_order_in_the_setting(master: Configure) -> None:
    master(f"1:{b64_key()},3:{b64_key()}, 2:{b64_key()}")
    assert master_keys().current == 3
    assert sorted(master_keys().keys) == [1, 2, 3]
    key = key_manager().create_key(purpose="operator")
    assert key.master_key_version == 3
    assert_signs_for(key)


@pytest.mark.django_db
def test_rotate_master_fails_as_a_command_error_when_an_old_master_key_is_missing(
    master: Configure,
) -> None:
    master(f"1:{b64_key()}")
    key = key_manager().create_key(purpose="relayer")
    master(f"2:{b64_key()}")
    with pytest.raises(CommandError, match="version 1 is not configured"):
        run_command("keys", "rotate-master")
    unchanged = SigningKey.objects.get(pk=key.pk)
    assert unchanged.master_key_version == 1 and bytes(unchanged.ciphertext) == bytes(key.ciphertext)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("1:not base64!", id="not-base64"),
        pytest.param("1:@@@@", id="not-base64-alphabet"),
        pytest.param(f"1:{b64_key(16)}", id="16-bytes"),
        pytest.param(f"1:{b64_key(33)}", id="33-bytes"),
        pytest.param(f"0:{b64_key()}", id="version-0"),
        pytest.param(f"-1:{b64_key()}", id="version-negative"),
        pytest.param(f"x:{b64_key()}", id="version-not-a-number"),
        pytest.param(b64_key(), id="no-version"),
        pytest.param("1:", id="empty-key"),
        pytest.param(",", id="empty-list"),
        pytest.param("   ", id="blank"),
        pytest.param(f"2:{b64_key()},1:{b64_key(31)}", id="one-bad-among-good"),
        pytest.param(f"1:{b64_key()},1:{b64_key()}", id="duplicate-version"),
    ],
)
def test_a_malformed_master_key_setting_is_improperly_configured(master: Configure, raw: str) -> None:
    master(raw)
    with pytest.raises(ImproperlyConfigured, match="KEY_MASTER_KEYS") as info:
        master_keys()
    for part in raw.split(","):
        material = (part.partition(":")[2] or part).strip()
        assert not material or material not in str(info.value)  # never echoes a key back


def test_without_the_setting_a_development_master_key_is_generated_once(
    master: Configure, settings: Any, tmp_path: Path
) -> None:
    settings.VAR_DIR = tmp_path / "var"
    master("")
    first = master_keys()
    path = tmp_path / "var" / "master-keys"
    assert first.current == 1 and len(first.keys[1]) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    master_keys.cache_clear()
    assert master_keys() == first  # read back, not generated again


# --- the keys command -----------------------------------------------------------------------


def test_new_master_key_prints_an_entry_one_version_above_the_current(master: Configure) -> None:
    master(f"3:{b64_key()},1:{b64_key()}")
    out, err = run_command("keys", "new-master-key")
    version, _, encoded = out.strip().partition(":")
    assert version == "4"
    assert len(base64.b64decode(encoded, validate=True)) == 32
    assert "KEY_MASTER_KEYS" in err and "rotate-master" in err
    master(f"{out.strip()},3:{b64_key()}")
    assert master_keys().current == 4  # the entry parses as printed
    again, _ = run_command("keys", "new-master-key")
    assert again.strip() != out.strip()


@pytest.mark.django_db
def test_keys_create_and_list_print_addresses_and_never_a_private_key() -> None:
    out, _ = run_command("keys", "create", "--purpose", "oracle", "--label", "price feed")
    address = out.strip()
    key = SigningKey.objects.get()
    assert address == key.address and key.purpose == "oracle" and key.label == "price feed"
    relayer = key_manager().create_key(purpose="relayer", label="hot wallet")

    listing, _ = run_command("keys", "list")
    lines = listing.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].split() == [address, "oracle", "v1", "price", "feed"]
    assert lines[1].split() == [relayer.address, "relayer", "v1", "hot", "wallet"]
    for k in (key, relayer):
        secret = private_key(k)
        for text in (out, listing):
            assert_no_key_material(text, secret)
            assert bytes(k.ciphertext).hex() not in text


@pytest.mark.django_db
def test_keys_create_refuses_an_unknown_purpose() -> None:
    with pytest.raises(CommandError, match="invalid choice"):
        run_command("keys", "create", "--purpose", "admin")
    assert not SigningKey.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("nonce", [b"", b"\x00" * 4, b"\x00" * 12], ids=["empty", "short", "zeroed"])
def test_a_damaged_nonce_does_not_decrypt(nonce: bytes) -> None:
    key = key_manager().create_key(purpose="relayer")
    secret = private_key(key)
    SigningKey.objects.filter(pk=key.pk).update(nonce=nonce)
    error = assert_cannot_sign(SigningKey.objects.get(pk=key.pk))
    assert_no_key_material(str(error), secret)
