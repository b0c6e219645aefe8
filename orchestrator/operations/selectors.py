"""What the operations dashboard shows, read in one place: every part is independent, and a
part whose source is down (the broker, a chain's RPC) says so instead of failing the page."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from orchestrator.engine.models import WorkflowRun
from orchestrator.engine.selectors import runs_active_by_kind_and_phase, runs_dead_lettered, runs_stalled
from orchestrator.infra.heartbeats import BEAT, WORKER_PREFIX
from orchestrator.infra.models import Heartbeat

logger = logging.getLogger("orchestrator.operations")

LISTED = 50  # rows shown per list; the counts say how many there are in all


@dataclass(frozen=True)
class Beat:
    name: str
    at: datetime
    age_seconds: float
    stale: bool


@dataclass
class Overview:
    at: datetime
    active: list[dict[str, Any]]
    stalled: list[WorkflowRun]
    stalled_count: int
    dead_letters: list[WorkflowRun]
    dead_letter_count: int
    queues: dict[str, int] = field(default_factory=dict)
    queues_error: str = ""
    low_signers: list[dict[str, Any]] = field(default_factory=list)
    signer_count: int = 0
    signers_error: str = ""
    beat: Beat | None = None
    workers: list[Beat] = field(default_factory=list)


def operations_overview() -> Overview:
    now = timezone.now()
    stalled = runs_stalled(now=now)
    dead = runs_dead_lettered()
    overview = Overview(
        at=now,
        active=runs_active_by_kind_and_phase(),
        stalled=list(stalled[:LISTED]),
        stalled_count=stalled.count(),
        dead_letters=list(dead[:LISTED]),
        dead_letter_count=dead.count(),
    )
    _queues(overview)
    _signers(overview)
    _heartbeats(overview, now)
    return overview


def _queues(overview: Overview) -> None:
    from orchestrator.infra.broker import queue_depths

    try:
        overview.queues = queue_depths()
    except Exception as exc:  # shown on the page; /readyz has the same check
        overview.queues_error = f"broker unreachable: {exc.__class__.__name__}: {exc}"[:300]


def _signers(overview: Overview) -> None:
    from relayer.services.monitor import signer_states

    try:
        states = signer_states(low_balance_wei=settings.RELAYER_LOW_BALANCE_WEI)
    except Exception as exc:
        logger.warning("dashboard: signer balances unavailable: %s", exc)
        overview.signers_error = f"{exc.__class__.__name__}: {exc}"[:300]
        return
    overview.signer_count = len(states)
    # A balance the RPC could not read is shown too: it may be just as empty.
    overview.low_signers = [
        {
            "address": s.address,
            "chain_id": s.chain_id,
            "balance": "unreadable" if s.balance_wei is None else f"{Decimal(s.balance_wei) / 10**18:.6f} ETH",
            "next_nonce": s.next_nonce,
        }
        for s in states
        if s.low or s.balance_wei is None
    ]


def _heartbeats(overview: Overview, now: datetime) -> None:
    beat_limit = settings.BEAT_HEARTBEAT_MAX_AGE_SECONDS
    worker_limit = 3 * settings.WORKER_HEARTBEAT_SECONDS
    for row in Heartbeat.objects.order_by("name"):
        age = (now - row.at).total_seconds()
        if row.name == BEAT:
            overview.beat = Beat(row.name, row.at, age, age > beat_limit)
        elif row.name.startswith(WORKER_PREFIX):
            name = row.name.removeprefix(WORKER_PREFIX)
            overview.workers.append(Beat(name, row.at, age, age > worker_limit))
