"""Chains: the local one is seeded from the environment; others are added in the admin."""

from __future__ import annotations

from django.conf import settings

from relayer.models import ANVIL_CHAIN_ID, Chain


def chain_seed_from_env(*, overwrite: bool) -> Chain:
    """Creates the chain CHAIN_ID at CHAIN_RPC_URL. With overwrite, also resets an existing row
    to the environment's values (an admin's edits are otherwise kept across migrations)."""
    values = {
        "name": settings.CHAIN_NAME,
        "rpc_url": settings.CHAIN_RPC_URL,
        "confirmations": settings.CHAIN_CONFIRMATIONS,
        "poll_interval": settings.CHAIN_POLL_SECONDS,
        "stuck_after": settings.CHAIN_STUCK_SECONDS,
    }
    if settings.CHAIN_ID == ANVIL_CHAIN_ID:
        # Only ever set, never cleared: an admin who marked another CHAIN_ID as development keeps it.
        values["is_development"] = True
    if overwrite:
        chain, _ = Chain.objects.update_or_create(chain_id=settings.CHAIN_ID, defaults=values)
    else:
        chain, _ = Chain.objects.get_or_create(chain_id=settings.CHAIN_ID, defaults=values)
    return chain


def served_chain_ids() -> list[int]:
    """The chains this deployment serves (enabled rows): the only ones a subscription or a
    FILTER config may name."""
    return list(Chain.objects.filter(enabled=True).order_by("chain_id").values_list("chain_id", flat=True))
