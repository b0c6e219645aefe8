"""The relay batch workflow: simulate, sign with serialized nonces, broadcast, confirm.

One run sends one batch (relayer/services/batches.py): each step handles every request of the
batch still open at that point, so a request that fails alone drops out and the others go on."""

from __future__ import annotations

from django.conf import settings

from orchestrator.engine import RetryPolicy, Step, Workflow, registry
from relayer.services.batches import batch_mirror
from relayer.services.confirmation import relay_confirm
from relayer.services.requests import RELAY_WORKFLOW
from relayer.services.submission import relay_broadcast, relay_prepare, relay_sign


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
        on_transition=batch_mirror,
        steps=(
            Step("simulate", relay_prepare, atomic=False, retry=_retry(), timeout=_lease()),
            Step("sign", relay_sign, retry=_retry()),
            Step("broadcast", relay_broadcast, atomic=False, retry=_retry(), timeout=_lease()),
            Step("confirm", relay_confirm, atomic=False, retry=_retry(), timeout=_lease()),
        ),
    )
)
