"""Starting Flow A (automated rebalance) runs: when a feed arrives, and from beat."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from orchestrator.engine.models import WorkflowRun
from orchestrator.engine.services import workflow_start
from vaults.models import PolicyStatus, SignedFeed, Vault, VaultPolicy

REBALANCE_WORKFLOW = "vault.rebalance"


def rebalance_start(
    *, vault: Vault, feed: SignedFeed, correlation_id: str | None = None, new_feed: bool = False
) -> tuple[WorkflowRun, bool]:
    """One run per (vault, feed): a feed seen twice, or beat and the feed's arrival racing,
    start nothing more. Returns (run, created). `new_feed`: the feed was stored in this
    transaction, so no run can have its key yet."""
    return workflow_start(
        kind=REBALANCE_WORKFLOW,
        input={"vault": vault.pk, "feed": str(feed.id)},
        idempotency_key=f"flow-a:{vault.pk}:{feed.id}",
        correlation_id=correlation_id,
        new_key=new_feed,
    )


def rebalances_start_for_feed(*, feed: SignedFeed) -> list[WorkflowRun]:
    """Flow A for every auto-rebalancing vault whose active policy trusts the feed's oracle.
    The feed is new: this runs in the transaction that stored it."""
    # Only the vaults' ids: rebalance_start needs nothing else, and this runs on every feed.
    vaults = Vault.objects.filter(
        auto_rebalance=True, policies__status=PolicyStatus.ACTIVE, policies__oracles=feed.oracle_id
    ).only("pk")
    return [rebalance_start(vault=vault, feed=feed, new_feed=True)[0] for vault in vaults]


def rebalances_dispatch(*, now: datetime | None = None) -> int:
    """Beat's pass: each auto-rebalancing vault gets a run for its newest usable feed (one its
    policy trusts and is young enough). Returns how many runs were new."""
    now = now or timezone.now()
    started = 0
    policies = VaultPolicy.objects.filter(status=PolicyStatus.ACTIVE, vault__auto_rebalance=True).select_related(
        "vault"
    )
    for policy in policies:
        feed = (
            SignedFeed.objects.filter(
                oracle__in=policy.oracles.filter(active=True),
                timestamp__gte=now - timedelta(seconds=policy.max_feed_age_seconds),
            )
            .order_by("-timestamp")
            .first()
        )
        if feed is None:
            continue
        _, created = rebalance_start(vault=policy.vault, feed=feed)
        started += created
    return started
