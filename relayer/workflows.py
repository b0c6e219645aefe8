"""The relay batch workflow: simulate, sign with serialized nonces, broadcast, confirm.

One run sends one batch (relayer/services/batches.py): each step handles every request of the
batch still open at that point, so a request that fails alone drops out and the others go on."""

from __future__ import annotations

from django.conf import settings

from orchestrator.engine import RetryPolicy, Step, Workflow, registry
from relayer.services.batches import LEGACY_WORKFLOW, batch_mirror, relay_rebatch_legacy
from relayer.services.confirmation import relay_confirm
from relayer.services.requests import RELAY_WORKFLOW
from relayer.services.submission import relay_broadcast, relay_prepare, relay_sign
from relayer.tracing import relay_phase


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
            Step("simulate", relay_phase("simulate", relay_prepare), atomic=False, retry=_retry(), timeout=_lease()),
            Step("sign", relay_phase("sign", relay_sign), retry=_retry()),
            Step(
                "broadcast", relay_phase("broadcast", relay_broadcast), atomic=False, retry=_retry(), timeout=_lease()
            ),
            Step("confirm", relay_phase("confirm", relay_confirm), atomic=False, retry=_retry(), timeout=_lease()),
        ),
    )
)

# Runs of the one-run-per-request workflow that are in flight when this version starts: each of
# its step names moves the request into the batches (whichever step the run stopped at).
LEGACY = registry.register(
    Workflow(
        kind=LEGACY_WORKFLOW,
        queue="relay",
        steps=tuple(
            Step(name, relay_rebatch_legacy, retry=_retry()) for name in ("simulate", "sign", "broadcast", "confirm")
        ),
    )
)
