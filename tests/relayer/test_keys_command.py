"""`manage.py keys list|create|rotate-master|new-master-key`
(relayer/management/commands/keys.py): addresses only, never a private key."""

from __future__ import annotations

import base64

import pytest
from django.core.management.base import CommandError

from relayer.keys import key_manager, master_keys
from relayer.models import SigningKey
from tests.support.relays import (
    Configure,
    assert_no_key_material,
    b64_key,
    private_key,
    run_command,
)

pytestmark = pytest.mark.usefixtures("master")  # tests/relayer/conftest.py: a master key of the test's own


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
