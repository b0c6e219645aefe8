"""What happens around a proposal's status: e-mail after commit, closing it (approved,
rejected, expired) and telling its proposer."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.mail import send_mass_mail
from django.db import transaction
from django.utils import timezone

from approvals.models import ProposalStatus, RebalanceProposal
from vaults.models import SafeTransaction, SafeTxStatus

logger = logging.getLogger("approvals")


def notify(users: list[Any], subject: str, body: str) -> None:
    """E-mail after commit, so nobody is told about a decision that rolled back."""
    messages = [(subject, body, settings.DEFAULT_FROM_EMAIL, [u.email]) for u in users if u.email]
    if messages:
        transaction.on_commit(lambda: send_mass_mail(messages, fail_silently=True))
    logger.info("notify %s: %s", ", ".join(u.get_username() for u in users) or "nobody", subject)


def proposal_link(proposal: RebalanceProposal) -> str:
    return f"{settings.PUBLIC_BASE_URL}/admin/approvals/rebalanceproposal/{proposal.pk}/change/"


def proposal_close(proposal: RebalanceProposal, status: str, why: str) -> None:
    proposal.status = status
    proposal.decided_at = timezone.now()
    proposal.save(update_fields=["status", "decided_at"])
    if status in (ProposalStatus.EXPIRED, ProposalStatus.CANCELLED):
        # A Safe vault's proposal frees its nonce for the next proposal; signatures already given
        # stay stored but no longer count here (docs/flow-b.md#safe-vaults).
        SafeTransaction.objects.filter(proposal_id=proposal.proposal_id, status=SafeTxStatus.SIGNING).update(
            status=SafeTxStatus.VOID, error=f"{proposal.proposal_id} is {status}: its nonce is free again"
        )
    if proposal.proposer is not None:
        notify([proposal.proposer], f"{proposal.proposal_id} is {status}", f"{why}: {proposal_link(proposal)}")


def proposal_expire_if_due(proposal: RebalanceProposal) -> None:
    """A pending proposal past its expiry becomes expired now (the caller holds its row lock),
    rather than waiting for beat's sweep."""
    if proposal.status == ProposalStatus.PENDING and proposal.expires_at <= timezone.now():
        proposal_close(proposal, ProposalStatus.EXPIRED, "expired before this decision")
