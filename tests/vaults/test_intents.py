"""ExecutionIntents: nonces, signatures, deadlines, and the relays that carry their actions."""

from __future__ import annotations

import importlib
import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.db import connection, transaction
from django.utils import timezone
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from relayer.models import RelayTransaction
from tests.support.vaults import emit_intent, make_policy, make_protocol, make_vault
from vaults.models import ExecutionIntent, IntentRelay, IntentStatus, Vault, VaultPolicy
from vaults.selectors import intent_relays
from vaults.services.intents import (
    INTENT_TYPES,
    IntentExpired,
    intent_advance,
    intent_domain,
    intent_emit,
    intent_message,
)
from vaults.services.policies import PolicySnapshot


def hand_made_actions() -> list[dict[str, Any]]:
    """What plan_actions would produce: a withdrawal then a deposit (calldata is opaque here)."""
    aave, compound = make_protocol("Aave USDC"), make_protocol("Compound USDC")
    return [
        {
            "kind": "withdraw",
            "protocol": "Compound USDC",
            "address": compound.address,
            "amount": "400000",
            "calldata": "0xba087652" + "00" * 96,
        },
        {
            "kind": "deposit",
            "protocol": "Aave USDC",
            "address": aave.address,
            "amount": "400000",
            "calldata": "0x6e553f65" + "11" * 64,
        },
    ]


ALLOCATION = {"Aave USDC": Decimal(60), "Compound USDC": Decimal(40)}


def known_protocols() -> None:
    """Proposals only name protocols of the vault's chain."""
    for name in ALLOCATION:
        make_protocol(name)


def emit(vault: Vault, policy: VaultPolicy, **overrides: Any) -> ExecutionIntent:
    return emit_intent(vault, policy, **{"allocation": ALLOCATION, "actions": hand_made_actions(), **overrides})


def signer_of(intent: ExecutionIntent) -> str:
    signable = encode_typed_data(
        domain_data=intent_domain(intent.vault), message_types=INTENT_TYPES, message_data=intent_message(intent)
    )
    return str(Account.recover_message(signable, signature=intent.signature))


@pytest.mark.django_db
def test_intents_of_a_vault_take_nonces_1_2_3() -> None:
    vault = make_vault()
    policy = make_policy(vault)
    intents = [emit(vault, policy) for _ in range(3)]
    assert [i.nonce for i in intents] == [1, 2, 3]
    vault.refresh_from_db()
    assert vault.intent_nonce == 3
    assert vault.last_rebalance_at is not None
    other = make_vault("vault-eth-002")
    assert emit(other, make_policy(other)).nonce == 1  # nonces are per vault


@pytest.mark.django_db
def test_an_intent_is_signed_by_the_vaults_operator_over_its_typed_data() -> None:
    vault = make_vault()
    policy = make_policy(vault)
    emitted = emit(vault, policy)

    stored = ExecutionIntent.objects.select_related("vault__chain", "policy").get(pk=emitted.pk)
    assert stored.issuer == vault.operator.address
    assert stored.status == IntentStatus.SIGNED
    assert stored.allocation == {"Aave USDC": "60", "Compound USDC": "40"}
    assert stored.actions == hand_made_actions()
    assert signer_of(stored) == vault.operator.address
    assert signer_of(stored) != vault.account.address
    assert intent_domain(vault) == {"name": "Vault Orchestrator Intent", "version": "1", "chainId": 31337}

    signable = encode_typed_data(
        domain_data=intent_domain(vault), message_types=INTENT_TYPES, message_data=intent_message(stored)
    )
    assert stored.digest == "0x" + keccak(b"\x19" + signable.version + signable.header + signable.body).hex()


@pytest.mark.django_db
def test_an_intent_changed_after_signing_no_longer_recovers_to_the_operator() -> None:
    vault = make_vault()
    intent = emit(vault, make_policy(vault))
    intent.actions[1]["amount"] = "900000"
    assert signer_of(intent) != vault.operator.address
    intent.refresh_from_db()
    intent.nonce = 7
    assert signer_of(intent) != vault.operator.address


