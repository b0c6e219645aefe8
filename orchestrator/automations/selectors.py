"""Reads for the automation API."""

from __future__ import annotations

from orchestrator.automations.models import Firing, Subscription


def subscription_logs(*, subscription: Subscription, offset: int, limit: int) -> list[Firing]:
    """One page of the execution log, newest first (index firing_log_idx)."""
    page = list(
        Firing.objects.filter(subscription=subscription).order_by("-created_at", "-id")[offset : offset + limit]
    )
    for firing in page:
        firing.subscription = subscription  # the entries all belong to it: no join per row
    return page
