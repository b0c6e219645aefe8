"""The transaction id of the run that asked for a relay.

A workflow run's status read returns its transaction id (docs/api.md, "Workflow runs"): the
hash of the newest transaction it asked the relayer for, the highest nonce of its requests,
written as soon as that transaction is signed, again when a fee bump replaces it, and once more
with the hash that mined. The relayer writes it, never the engine: the engine saves a run's
state from the copy a step loaded (orchestrator/engine/services/dispatch.py, RUN_STATE_FIELDS
leaves transaction_id out), and that copy may be older than the hash."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import OuterRef, Subquery, Value
from django.db.models.functions import Coalesce, NullIf

from orchestrator.engine.models import WorkflowRun
from relayer.models import RelayTransaction


def requester_runs_note(txs: Iterable[RelayTransaction]) -> int:
    """Sets the transaction id of each run that asked for one of `txs` to its newest hash.
    One UPDATE whatever the number of runs; returns how many runs it wrote."""
    run_ids = {tx.requester_run_id for tx in txs if tx.requester_run_id is not None}
    if not run_ids:
        return 0
    newest = (
        RelayTransaction.objects.filter(requester_run=OuterRef("pk"))
        .exclude(tx_hash="")
        .order_by("-nonce", "-created_at")
        .annotate(hash=Coalesce(NullIf("mined_hash", Value("")), "tx_hash"))
        .values("hash")[:1]
    )
    return WorkflowRun.objects.filter(pk__in=run_ids).update(transaction_id=Coalesce(Subquery(newest), Value("")))
