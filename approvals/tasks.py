"""Thin tasks for approvals: beat's expiry sweep, and sending one notification e-mail."""

from __future__ import annotations

import smtplib

from celery import shared_task
from django.conf import settings

from approvals.lifecycle import notification_send
from approvals.services import proposals_expire


@shared_task(name="approvals.expire", ignore_result=True, expires=60)
def expire_proposals() -> dict[str, int]:
    return {"expired": proposals_expire()}


# A mail server that is down or refuses for a while is tried again with backoff (2 s, 4 s, ...,
# at most 5 min apart, NOTIFY_MAX_ATTEMPTS in all); then the task fails and the worker logs it.
@shared_task(
    name="approvals.notify",
    ignore_result=True,
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=settings.NOTIFY_MAX_ATTEMPTS - 1,
    acks_late=True,
)
def send_notification(subject: str, body: str, recipient: str) -> None:
    notification_send(subject=subject, body=body, recipient=recipient)
