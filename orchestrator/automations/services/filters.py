"""FILTER triggers: one cursor per chain, eth_getLogs over confirmed blocks only.

Each poll reads the blocks after the cursor up to head - confirmations (at most the chain's
log-range cap), matches every active FILTER config's filter with eth_getLogs itself (so topics
follow eth_getLogs semantics exactly), and fires each matched log once per subscription
(unique key: subscription + tx hash + log index).

Reorgs: a log in a block that is reorged away before it is confirmed is never read, so it
never fires; if its transaction is mined again, the log is read in its new block and fires
then, once. A reorg deeper than the confirmation depth is noticed when the cursor's block hash
changes: the cursor rewinds AUTOMATION_REORG_REWIND_BLOCKS and rescans; logs already fired
keep their firing (their keys exist), logs that came back in new positions fire.

No transaction is held across RPC calls: the poll reads the chain first, then advances the
cursor with a compare-and-set, so of two pollers (two beats) only one records a range."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from web3 import Web3

from orchestrator.automations.models import (
    ConfigStatus,
    Firing,
    LogCursor,
    SourceType,
    Subscription,
    SubscriptionStatus,
)
from orchestrator.automations.services.firings import (
    Deliver,
    HmacKeys,
    deliver_after_commit,
    firing_new,
    handoff_prepare,
)
from orchestrator.infra.bulk import rows_update
from relayer.models import Chain
from relayer.rpc import web3_for

logger = logging.getLogger("orchestrator.automations")


def filter_subscriptions(chain_id: int) -> list[Subscription]:
    return list(
        Subscription.objects.select_related("config__executor", "config__executor_key")
        .filter(
            status=SubscriptionStatus.ACTIVE,
            config__status=ConfigStatus.ACTIVE,
            config__source_type=SourceType.FILTER,
            config__filter__chainId=chain_id,
        )
        .order_by("created_at")
    )


def filter_start_block(chain_id: int, from_block: int | str) -> int | None:
    """Where a new FILTER subscription starts: the filter's block number, or for "latest" the
    block after the current head (None when the chain is unknown or does not answer: the
    poller then starts it at its cursor)."""
    if isinstance(from_block, int):
        return from_block
    chain = Chain.objects.filter(chain_id=chain_id, enabled=True).first()
    if chain is None:
        return None
    try:
        return int(web3_for(chain.rpc_url).eth.block_number) + 1
    except Exception:  # the node is down: the poller's cursor is a fine start
        logger.warning("chain %s did not answer; subscription starts at the poller's cursor", chain_id)
        return None


def _rpc(w3: Web3, method: str, *params: Any) -> Any:
    """Raw JSON-RPC: logs are stored exactly as eth_getLogs returns them."""
    response = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    if "error" in response:
        raise RuntimeError(f"{method}: {response['error']}")
    return response["result"]


def _block_hash(w3: Web3, number: int) -> str:
    block = _rpc(w3, "eth_getBlockByNumber", hex(number), False)
    return str(block["hash"]) if block else ""


def logs_poll(*, chain: Chain, deliver: Deliver) -> int:
    """One poll of one chain; returns how many firings it created."""
    subs = filter_subscriptions(chain.chain_id)
    if not subs:
        return 0
    w3 = web3_for(chain.rpc_url)
    head = int(_rpc(w3, "eth_blockNumber"), 16)
    safe = head - chain.confirmations
    starts = [s.from_block for s in subs if s.from_block is not None]
    initial = (min(starts) - 1) if starts else safe
    cursor, _ = LogCursor.objects.get_or_create(chain=chain, defaults={"block_number": max(initial, 0)})
    if cursor.block_hash and _block_hash(w3, cursor.block_number) != cursor.block_hash:
        rewound = max(cursor.block_number - settings.AUTOMATION_REORG_REWIND_BLOCKS, 0)
        logger.warning("chain %s: block %d changed (reorg); rescanning from %d", chain, cursor.block_number, rewound)
        _cursor_move(cursor, rewound, "")
        return 0
    start = cursor.block_number + 1
    end = min(safe, start + chain.log_range_cap - 1)
    if end < start:
        return 0
    by_config: dict[uuid.UUID, list[Subscription]] = defaultdict(list)
    for sub in subs:
        by_config[sub.config_id].append(sub)
    matched: list[tuple[dict[str, Any], list[Subscription]]] = []
    for config_subs in by_config.values():
        wanted = config_subs[0].config.filter or {}
        logs = _rpc(
            w3,
            "eth_getLogs",
            {"fromBlock": hex(start), "toBlock": hex(end), "address": wanted["address"], "topics": wanted["topics"]},
        )
        matched.extend((log, config_subs) for log in logs if not log.get("removed"))
    end_hash = _block_hash(w3, end)
    return _record(chain, cursor, end, end_hash, matched, deliver)


def _cursor_move(cursor: LogCursor, number: int, block_hash: str) -> bool:
    """Compare-and-set: false when another poller moved the cursor meanwhile."""
    return bool(
        LogCursor.objects.filter(pk=cursor.pk, block_number=cursor.block_number, block_hash=cursor.block_hash).update(
            block_number=number, block_hash=block_hash, updated_at=timezone.now()
        )
    )


def _record(
    chain: Chain,
    cursor: LogCursor,
    end: int,
    end_hash: str,
    matched: list[tuple[dict[str, Any], list[Subscription]]],
    deliver: Deliver,
) -> int:
    now, keys = timezone.now(), HmacKeys()
    candidates = []
    for log, config_subs in matched:
        for sub in config_subs:
            if sub.from_block is None or int(log["blockNumber"], 16) >= sub.from_block:
                candidates.append((f"{sub.id}:filter:{log['transactionHash']}:{int(log['logIndex'], 16)}", log, sub))
    with transaction.atomic():
        if not _cursor_move(cursor, end, end_hash):
            return 0
        seen = set(Firing.objects.filter(key__in=[c[0] for c in candidates]).values_list("key", flat=True))
        fresh = [c for c in candidates if c[0] not in seen]
        locked = {
            s.pk: s
            for s in Subscription.objects.select_for_update(of=("self",))
            .select_related("config__executor", "config__executor_key")
            .filter(pk__in={c[2].pk for c in fresh}, status=SubscriptionStatus.ACTIVE)
        }
        firings = [
            firing_new(
                subscription=locked[sub.pk],
                trigger_type=SourceType.FILTER,
                trigger_data=log,
                key=key,
                due_at=now,
                hmac_key=keys(locked[sub.pk].config),
                now=now,
            )
            for key, log, sub in fresh
            if sub.pk in locked
        ]
        handoff = handoff_prepare(firings, now)
        Firing.objects.bulk_create(firings)
        rows_update(Subscription, list(locked.values()), ["execution_count", "prev_execution_at", "prev_execution_id"])
        deliver_after_commit(handoff, deliver)
    if firings:
        logger.info("chain %s: %d log firings up to block %d", chain, len(firings), end)
    return len(firings)
