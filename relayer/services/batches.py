"""Relay batches: the pending requests of one signer on one chain, sent as one workflow run.

A lane kick (after a request commits) forms a batch of everything pending in that lane, up to
RELAYER_BATCH_SIZE. Under light load a batch holds one request and it goes out at once; under
load the requests that arrive while a batch is being sent wait for the next one, so batches
grow exactly when amortising the per-step costs matters.

Each request keeps its own phase, error and listeners: one request that reverts in simulation
or gets stuck fails alone. Only what stops the whole batch (the node unreachable, the signer
out of funds) is the run's failure, and then the run's retries, dead letter and replay apply
to every request still open in it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from orchestrator.bulk import rows_update
from orchestrator.celery import app as celery_app
from orchestrator.engine.services import workflow_start
from orchestrator.models import WorkflowRun
from orchestrator.observability import correlation
from relayer.models import RelayTransaction, TxPhase
from relayer.services.requests import FINISH_LISTENERS, LANE_TASK, RELAY_WORKFLOW, lane_kick

logger = logging.getLogger("relayer")

OPEN_PHASES = (TxPhase.PENDING, TxPhase.SUBMITTING, TxPhase.CONFIRMING)


def relay_batch_form(*, signer_id: int, chain_id: int) -> WorkflowRun | None:
    """Puts the lane's unbatched pending requests, oldest first, into a new batch run.

    SKIP LOCKED lets two kicks of one lane run at once: each takes rows the other has not, so
    no request is in two batches. Returns the run, or None when nothing was waiting."""
    limit = settings.RELAYER_BATCH_SIZE
    with transaction.atomic():
        rows = list(
            RelayTransaction.objects.select_for_update(skip_locked=True)
            .filter(signer_id=signer_id, chain_id=chain_id, phase=TxPhase.PENDING, workflow_run__isnull=True)
            .order_by("created_at", "id")
            .values_list("id", "correlation_id")[:limit]
        )
        if not rows:
            return None
        ids = [tx_id for tx_id, _ in rows]
        # A batch of one carries its request's correlation id, so a lone relay reads as one
        # story in the logs; a bigger batch gets its own and logs which requests it holds.
        run, _ = workflow_start(
            kind=RELAY_WORKFLOW,
            input={"signer": signer_id, "chain": chain_id, "size": len(ids)},
            idempotency_key=f"relay-batch:{ids[0]}",
            correlation_id=rows[0][1] if len(rows) == 1 else None,
        )
        RelayTransaction.objects.filter(pk__in=ids).update(workflow_run=run, updated_at=timezone.now())
        if len(ids) == limit:
            lane_kick(signer_id=signer_id, chain_id=chain_id)  # there may be more behind them
    for tx_id, cid in rows:
        with correlation(cid or "-"):
            logger.info("relay %s joins batch %s (%s requests)", tx_id, run.id, len(ids))
    return run


def relay_batches_orphaned(*, older_than: float) -> int:
    """Kicks every lane holding a request that no batch took within `older_than` seconds (its
    kick was lost: the broker was down at commit, or a worker died holding it). Returns how
    many lanes were kicked."""
    cutoff = timezone.now() - timedelta(seconds=older_than)
    lanes = (
        RelayTransaction.objects.filter(phase=TxPhase.PENDING, workflow_run__isnull=True, created_at__lt=cutoff)
        .values_list("signer_id", "chain_id")
        .distinct()
    )
    kicked = 0
    for signer_id, chain_id in lanes:
        celery_app.send_task(LANE_TASK, kwargs={"signer_id": signer_id, "chain_id": chain_id}, queue="relay")
        kicked += 1
    if kicked:
        logger.warning("relayer: %s lane(s) had requests no batch took; kicked again", kicked)
    return kicked


def batch_open(run_id: uuid.UUID) -> QuerySet[RelayTransaction]:
    """The batch's requests that are not finished, in the order their nonces are given."""
    return (
        RelayTransaction.objects.select_related("signer", "chain")
        .filter(workflow_run_id=run_id, phase__in=OPEN_PHASES)
        .order_by("created_at", "id")
    )


def relays_finish(txs: Iterable[RelayTransaction], *, phase: str, fields: Iterable[str] = ()) -> int:
    """Writes each request's final phase (and its `error` and any other `fields` already set on
    it) in one statement, and tells whoever asked for each after commit. Returns how many."""
    txs = list(txs)
    now = timezone.now()
    for tx in txs:
        tx.phase = phase
        tx.updated_at = now
        if phase == TxPhase.COMPLETED:
            tx.error = ""
    with transaction.atomic():
        rows_update(RelayTransaction, txs, ["phase", "error", "updated_at", *fields])
        for tx in txs:
            transaction.on_commit(partial(_tell_requester, tx.pk))
    for tx in txs:
        with correlation(tx.correlation_id or "-"):
            if phase == TxPhase.COMPLETED:
                logger.info("relay %s confirmed: %s in block %s", tx.id, tx.mined_hash, tx.block_number)
            else:
                logger.warning("relay %s %s: %s", tx.id, phase, tx.error)
    return len(txs)


def relay_fail(tx: RelayTransaction, error: str) -> None:
    tx.error = error
    relays_finish([tx], phase=TxPhase.FAILED)


def _tell_requester(tx_id: uuid.UUID) -> None:
    tx = RelayTransaction.objects.filter(pk=tx_id).first()
    listener = FINISH_LISTENERS.get(tx.requested_by_kind) if tx else None
    if tx is not None and listener is not None:
        listener(tx)


def batch_mirror(run: WorkflowRun, from_phase: str, to_phase: str) -> None:
    """When the batch run as a whole fails or is dead-lettered, so is every request still open
    in it (with the run's error); a replayed run puts them back in flight."""
    from orchestrator.models import Phase

    open_rows = RelayTransaction.objects.filter(workflow_run=run)
    if to_phase in (Phase.FAILED, Phase.DEAD_LETTER):
        phase = TxPhase.FAILED if to_phase == Phase.FAILED else TxPhase.DEAD_LETTER
        txs = list(open_rows.filter(phase__in=OPEN_PHASES))
        for tx in txs:
            tx.error = run.error
        relays_finish(txs, phase=phase)
    elif from_phase == Phase.DEAD_LETTER:
        # Replayed: those that had a nonce are confirming again; the others submitting.
        open_rows.filter(phase=TxPhase.DEAD_LETTER, nonce__isnull=False).update(
            phase=TxPhase.CONFIRMING, error="", updated_at=timezone.now()
        )
        open_rows.filter(phase=TxPhase.DEAD_LETTER).update(
            phase=TxPhase.SUBMITTING, error="", updated_at=timezone.now()
        )
