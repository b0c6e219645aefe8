"""Policy versions, ExecutionIntents (nonces, signatures, deadlines) and proposal creation."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from approvals.models import ProposalSource, ProposalStatus, RebalanceProposal
from approvals.services import ProposalInvalid, proposal_create
from relayer.models import RelayTransaction
from tests.support.vaults import make_oracle, make_policy, make_protocol, make_vault, policy_values
from vaults.models import ExecutionIntent, IntentStatus, PolicyStatus, Vault, VaultPolicy
from vaults.services.intents import INTENT_TYPES, IntentExpired, _typed, intent_advance, intent_domain, intent_emit
from vaults.services.policies import COMPARED, PolicyFrozen, policy_activate, policy_diff, policy_draft

User = get_user_model()


# --- policy versions -------------------------------------------------------------------------------

FIRST = {
    "max_exposure_pct": Decimal(40),
    "max_risk_score": 3,
    "min_interval_seconds": 600,
    "window_start_hour": 8,
    "window_end_hour": 20,
    "max_feed_age_seconds": 120,
    "max_turnover_pct": Decimal(30),
    "approval_threshold": Decimal(5000),
    "intent_ttl_seconds": 900,
}


def first_policy(vault: Vault) -> VaultPolicy:
    oracle, _ = make_oracle()
    return make_policy(
        vault, whitelist=[make_protocol("Aave USDC"), make_protocol("Compound USDC")], oracles=[oracle], **FIRST
    )


@pytest.mark.django_db
def test_the_first_draft_of_a_vault_is_version_1_with_the_values_given() -> None:
    vault = make_vault()
    draft = policy_draft(vault=vault, whitelist=[make_protocol("Aave USDC")], **policy_values(max_risk_score=4))
    assert draft.version == 1
    assert draft.status == PolicyStatus.DRAFT
    assert draft.activated_at is None
    assert draft.max_risk_score == 4
    assert draft.max_exposure_pct == Decimal(50)
    assert draft.min_interval_seconds == 3600  # the model's default
    assert list(draft.whitelist.values_list("name", flat=True)) == ["Aave USDC"]
    assert not draft.oracles.exists()


@pytest.mark.django_db
def test_a_draft_copies_the_active_policys_values_whitelist_and_oracles() -> None:
    vault = make_vault()
    active = first_policy(vault)

    draft = policy_draft(vault=vault, max_risk_score=4)

    assert draft.version == 2
    assert draft.status == PolicyStatus.DRAFT
    for name, value in FIRST.items():
        expected = 4 if name == "max_risk_score" else value
        assert getattr(draft, name) == expected, name
    assert set(draft.whitelist.all()) == set(active.whitelist.all())
    assert set(draft.oracles.all()) == set(active.oracles.all())
    active.refresh_from_db()
    assert active.status == PolicyStatus.ACTIVE  # drafting changes nothing live


@pytest.mark.django_db
def test_a_draft_can_be_based_on_an_older_version() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    make_policy(vault, max_exposure_pct=Decimal(90), whitelist=[make_protocol("Morpho USDC")])
    v3 = policy_draft(vault=vault, based_on=v1)
    assert v3.version == 3
    assert v3.max_exposure_pct == Decimal(40)
    assert sorted(v3.whitelist.values_list("name", flat=True)) == ["Aave USDC", "Compound USDC"]


@pytest.mark.django_db
def test_activating_a_draft_retires_the_active_policy() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    v2 = policy_draft(vault=vault, max_risk_score=4)

    activated = policy_activate(policy=v2)

    v1.refresh_from_db()
    v2.refresh_from_db()
    assert activated.pk == v2.pk
    assert v2.status == PolicyStatus.ACTIVE
    assert v2.activated_at is not None
    assert v1.status == PolicyStatus.RETIRED
    assert list(vault.policies.filter(status=PolicyStatus.ACTIVE)) == [v2]


@pytest.mark.django_db
def test_activating_a_policy_of_one_vault_leaves_other_vaults_alone() -> None:
    first, second = make_vault("vault-eth-001"), make_vault("vault-eth-002")
    kept = make_policy(first)
    make_policy(second)
    make_policy(second)
    kept.refresh_from_db()
    assert kept.status == PolicyStatus.ACTIVE


@pytest.mark.django_db
def test_the_database_allows_only_one_active_policy_per_vault() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    make_policy(vault)
    with pytest.raises(IntegrityError), transaction.atomic():
        VaultPolicy.objects.filter(pk=v1.pk).update(status=PolicyStatus.ACTIVE)
    v1.refresh_from_db()
    assert v1.status == PolicyStatus.RETIRED


@pytest.mark.django_db
def test_an_active_or_retired_policy_cannot_be_activated_again() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    with pytest.raises(PolicyFrozen, match="v1 is active"):
        policy_activate(policy=v1)
    v2 = make_policy(vault)
    with pytest.raises(PolicyFrozen, match="v1 is retired"):
        policy_activate(policy=v1)
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == (PolicyStatus.RETIRED, PolicyStatus.ACTIVE)


@pytest.mark.django_db
def test_policy_diff_lists_the_changed_fields_and_nothing_else() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    v2 = policy_draft(
        vault=vault, max_risk_score=4, max_turnover_pct=Decimal("12.5"), whitelist=[make_protocol("Aave USDC")]
    )
    assert policy_diff(old=v1, new=v2) == [
        ("max_risk_score", "3", "4"),
        ("max_turnover_pct", "30.0000", "12.5"),
        ("whitelist", "Aave USDC, Compound USDC", "Aave USDC"),
    ]
    assert policy_diff(old=v1, new=policy_draft(vault=vault)) == []


@pytest.mark.django_db
def test_policy_diff_against_nothing_lists_every_compared_field() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    diff = policy_diff(old=None, new=v1)
    assert [field for field, _, _ in diff] == COMPARED
    assert all(before == "" for _, before, _ in diff)
    assert ("max_risk_score", "", "3") in diff


# --- intents -------------------------------------------------------------------------------------


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
    values: dict[str, Any] = {
        "vault": vault,
        "policy": policy,
        "allocation": ALLOCATION,
        "actions": hand_made_actions(),
        "deadline": timezone.now() + timedelta(hours=1),
    }
    values.update(overrides)
    with transaction.atomic():
        return intent_emit(**values)


def signer_of(intent: ExecutionIntent) -> str:
    signable = encode_typed_data(
        domain_data=intent_domain(intent.vault), message_types=INTENT_TYPES, message_data=_typed(intent)
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
        domain_data=intent_domain(vault), message_types=INTENT_TYPES, message_data=_typed(stored)
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
                        vault=vault, policy=policy, allocation=ALLOCATION, actions=actions, deadline=deadline
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


# --- proposals -----------------------------------------------------------------------------------


def users(*names: str) -> list[Any]:
    return [User.objects.create_user(username=name) for name in names]


@pytest.mark.django_db
def test_proposals_are_numbered_prop_year_001_then_002() -> None:
    known_protocols()
    vault = make_vault()
    policy = make_policy(vault)
    proposer, alice, bob = users("proposer", "alice", "bob")
    year = timezone.now().year

    first = proposal_create(
        vault=vault, policy=policy, allocation=ALLOCATION, proposer=proposer, approvers=[alice, bob]
    )
    second = proposal_create(
        vault=vault, policy=policy, allocation=ALLOCATION, proposer=proposer, approvers=[alice], quorum=1
    )

    assert first.proposal_id == f"PROP-{year}-001"
    assert second.proposal_id == f"PROP-{year}-002"
    assert first.status == ProposalStatus.PENDING
    assert first.source == ProposalSource.OPERATOR
    assert first.quorum_required == 2  # the vault's default quorum
    assert set(first.approvers.all()) == {alice, bob}
    assert first.proposed_allocations == {"Aave USDC": "60", "Compound USDC": "40"}
    assert first.expires_at > timezone.now()


@pytest.mark.django_db
def test_a_proposal_without_approvers_given_takes_the_vaults_and_is_from_flow_a_without_a_proposer() -> None:
    known_protocols()
    vault = make_vault(approval_quorum=1)
    alice, bob = users("alice", "bob")
    vault.approvers.set([alice, bob])
    proposal = proposal_create(vault=vault, policy=make_policy(vault), allocation=ALLOCATION)
    assert set(proposal.approvers.all()) == {alice, bob}
    assert proposal.quorum_required == 1
    assert proposal.source == ProposalSource.FLOW_A
    assert proposal.proposer is None


@pytest.mark.django_db
def test_proposal_numbers_keep_counting_past_999_and_restart_each_year() -> None:
    known_protocols()
    vault = make_vault()
    policy = make_policy(vault)
    (alice,) = users("alice")
    year = timezone.now().year
    for proposal_id in (f"PROP-{year - 1}-1234", f"PROP-{year}-998", f"PROP-{year}-999"):
        RebalanceProposal.objects.create(
            proposal_id=proposal_id,
            vault=vault,
            quorum_required=1,
            proposed_allocations={},
            policy=policy,
            expires_at=timezone.now(),
        )
    created = [
        proposal_create(vault=vault, policy=policy, allocation=ALLOCATION, approvers=[alice], quorum=1).proposal_id
        for _ in range(3)
    ]
    assert created == [f"PROP-{year}-1000", f"PROP-{year}-1001", f"PROP-{year}-1002"]


@pytest.mark.django_db
@pytest.mark.parametrize("quorum", [0, 3])
def test_a_quorum_outside_1_to_the_number_of_approvers_is_refused(quorum: int) -> None:
    vault = make_vault()
    alice, bob = users("alice", "bob")
    with pytest.raises(ProposalInvalid, match="quorum"):
        proposal_create(
            vault=vault, policy=make_policy(vault), allocation=ALLOCATION, approvers=[alice, bob], quorum=quorum
        )
    assert not RebalanceProposal.objects.exists()


@pytest.mark.django_db
def test_a_proposer_among_the_approvers_is_refused() -> None:
    vault = make_vault()
    alice, bob = users("alice", "bob")
    with pytest.raises(ProposalInvalid, match="cannot approve their own"):
        proposal_create(
            vault=vault,
            policy=make_policy(vault),
            allocation=ALLOCATION,
            proposer=alice,
            approvers=[alice, bob],
            quorum=1,
        )
    assert not RebalanceProposal.objects.exists()


@pytest.mark.django_db
def test_a_proposal_without_any_approver_is_refused() -> None:
    vault = make_vault()
    policy = make_policy(vault)
    (proposer,) = users("proposer")
    with pytest.raises(ProposalInvalid, match="no designated approvers"):
        proposal_create(vault=vault, policy=policy, allocation=ALLOCATION, proposer=proposer, approvers=[])
    with pytest.raises(ProposalInvalid, match="no designated approvers"):
        proposal_create(vault=vault, policy=policy, allocation=ALLOCATION, proposer=proposer)  # the vault has none
    assert not RebalanceProposal.objects.exists()
