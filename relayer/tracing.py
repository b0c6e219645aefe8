"""Spans for the relay batch's phases: relay/simulate, relay/sign, relay/broadcast, relay/confirm.

Each runs inside its workflow step's span (orchestrator/engine/services/recording.py) and names
what the step acted on: the batch's requests, their chain, their correlation ids and, once
signed, their transaction hashes. The lookups run only while a span is being recorded: with
tracing off a phase costs one function call."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from orchestrator.engine import StepContext
from orchestrator.infra.tracing import span, tracing_on
from relayer.models import RelayTransaction

Phase = Callable[[StepContext], Any]


def relay_phase(name: str, fn: Phase) -> Phase:
    """`fn` with a `relay/<name>` span around it."""

    @functools.wraps(fn)
    def traced(ctx: StepContext) -> Any:
        if not tracing_on():
            return fn(ctx)
        with span(f"relay/{name}", attributes={"relayer.batch_run_id": str(ctx.run_id)}) as current:
            current.set_attributes(_batch_attributes(ctx, hashes=False))
            result = fn(ctx)
            # Signing gives the hashes; a phase that raised leaves them to the exception.
            current.set_attributes(_batch_attributes(ctx, hashes=True))
            return result

    return traced


def _batch_attributes(ctx: StepContext, *, hashes: bool) -> dict[str, Any]:
    rows = list(
        RelayTransaction.objects.filter(workflow_run_id=ctx.run_id)
        .order_by("created_at", "id")
        .values_list("id", "chain_id", "tx_hash", "correlation_id")
    )
    if hashes:
        return {"relayer.tx_hashes": [tx_hash for _, _, tx_hash, _ in rows if tx_hash]}
    attributes: dict[str, Any] = {
        "relayer.request_ids": [str(pk) for pk, _, _, _ in rows],
        "relayer.correlation_ids": sorted({cid for _, _, _, cid in rows if cid}),
    }
    if rows:
        attributes["relayer.chain_id"] = int(rows[0][1])
    return attributes
