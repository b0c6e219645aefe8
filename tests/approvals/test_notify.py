"""Notifications leave the request: a decision enqueues its e-mails after commit and returns; a
worker sends them, and retries while the mail server is down."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from approvals.models import ProposalStatus, RebalanceProposal
from approvals.services import proposal_reject
from tests.conftest import Workers, wait_until
from tests.factories import VaultFactory, VaultPolicyFactory
from tests.support import control
from tests.support.mail import GATED_BACKEND, MAIL_REFUSED, MAIL_UP, SLOW_BACKEND, mails, worker_mail_env

pytestmark = pytest.mark.django_db(transaction=True)
User = get_user_model()


def pending_proposal() -> tuple[RebalanceProposal, list[Any]]:
    operator, *approvers = (
        User.objects.create_user(n, email=f"{n}@example.test", password="pw") for n in ("operator", "a1", "a2", "a3")
    )
    vault = VaultFactory.create()
    proposal = RebalanceProposal.objects.create(
        proposal_id="PROP-NOTIFY-1",
        vault=vault,
        proposer=operator,
        quorum_required=2,
        proposed_allocations={"Aave USDC": "100"},
        policy=VaultPolicyFactory.create(vault=vault),
        expires_at=timezone.now() + timedelta(hours=1),
    )
    proposal.approvers.set(approvers)
    return proposal, approvers


def reject_until_closed(proposal: RebalanceProposal, approvers: list[Any]) -> float:
    """Two rejections of a 2-of-3 proposal: the second closes it and tells the proposer."""
    started = time.monotonic()
    proposal_reject(proposal=proposal, approver=approvers[0])
    closed = proposal_reject(proposal=proposal, approver=approvers[1])
    elapsed = time.monotonic() - started
    assert closed.status == ProposalStatus.REJECTED
    return elapsed


def test_a_decision_does_not_wait_for_a_slow_mail_server(workers: Workers, settings: Any, tmp_path: Path) -> None:
    # Here too the backend takes 3 s a message: sent in the request, the decision would wait for it.
    settings.EMAIL_BACKEND = SLOW_BACKEND
    settings.EMAIL_FILE_PATH = str(tmp_path / "request")
    outbox = tmp_path / "worker"
    workers.start(extra_env={**worker_mail_env(outbox, SLOW_BACKEND), "TEST_MAIL_DELAY_SECONDS": "2"})
    proposal, approvers = pending_proposal()

    elapsed = reject_until_closed(proposal, approvers)

    assert elapsed < 1.5, f"the decision took {elapsed:.2f} s"
    sent = wait_until(lambda: mails(outbox), timeout=30, message="the worker's e-mail")
    assert [(m["To"], m["Subject"]) for m in sent] == [("operator@example.test", "PROP-NOTIFY-1 is rejected")]
    assert not (tmp_path / "request").exists()


def test_an_e_mail_the_server_refuses_is_sent_once_it_is_back(workers: Workers, tmp_path: Path) -> None:
    workers.start(extra_env=worker_mail_env(tmp_path, GATED_BACKEND))
    proposal, approvers = pending_proposal()

    assert reject_until_closed(proposal, approvers) < 1.5
    wait_until(lambda: control.count(MAIL_REFUSED) >= 2, timeout=30, message="the task to try twice")
    assert mails(tmp_path) == []
    control.signal(MAIL_UP)

    wait_until(lambda: mails(tmp_path), timeout=30, message="the e-mail once the server is back")
    time.sleep(1)
    assert [(m["To"], m["Subject"]) for m in mails(tmp_path)] == [
        ("operator@example.test", "PROP-NOTIFY-1 is rejected")
    ]
