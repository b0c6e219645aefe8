"""Reads for the automation API."""

from __future__ import annotations

from django.db.models import QuerySet

from orchestrator.automations.models import Firing, Subscription
from relayer.models import KeyPurpose, SigningKey

# The orchestrator's one validator key for tasks through Safe policy modules (services/module_route.py).
VALIDATOR_LABEL = "automation validator"


def subscription_logs(*, subscription: Subscription, offset: int, limit: int) -> list[Firing]:
    """One page of the execution log, newest first (index firing_log_idx)."""
    page = list(
        Firing.objects.filter(subscription=subscription).order_by("-created_at", "-id")[offset : offset + limit]
    )
    for firing in page:
        firing.subscription = subscription  # the entries all belong to it: no join per row
    return page


def validator_keys() -> QuerySet[SigningKey]:
    """The validator key first made (there is one; the oldest wins should there be more)."""
    return SigningKey.objects.filter(purpose=KeyPurpose.VALIDATOR, label=VALIDATOR_LABEL).order_by("created_at", "pk")


def validator_address() -> str | None:
    """The address Safe owners register with their module's setValidator, None until made."""
    return validator_keys().values_list("address", flat=True).first()
