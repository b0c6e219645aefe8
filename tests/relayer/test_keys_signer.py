"""relayer/keys.py, the in-process signer behind sign_message, sign_typed_data and the
transaction signers: a key is opened once per process (not once per hook or batch), and what it
signs is eth_account's signature or transaction, byte for byte; the cache never outlives the
row's sealed bytes or the master key that opens them."""

from __future__ import annotations

import uuid

import pytest
from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct, encode_typed_data

from relayer import keys
from relayer.keys import KeyManagerError, key_manager
from relayer.models import SigningKey
from tests.support.relays import (
    DOMAIN,
    MESSAGE,
    TYPES,
    Configure,
    a_transaction,
    assert_no_key_material,
    b64_key,
    private_key,
)

pytestmark = [pytest.mark.usefixtures("master"), pytest.mark.django_db]


def eth_account_signature(secret: bytes, signable: SignableMessage) -> str:
    return "0x" + Account.sign_message(signable, secret).signature.hex().removeprefix("0x")


@pytest.mark.parametrize("purpose", ["operator", "executor"])
def test_messages_and_typed_data_are_signed_exactly_as_eth_account_signs_them(purpose: str) -> None:
    key = SigningKey.objects.get(pk=key_manager().create_key(purpose=purpose).pk)
    secret = private_key(key)
    texts = ["", "x", "hello from the relayer", *(f"{uuid.uuid4()}-2026-12-04T21:00:0{i}Z" for i in range(20))]
    for text in texts:
        expected = eth_account_signature(secret, encode_defunct(text=text))
        assert key_manager().sign_message(key=key, text=text) == expected
        assert key_manager().sign_message(key=key, text=text) == expected  # again, from the opened key
    typed = encode_typed_data(domain_data=DOMAIN, message_types=TYPES, message_data=MESSAGE)
    assert key_manager().sign_typed_data(key=key, domain=DOMAIN, types=TYPES, message=MESSAGE) == (
        eth_account_signature(secret, typed)
    )


def test_transactions_are_signed_exactly_as_eth_account_signs_them() -> None:
    """A relay's type-2 transaction by the direct encoder, other kinds by eth_account: the same
    bytes either way, and eth_account's error for a malformed one."""
    key = SigningKey.objects.get(pk=key_manager().create_key(purpose="relayer").pk)
    secret = private_key(key)
    relay = [{**a_transaction(nonce), "data": "0x" + "ab" * nonce} for nonce in range(60)]
    legacy = {"to": a_transaction()["to"], "value": 1, "gas": 21000, "gasPrice": 10**9, "nonce": 3, "chainId": 31337}
    listed = {**a_transaction(), "accessList": [{"address": a_transaction()["to"], "storageKeys": []}]}
    assert key_manager().sign_transactions(key=key, txs=relay) == [Account.sign_transaction(tx, secret) for tx in relay]
    for tx in (legacy, listed):
        assert key_manager().sign_transaction(key=key, tx=tx) == Account.sign_transaction(tx, secret)
    bad = {**a_transaction(), "to": a_transaction()["to"].lower()}
    with pytest.raises(TypeError, match="invalid fields"):
        Account.sign_transaction(bad, secret)
    with pytest.raises(TypeError, match="invalid fields"):
        key_manager().sign_transaction(key=key, tx=bad)


def test_a_key_is_opened_once_per_process_and_its_signer_shows_no_key_material() -> None:
    keys._signer.cache_clear()
    key = key_manager().create_key(purpose="operator")
    for i in range(5):
        key_manager().sign_message(key=key, text=f"request {i}")
    info = keys._signer.cache_info()
    assert (info.misses, info.hits) == (1, 4)
    (opened,) = [keys._signer(*args) for args in [_cache_args(key)]]
    assert repr(opened) == f"<signer {key.address}>"
    assert_no_key_material(repr(opened), private_key(key))


def _cache_args(key: SigningKey) -> tuple[bytes, str, str, int, bytes, bytes]:
    master = keys.master_keys().keys[key.master_key_version]
    return master, key.address, key.purpose, key.master_key_version, bytes(key.nonce), bytes(key.ciphertext)


def test_a_key_opened_before_its_master_key_was_dropped_no_longer_signs(master: Configure) -> None:
    old, new = b64_key(), b64_key()
    master(f"1:{old}")
    key = key_manager().create_key(purpose="operator")
    key_manager().sign_message(key=key, text="opened")
    master(f"2:{new}")  # version 1 dropped without re-sealing
    with pytest.raises(KeyManagerError, match="version 1 is not configured"):
        key_manager().sign_message(key=key, text="opened")
    master(f"2:{new},1:{b64_key()}")  # a different key under the same version number
    with pytest.raises(KeyManagerError, match="does not decrypt"):
        key_manager().sign_message(key=key, text="opened")


def test_a_re_sealed_key_signs_the_same_and_a_tampered_row_is_refused(master: Configure) -> None:
    old = b64_key()
    master(f"1:{old}")
    key = key_manager().create_key(purpose="operator")
    before = key_manager().sign_message(key=key, text="same")
    master(f"2:{b64_key()},1:{old}")
    assert key_manager().rotate_master() == 1
    resealed = SigningKey.objects.get(pk=key.pk)
    assert resealed.master_key_version == 2
    assert key_manager().sign_message(key=resealed, text="same") == before
    flipped = bytearray(resealed.ciphertext)
    flipped[0] ^= 1
    resealed.ciphertext = bytes(flipped)
    with pytest.raises(KeyManagerError, match="does not decrypt"):
        key_manager().sign_message(key=resealed, text="same")
