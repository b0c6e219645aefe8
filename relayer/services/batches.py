"""Relay batches: the pending requests on one chain, from any of its signers, sent as one
workflow run. Nonces stay serialized per (signer, chain): the batch's sign step takes each
signer's nonces under that signer's cursor lock.

A lane (one per chain) is kicked after each request commits. The kick forms a batch of
everything pending on the chain, up to RELAYER_BATCH_SIZE, unless the lane already has a batch
at work that has not signed yet: that batch kicks the lane again once its nonces are taken
(or it failed). So a chain has one batch being simulated and signed at a time, and the next
one forms while the last one broadcasts and confirms. The kick also runs the new batch's
first step itself rather than waiting for the step's message (two broker hops were a third
of a batch's time under load). Under light load a batch holds one request and it goes out
at once; under load the requests that arrive while a batch is being sent wait for the next
one, so batches grow exactly when amortising the per-step costs matters. (Measured: with a
batch per kick, 4 workers sent batches of 1 to 7 requests that waited on each other's nonce
lock; with a lane per signer, 10 signers made 10 small batches where one big one would do.)

Each request keeps its own phase, error and listeners: one request that reverts in simulation
or gets stuck fails alone, and the requests of a signer that cannot pay are split off into a
batch of their own that retries on its own. Only what stops the whole batch (the node
unreachable) is the run's failure, and then the run's retries, dead letter and replay apply to
every request still open in it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from orchestrator.celery import app as celery_app
from orchestrator.engine import StepContext
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import step_execute, workflow_start
from orchestrator.infra.bulk import rows_update
from orchestrator.infra.observability import correlation
from relayer.models import RelayTransaction, TxPhase
from relayer.services.lanes import (
    LANE_TASK,
    lane_kick,
    lane_kick_due_started,
    lane_kick_holding,
    lane_kick_later,
    lane_kick_started,
    lane_pace,
)
from relayer.services.requesters import requester_runs_note
from relayer.services.requests import FINISH_LISTENERS, RELAY_WORKFLOW

logger = logging.getLogger("relayer")

OPEN_PHASES = (TxPhase.PENDING, TxPhase.SUBMITTING, TxPhase.CONFIRMING)


def relay_batch_form(*, chain_id: int, paced: bool = False) -> WorkflowRun | None:
    """Puts the chain's unbatched pending requests, oldest first, into a new batch run.

    SKIP LOCKED lets two kicks of one lane run at once: each takes rows the other has not, so
    no request is in two batches. Returns the run, or None when nothing was waiting or the
    lane is busy (its batch at work kicks again when it has signed).

    `paced` (a lane kick): not within RELAYER_BATCH_INTERVAL_SECONDS of the lane's last batch;
    the kick is sent again for when the interval is over (lanes.lane_pace)."""
    lane_kick_holding(chain_id=chain_id)
    limit = settings.RELAYER_BATCH_SIZE
    unsigned = RelayTransaction.objects.filter(
        chain_id=chain_id, phase__in=(TxPhase.PENDING, TxPhase.SUBMITTING), nonce__isnull=True
    )
    # Only a batch at work holds the lane: not one waiting out a retry backoff (attempts > 0),
    # not one split off for signers that cannot pay, and not one formed longer ago than
    # RELAYER_LANE_HOLD_SECONDS (a batch signs within a second; one that has not by then lost
    # its worker, or its node is slow, and the lane must not wait for the sweep).
    at_work = unsigned.filter(
        workflow_run__phase=Phase.SUBMITTING,
        workflow_run__attempts=0,
        workflow_run__created_at__gt=timezone.now() - timedelta(seconds=settings.RELAYER_LANE_HOLD_SECONDS),
    )
    if at_work.exclude(workflow_run__input__has_key="split").exists():
        return None  # the flag stays set: that batch kicks the lane when it has signed
    if paced and (wait := lane_pace(chain_id=chain_id)) > 0:
        lane_kick_later(chain_id=chain_id, seconds=wait)
        logger.debug("relay lane %s: next batch in %.3f s", chain_id, wait)
        return None  # the flag stays set: the kick sent for later sees the requests
    lane_kick_started(chain_id=chain_id)
    with transaction.atomic():
        taken = list(
            RelayTransaction.objects.select_for_update(skip_locked=True)
            .filter(chain_id=chain_id, phase=TxPhase.PENDING, workflow_run__isnull=True)
            .order_by("created_at", "id")
            .values_list("id", "correlation_id", "after_id")[:limit]
        )
        rows = _in_order(taken)
        if not rows:
            return None
        ids = [tx_id for tx_id, _ in rows]
        # A batch of one carries its request's correlation id, so a lone relay reads as one
        # story in the logs; a bigger batch gets its own and logs which requests it holds.
        # The rows locked above are what makes a request join one batch only, so the run's key
        # need not: a fresh one is inserted without the savepoint that guards a reused key (a
        # request held back once and batched again would otherwise find its first batch's run).
        run, _ = workflow_start(
            kind=RELAY_WORKFLOW,
            input={"chain": chain_id, "size": len(ids)},
            idempotency_key=f"relay-batch:{ids[0]}:{uuid.uuid4().hex[:12]}",
            correlation_id=rows[0][1] if len(rows) == 1 else None,
            new_key=True,
        )
        RelayTransaction.objects.filter(pk__in=ids).update(workflow_run=run, updated_at=timezone.now())
        if len(taken) == limit:
            lane_kick(chain_id=chain_id)  # there may be more behind them
    for tx_id, cid in rows:
        with correlation(cid or "-"):
            logger.info("relay %s joins batch %s (%s requests)", tx_id, run.id, len(ids))
    return run


def _in_order(rows: Sequence[tuple[uuid.UUID, str, uuid.UUID | None]]) -> list[tuple[uuid.UUID, str]]:
    """Of the pending requests a kick took (oldest first), those that may join the batch: a
    request that follows another joins with it (behind it, so at the next nonce) or once it
    has confirmed; it waits for a later batch while the one it follows is still in flight, and
    fails if that one failed. Its own followers then fail in turn, at the next kick."""
    joined: set[uuid.UUID] = set()
    outside = {after for _, _, after in rows if after is not None} - {tx_id for tx_id, _, _ in rows}
    phases = dict(RelayTransaction.objects.filter(pk__in=outside).values_list("id", "phase")) if outside else {}
    ready, orphaned = [], []
    for tx_id, cid, after in rows:
        if after is None or after in joined or phases.get(after) == TxPhase.COMPLETED:
            ready.append((tx_id, cid))
            joined.add(tx_id)
        elif phases.get(after) in (TxPhase.FAILED, TxPhase.DEAD_LETTER):
            orphaned.append(tx_id)
    if orphaned:
        followers = list(RelayTransaction.objects.filter(pk__in=orphaned))
        for tx in followers:
            tx.error = f"not sent: relay {tx.after_id}, which it follows, failed"
        relays_finish(followers, phase=TxPhase.FAILED)
    return ready


def followers_of(txs: Iterable[RelayTransaction], failed: set[uuid.UUID]) -> list[RelayTransaction]:
    """The requests among `txs` that follow one in `failed`, directly or through each other:
    they must not be sent either."""
    out, failed = [], set(failed)
    for tx in txs:  # in nonce order: a follower comes after the request it follows
        if tx.after_id in failed:
            out.append(tx)
            failed.add(tx.pk)
    return out


def relay_lane_run(*, chain_id: int) -> WorkflowRun | None:
    """A lane kick: forms the next batch and runs its steps in this worker at once. The step's
    own message, sent when the run started, then finds the step taken and is dropped; if this
    worker dies, that message or the sweep carries the run on like any other."""
    lane_kick_due_started(chain_id=chain_id)
    run = relay_batch_form(chain_id=chain_id, paced=True)
    if run is not None:
        step_execute(run_id=run.id, index=0)
    return run


def relay_batches_orphaned(*, older_than: float) -> int:
    """Kicks every lane holding a request that no batch took within `older_than` seconds (its
    kick was lost: the broker was down at commit, or a worker died holding it). Returns how
    many lanes were kicked."""
    cutoff = timezone.now() - timedelta(seconds=older_than)
    lanes = (
        RelayTransaction.objects.filter(phase=TxPhase.PENDING, workflow_run__isnull=True, created_at__lt=cutoff)
        # order_by(): the model's default ordering (-created_at) would otherwise join the
        # DISTINCT, giving one row, and one kick, per waiting request instead of per chain.
        .order_by()
        .values_list("chain_id", flat=True)
        .distinct()
    )
    kicked = 0
    for chain_id in lanes:
        celery_app.send_task(LANE_TASK, kwargs={"chain_id": chain_id}, queue="relay")
        kicked += 1
    if kicked:
        logger.warning("relayer: %s lane(s) had requests no batch took; kicked again", kicked)
    return kicked


def relay_batch_split(txs: list[RelayTransaction], *, reason: str) -> WorkflowRun:
    """Moves requests out of their batch into a new batch of their own, which goes through the
    steps again and retries on its own (a signer that cannot pay must not hold up the others)."""
    chain_id = txs[0].chain_id
    with transaction.atomic():
        run, _ = workflow_start(
            kind=RELAY_WORKFLOW,
            input={"chain": chain_id, "size": len(txs), "split": reason},
            idempotency_key=f"relay-split:{txs[0].pk}:{uuid.uuid4().hex}",
            new_key=True,
        )
        moved = RelayTransaction.objects.filter(pk__in=[tx.pk for tx in txs])
        moved.update(workflow_run=run, updated_at=timezone.now())
    logger.info("relay batch split: %s requests into %s (%s)", len(txs), run.id, reason)
    return run


def batch_open(run_id: uuid.UUID) -> QuerySet[RelayTransaction]:
    """The batch's requests that are not finished, in the order their nonces are given."""
    return (
        RelayTransaction.objects.select_related("signer", "chain")
        .filter(workflow_run_id=run_id, phase__in=OPEN_PHASES)
        .order_by("created_at", "id")
    )


