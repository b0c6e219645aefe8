"""The relay workflow: simulate, sign with a serialized nonce, broadcast, confirm."""

from __future__ import annotations

import uuid
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from orchestrator.engine import RetryPolicy, Step, Workflow, registry
from orchestrator.models import Phase, WorkflowRun
from relayer.models import RelayTransaction, TxPhase
from relayer.services.confirmation import relay_confirm
from relayer.services.requests import FINISH_LISTENERS, RELAY_WORKFLOW
from relayer.services.submission import relay_broadcast, relay_prepare, relay_sign

# What the request's phase becomes when its run enters a phase (the run is the truth; the
# RelayTransaction mirrors it for the admin and for whoever asked for the relay).
MIRRORED = {
    Phase.FAILED: TxPhase.FAILED,
    Phase.DEAD_LETTER: TxPhase.DEAD_LETTER,
    Phase.COMPLETED: TxPhase.COMPLETED,
}


def relay_mirror(run: WorkflowRun, from_phase: str, to_phase: str) -> None:
    fields: dict[str, object] = {"updated_at": timezone.now()}
    if to_phase in MIRRORED:
        fields["phase"] = MIRRORED[Phase(to_phase)]
        fields["error"] = run.error if to_phase != Phase.COMPLETED else ""
    elif from_phase == Phase.DEAD_LETTER:
        fields["phase"] = TxPhase.SUBMITTING  # replayed
        fields["error"] = ""
    else:
        return
    RelayTransaction.objects.filter(workflow_run=run).update(**fields)
    if to_phase in MIRRORED:
        transaction.on_commit(partial(_tell_requester, run.pk))


def _tell_requester(run_id: uuid.UUID) -> None:
    tx = RelayTransaction.objects.filter(workflow_run_id=run_id).first()
    listener = FINISH_LISTENERS.get(tx.requested_by_kind) if tx else None
    if tx is not None and listener is not None:
        listener(tx)


def _retry() -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.RELAYER_MAX_ATTEMPTS,
        base_delay=settings.RELAYER_RETRY_BASE_SECONDS,
        max_delay=settings.RELAYER_RETRY_MAX_SECONDS,
    )


def _lease() -> float:
    return settings.RELAYER_STEP_LEASE_SECONDS


RELAY = registry.register(
    Workflow(
        kind=RELAY_WORKFLOW,
        queue="relay",
        on_transition=relay_mirror,
        steps=(
            Step("simulate", relay_prepare, atomic=False, retry=_retry(), timeout=_lease()),
            Step("sign", relay_sign, retry=_retry()),
            Step("broadcast", relay_broadcast, atomic=False, retry=_retry(), timeout=_lease()),
            Step("confirm", relay_confirm, atomic=False, retry=_retry(), timeout=_lease()),
        ),
    )
)