@pytest.mark.django_db(transaction=True)
def test_concurrent_intents_for_one_vault_take_nonces_1_to_40_without_a_gap_or_a_duplicate() -> None:
    vault = make_vault()
    policy = make_policy(vault)
    actions = hand_made_actions()
    deadline = timezone.now() + timedelta(hours=1)
    threads, per_thread = 8, 5
    start = threading.Barrier(threads)
    nonces: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def emit_some() -> None:
        try:
            start.wait(timeout=30)
            for _ in range(per_thread):
                with transaction.atomic():
                    intent = intent_emit(
                        vault_id=vault.pk,
                        policy=PolicySnapshot.of(policy),
                        allocation=ALLOCATION,
                        actions=actions,
                        deadline=deadline,
                    )
                with lock:
                    nonces.append(intent.nonce)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=emit_some) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert not any(w.is_alive() for w in workers)
    assert errors == []
    assert sorted(nonces) == list(range(1, threads * per_thread + 1))
    stored = list(ExecutionIntent.objects.filter(vault=vault).order_by("nonce"))
    assert [i.nonce for i in stored] == list(range(1, threads * per_thread + 1))
    vault.refresh_from_db()
    assert vault.intent_nonce == threads * per_thread
    assert all(signer_of(i) == vault.operator.address for i in stored)


@pytest.mark.django_db
def test_advancing_an_intent_past_its_deadline_raises_marks_it_expired_and_relays_nothing() -> None:
    vault = make_vault()
    intent = emit(vault, make_policy(vault), deadline=timezone.now() - timedelta(seconds=1))
    with pytest.raises(IntentExpired, match="intent #1 expired"):
        intent_advance(intent=intent)
    intent.refresh_from_db()
    assert intent.status == IntentStatus.EXPIRED
    assert intent.error == "deadline passed"
    assert not RelayTransaction.objects.exists()


@pytest.mark.django_db
def test_the_deadline_is_judged_against_the_time_given() -> None:
    vault = make_vault()
    deadline = timezone.now() + timedelta(minutes=10)
    intent = emit(vault, make_policy(vault), deadline=deadline)
    with pytest.raises(IntentExpired):
        intent_advance(intent=intent, now=deadline + timedelta(microseconds=1))
    intent.refresh_from_db()
    assert intent.status == IntentStatus.EXPIRED
    assert not RelayTransaction.objects.exists()


# --- the relays of an intent -------------------------------------------------------------------


@pytest.mark.django_db
def test_advancing_an_intent_requests_its_actions_in_sequence_each_linked_at_its_place() -> None:
    vault = make_vault()
    intent = emit(vault, make_policy(vault))
    assert intent_advance(intent=intent) is None
    relays = list(intent_relays(intent_id=intent.pk))
    assert [r.position for r in relays] == [0, 1]
    assert [r.data for r in relays] == [a["calldata"] for a in intent.actions]
    assert (relays[0].after_id, relays[1].after_id) == (None, relays[0].id)
    assert [r.idempotency_key for r in relays] == [f"intent:{intent.id}:0", f"intent:{intent.id}:1"]
    intent.refresh_from_db()
    assert intent.status == IntentStatus.RELAYING
    # Another look requests nothing more.
    assert intent_advance(intent=intent) is None
    assert RelayTransaction.objects.count() == IntentRelay.objects.count() == 2


@pytest.mark.django_db
def test_the_migration_links_the_relays_requested_before_it_by_their_keys() -> None:
    vault = make_vault()
    intent = emit(vault, make_policy(vault))
    intent_advance(intent=intent)
    linked = list(IntentRelay.objects.order_by("position").values_list("intent_id", "relay_id", "position"))
    IntentRelay.objects.all().delete()  # as before the migration: the place only in the key
    migration = importlib.import_module("vaults.migrations.0002_intent_relay")
    with connection.schema_editor() as editor:
        migration.link_existing_relays(django_apps, editor)
    assert list(IntentRelay.objects.order_by("position").values_list("intent_id", "relay_id", "position")) == linked