def relays_finish(
    txs: Iterable[RelayTransaction], *, phase: str, fields: Iterable[str] = (), note_requesters: bool = False
) -> int:
    """Writes each request's final phase (and its `error` and any other `fields` already set on
    it) in one statement, and tells whoever asked for each after commit. Returns how many.

    `note_requesters`: `fields` change the hash a requesting run shows (a receipt's mined hash,
    written with the final phase): it is noted in the same transaction, before anyone is told."""
    txs = list(txs)
    if not txs:
        return 0
    now = timezone.now()
    for tx in txs:
        tx.phase = phase
        tx.updated_at = now
        # A node's message may quote revert data as text, NUL bytes and all: PostgreSQL text
        # cannot hold NUL, and the request must fail with its reason, not with the database's.
        # A request that did not complete always says why (the monitor finds the failed ones
        # that hold a nonce by their error: relay_nonce_gap_idx).
        tx.error = "" if phase == TxPhase.COMPLETED else (tx.error.replace("\x00", "") or f"relay {phase}")
    with transaction.atomic():
        rows_update(RelayTransaction, txs, ["phase", "error", "updated_at", *fields])
        if note_requesters:
            requester_runs_note(txs)
        told = set()
        for tx in txs:
            listener = FINISH_LISTENERS.get(tx.requested_by_kind)
            # Most relays have no listener (measured: a query each was 1/3 of a batch), and one
            # that asked for several relays finishing together is told once.
            if listener is not None and (tx.requested_by_kind, tx.requested_by_id) not in told:
                told.add((tx.requested_by_kind, tx.requested_by_id))
                transaction.on_commit(partial(listener, tx))
        if txs and RelayTransaction.objects.filter(after__in=txs, phase=TxPhase.PENDING, workflow_run=None).exists():
            lane_kick(chain_id=txs[0].chain_id)  # requests waiting for these may go now (or fail)
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


