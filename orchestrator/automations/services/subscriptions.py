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
from orchestrator.automations.services.module_route import module_subscription_refusal, validator_key
from orchestrator.infra.errors import DomainError
from relayer.models import Chain
from relayer.rpc import TRANSPORT_ERRORS, web3_for

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
    module_address: str = "",
) -> Subscription:
    """Needs an active config for the registry (422 no_active_config). An INTERVAL subscription
    is first due one interval from now; a FILTER one matches logs from its filter's fromBlock
    ("latest": the block after the current head). With `module_address` the sub-account is a
    Safe whose tasks run through that policy module: it must be a VaultPolicyModule of that Safe,
    enabled by it (400 invalid otherwise), read on chain before anything is written."""
    if config is None or config.status != ConfigStatus.ACTIVE:
        raise NoActiveConfig()
    if module_address:
        _module_verify(chain_id=chain_id, safe=to_checksum_address(sub_account_address), module=module_address)
        validator_key()  # made now, so the subscription can name it for setValidator
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
        module_address=to_checksum_address(module_address) if module_address else "",
        next_run_at=(now + timedelta(seconds=config.interval_seconds or 0))
        if config.source_type == SourceType.INTERVAL
        else None,
    )


def _module_verify(*, chain_id: int, safe: str, module: str) -> None:
    chain = Chain.objects.filter(chain_id=chain_id, enabled=True).first()
    if chain is None:  # the body's chainId is a served chain: this is a race with its removal
        raise DomainError(f"Chain {chain_id} is not served here.", code="invalid", fields={"chainId": "Not served."})
    try:
        refused = module_subscription_refusal(web3_for(chain.rpc_url), safe=safe, module=to_checksum_address(module))
    except TRANSPORT_ERRORS as exc:
        raise DomainError(
            f"Chain {chain_id} did not answer while reading the module: {exc}"[:300],
            code="chain_unavailable",
            http_status=503,
        ) from exc
    if refused is not None:
        raise DomainError("Invalid request.", code="invalid", fields={"moduleAddress": refused})


def subscription_cancel(*, subscription: Subscription) -> Subscription:
    """Stops its triggers at once: the dispatcher only claims active rows, under a row lock."""
    with transaction.atomic():
        locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
        if locked.status == SubscriptionStatus.ACTIVE:
            locked.status, locked.cancelled_at, locked.next_run_at = SubscriptionStatus.CANCELLED, timezone.now(), None
            locked.save(update_fields=["status", "cancelled_at", "next_run_at"])
    return locked
