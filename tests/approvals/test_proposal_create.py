"""Proposal creation: numbering, the vault's approvers and quorum, and what is refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from approvals.models import ProposalSource, ProposalStatus, RebalanceProposal
from approvals.services import ProposalInvalid, proposal_create
from tests.support.vaults import make_policy, make_protocol, make_vault

User = get_user_model()


ALLOCATION = {"Aave USDC": Decimal(60), "Compound USDC": Decimal(40)}


def known_protocols() -> None:
    """Proposals only name protocols of the vault's chain."""
    for name in ALLOCATION:
        make_protocol(name)


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
@pytest.mark.parametrize("pct", ["\u0666\u0660", "6_0", " 60", "6e1", "+60"], ids=["Arabic-Indic", "_", " ", "e", "+"])
def test_a_percentage_not_written_in_plain_ascii_digits_is_refused(pct: str) -> None:
    vault = make_vault()
    known_protocols()
    (alice,) = users("alice")
    with pytest.raises(ProposalInvalid, match="ASCII digits"):
        proposal_create(
            vault=vault,
            policy=make_policy(vault),
            allocation={"Aave USDC": pct, "Compound USDC": "40"},
            approvers=[alice],
            quorum=1,
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