def batch_mirror(run: WorkflowRun, from_phase: str, to_phase: str) -> None:
    """When the batch run as a whole fails or is dead-lettered, so is every request still open
    in it (with the run's error); a replayed run puts them back in flight."""
    open_rows = RelayTransaction.objects.filter(workflow_run=run)
    if to_phase in (Phase.FAILED, Phase.DEAD_LETTER):
        phase = TxPhase.FAILED if to_phase == Phase.FAILED else TxPhase.DEAD_LETTER
        txs = list(open_rows.filter(phase__in=OPEN_PHASES))
        for tx in txs:
            tx.error = run.error
        relays_finish(txs, phase=phase)
        lane_kick(chain_id=run.input["chain"], if_waiting=True)  # the lane is free again
    elif from_phase == Phase.DEAD_LETTER:
        # Replayed: those that had a nonce are confirming again; the others submitting.
        open_rows.filter(phase=TxPhase.DEAD_LETTER, nonce__isnull=False).update(
            phase=TxPhase.CONFIRMING, error="", updated_at=timezone.now()
        )
        open_rows.filter(phase=TxPhase.DEAD_LETTER).update(
            phase=TxPhase.SUBMITTING, error="", updated_at=timezone.now()
        )


LEGACY_WORKFLOW = "relay.transaction"


def relay_rebatch_legacy(ctx: StepContext) -> dict[str, str | None]:
    """Carries a request over from a `relay.transaction` run (one run per request, before
    batches) still in flight at upgrade: unsigned, it goes back to its lane; signed, into a
    batch of its own, which re-sends the stored bytes and confirms them. Safe to run again:
    once moved, the request no longer points at this run."""
    tx = RelayTransaction.objects.filter(workflow_run_id=ctx.run_id, phase__in=OPEN_PHASES).first()
    if tx is None:
        return {"moved": None}
    if tx.nonce is None:
        RelayTransaction.objects.filter(pk=tx.pk).update(
            workflow_run=None, phase=TxPhase.PENDING, updated_at=timezone.now()
        )
        lane_kick(chain_id=tx.chain_id)
        return {"moved": str(tx.pk), "to": "lane"}
    run = relay_batch_split([tx], reason=f"carried over from {LEGACY_WORKFLOW} run {ctx.run_id}")
    return {"moved": str(tx.pk), "to": str(run.id)}
