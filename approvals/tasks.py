"""Thin beat task for approvals."""

from __future__ import annotations

from celery import shared_task

from approvals.services import proposals_expire


@shared_task(name="approvals.expire", ignore_result=True, expires=60)
def expire_proposals() -> dict[str, int]:
    return {"expired": proposals_expire()}
