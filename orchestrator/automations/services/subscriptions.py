"""Subscriptions: an account subscribed to a config's trigger."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone
from eth_utils import to_checksum_address

from orchestrator.automations.errors import NoActiveConfig
from orchestrator.automations.models import (
    AutomationConfig,
    ConfigStatus,
    SourceType,
    Subscription,
    SubscriptionStatus,
)
from orchestrator.automations.services.filters import filter_start_block

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def subscription_create(
    *,
    owner: User,
    config: AutomationConfig | None,
    chain_id: int,
    sub_account_address: str,
    token_inputs: dict[str, str],
    token_limits: dict[str, str],
    metadata: dict[str, Any],
    fee_token: str,
    fee_amount: str,
) -> Subscription:
    """Needs an active config for the registry (422 no_active_config). An INTERVAL subscription
    is first due one interval from now; a FILTER one matches logs from its filter's fromBlock
    ("latest": the block after the current head)."""
    if config is None or config.status != ConfigStatus.ACTIVE:
        raise NoActiveConfig()
    now = timezone.now()
    from_block = None
    if config.source_type == SourceType.FILTER and config.filter:
        from_block = filter_start_block(config.filter["chainId"], config.filter.get("fromBlock", "latest"))
    return Subscription.objects.create(
        from_block=from_block,
        owner=owner,
        config=config,
        chain_id=chain_id,
        sub_account_address=to_checksum_address(sub_account_address),
        token_inputs={to_checksum_address(k): v for k, v in token_inputs.items()},
        token_limits={to_checksum_address(k): v for k, v in token_limits.items()},
        metadata=metadata,
        fee_token=to_checksum_address(fee_token) if fee_token else "",
        fee_amount=fee_amount,
        next_run_at=(now + timedelta(seconds=config.interval_seconds or 0))
        if config.source_type == SourceType.INTERVAL
        else None,
    )


def subscription_cancel(*, subscription: Subscription) -> Subscription:
    """Stops its triggers at once: the dispatcher only claims active rows, under a row lock."""
    with transaction.atomic():
        locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
        if locked.status == SubscriptionStatus.ACTIVE:
            locked.status, locked.cancelled_at, locked.next_run_at = SubscriptionStatus.CANCELLED, timezone.now(), None
            locked.save(update_fields=["status", "cancelled_at", "next_run_at"])
    return locked
