"""What happens around a proposal's status: e-mail after commit, closing it (approved,
rejected, expired) and telling its proposer."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from approvals.models import ProposalStatus, RebalanceProposal
from orchestrator.celery import app as celery_app
from vaults.models import SafeTransaction, SafeTxStatus

logger = logging.getLogger("approvals")

NOTIFY_TASK = "approvals.notify"


def notify(users: list[Any], subject: str, body: str) -> None:
    """Enqueues one e-mail per user after commit, so nobody is told about a decision that rolled
    back, and the request or step that decided never waits for the mail server: a worker sends
    it (approvals.tasks.send_notification), retrying while the server is down."""
    recipients = [u.email for u in users if u.email]

    def enqueue() -> None:
        for recipient in recipients:
            celery_app.send_task(NOTIFY_TASK, args=[subject, body, recipient], queue="workflows")

    if recipients:
        transaction.on_commit(enqueue)
    logger.info("notify %s: %s", ", ".join(u.get_username() for u in users) or "nobody", subject)


def notification_send(*, subject: str, body: str, recipient: str) -> None:
    """Sends one notification e-mail now. Raises what the mail backend raises (SMTPException,
    OSError) so that the task retries."""
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [recipient], fail_silently=False)


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
