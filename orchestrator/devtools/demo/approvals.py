"""The approvers `make run` brings up: three staff users in the Approvers group, designated on
the demo vault, and a proposal that waits for two of them, so Flow B can be tried at once."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from approvals.models import ProposalStatus, RebalanceProposal
from approvals.selectors import APPROVERS_GROUP
from approvals.services import proposal_create
from vaults.models import Vault

DEMO_APPROVERS = ("approver1", "approver2", "approver3")
DEMO_QUORUM = 2
DEMO_ALLOCATION = {"Aave USDC": "50", "Compound USDC": "30", "Morpho USDC": "20"}


@dataclass(frozen=True)
class DemoApprovers:
    # username -> its new password, or None for a user that existed (its password is unchanged)
    passwords: dict[str, str | None]
    proposal: RebalanceProposal
    proposal_created: bool


def demo_approvers_setup(*, vault: Vault, proposer: Any) -> DemoApprovers:
    """Creates the missing approvers (random passwords, returned once), designates all three on
    the vault, and proposes a rebalance for them unless one of theirs is pending already.

    Raises ProposalInvalid if the vault cannot take a proposal (no active policy)."""
    users = get_user_model().objects
    group, _ = Group.objects.get_or_create(name=APPROVERS_GROUP)
    approvers, passwords = [], {}
    for username in DEMO_APPROVERS:
        user = users.filter(username=username).first()
        password: str | None = None
        if user is None:
            # Random and shown once, like the admin's: a fixed one would end up on a reachable host.
            password = secrets.token_urlsafe(12)
            user = users.create_user(username, password=password, is_staff=True)
        user.groups.add(group)
        approvers.append(user)
        passwords[username] = password
    vault.approvers.add(*approvers)
    pending = (
        RebalanceProposal.objects.filter(vault=vault, status=ProposalStatus.PENDING, approvers__in=approvers)
        .distinct()
        .first()
    )
    if pending is not None:
        return DemoApprovers(passwords, pending, proposal_created=False)
    proposal = proposal_create(
        vault=vault, allocation=DEMO_ALLOCATION, proposer=proposer, approvers=approvers, quorum=DEMO_QUORUM
    )
    return DemoApprovers(passwords, proposal, proposal_created=True)
