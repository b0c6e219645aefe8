"""Which proposals a user sees and has to decide."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from approvals.models import ProposalStatus, RebalanceProposal
from vaults.selectors import vaults_visible_to

OPERATORS_GROUP = "Operators"
APPROVERS_GROUP = "Approvers"


def is_operator(user: Any) -> bool:
    return bool(user.is_superuser or user.groups.filter(name=OPERATORS_GROUP).exists())


def proposals_visible_to(*, user: Any) -> QuerySet[RebalanceProposal]:
    """Operators see every proposal; anyone else those they proposed or must decide. Both only
    on the vaults they may read (`vaults_visible_to`: staff every vault, an API client the
    vaults granted to it), so an operator's token is scoped like any other client's."""
    proposals = RebalanceProposal.objects.select_related("vault", "policy", "proposer")
    if not user.is_staff:
        proposals = proposals.filter(vault__in=vaults_visible_to(user=user).values("pk"))
    if is_operator(user):
        return proposals
    return proposals.filter(Q(proposer=user) | Q(approvers=user)).distinct()


def proposals_waiting_for(*, user: Any) -> QuerySet[RebalanceProposal]:
    """Pending proposals the user is designated on and has not decided yet."""
    return (
        RebalanceProposal.objects.filter(status=ProposalStatus.PENDING, approvers=user)
        .exclude(approvals__approver=user)
        .select_related("vault")
        .distinct()
    )
