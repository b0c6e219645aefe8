"""Thin Celery tasks for automations: the beat-driven dispatcher and log poller, and delivery."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from celery import shared_task

from orchestrator.automations.services.delivery import firings_deliver
from orchestrator.automations.services.filters import logs_poll
from orchestrator.automations.services.firings import firings_handoff_stale, intervals_dispatch
from relayer.models import Chain

logger = logging.getLogger("orchestrator.automations")


def _enqueue_delivery(firing_ids: list[str], token: str, eta: datetime | None) -> None:
    # A short ETA (the lookahead, two seconds): well inside the broker's visibility timeout.
    options: dict[str, Any] = {"queue": "triggers"} | ({"eta": eta} if eta is not None else {})
    deliver.apply_async(args=(firing_ids, token), **options)


# expires: beat sends a tick every second; ticks that waited in the queue longer are dropped
# (the next one does the same work), so a backlog never turns into a burst of dispatches.
@shared_task(name="automations.dispatch", ignore_result=True, expires=10)
def dispatch() -> dict[str, int]:
    fired = intervals_dispatch(deliver=_enqueue_delivery)
    handed = firings_handoff_stale(deliver=_enqueue_delivery)
    return {"fired": fired, "handed_again": handed}


@shared_task(name="automations.deliver", ignore_result=True)
def deliver(firing_ids: list[str], token: str) -> dict[str, int]:
    result = firings_deliver(firing_ids=firing_ids, token=token)
    return {"taken": result.taken, **result.outcomes}


@shared_task(name="automations.poll_logs", ignore_result=True, expires=10)
def poll_logs() -> dict[str, int]:
    fired = {}
    for chain in Chain.objects.filter(enabled=True):
        try:
            fired[str(chain.chain_id)] = logs_poll(chain=chain, deliver=_enqueue_delivery)
        except Exception:  # one chain's node being down must not stop the others
            logger.exception("log poll of chain %s failed", chain)
    return fired
