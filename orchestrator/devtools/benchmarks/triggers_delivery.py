"""`bench triggers --profile`'s delivery profile: the CPU of `firings_deliver`, the task that signs
and POSTs each /kernel/trigger hook and records the answers, per firing, in this process.

`due` subscriptions are registered due a second ago and dispatched (their delivery messages
collected here, not sent), then their deliveries run one after another against the bench's
skip-only executor: once timed (this process's CPU, every thread counted), then once more under
cProfile with the hook calls made on this thread instead of the pool's (cProfile sees only the
thread it was enabled on; its clock is CPU time), each batch's firings due again with a new handoff."""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model

from orchestrator.automations.models import AutomationConfig
from orchestrator.automations.services import hooks
from orchestrator.automations.services.delivery import firings_deliver
from orchestrator.automations.services.firings import intervals_dispatch
from orchestrator.devtools.benchmarks import triggers_dispatch


def _dispatched(config: AutomationConfig, owner_username: str, due: int) -> list[tuple[list[str], str]]:
    triggers_dispatch.rows_delete(owner_username)
    owner_id = get_user_model().objects.get(username=owner_username).pk
    triggers_dispatch.subscriptions_register(config=config, owner_id=owner_id, registered=due, due=due)
    batches: list[tuple[list[str], str]] = []

    def collect(firing_ids: list[str], token: str, eta: datetime | None) -> None:
        batches.append((firing_ids, token))

    fired = intervals_dispatch(deliver=collect)
    assert fired == due, f"dispatched {fired}, expected {due}"
    return batches


def _deliver_all(batches: list[tuple[list[str], str]]) -> int:
    sent = 0
    for firing_ids, token in batches:
        result = firings_deliver(firing_ids=firing_ids, token=token)
        assert result.outcomes.get("skipped") == len(firing_ids), result.outcomes
        sent += result.taken
    return sent


class _Inline:
    """The hook pool's `map`, on the calling thread."""

    @staticmethod
    def map(fn: Callable[..., Any], items: list[Any]) -> Iterator[Any]:
        return map(fn, items)


@contextmanager
def _hooks_inline() -> Iterator[None]:
    threads = hooks._threads
    hooks._threads = lambda: _Inline()  # type: ignore[assignment]
    try:
        yield
    finally:
        hooks._threads = threads


def delivery_profile(
    *, config: AutomationConfig, owner_username: str, due: int, out: Callable[[str], Any], lines: int = 30
) -> float:
    """Returns the CPU milliseconds per firing of delivering `due` firings (threads included)."""
    batches = _dispatched(config, owner_username, due)
    began, cpu = time.perf_counter(), time.process_time()
    sent = _deliver_all(batches)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    per_firing = cpu * 1000 / max(sent, 1)
    out(
        f"  delivery of {sent:,} firings ({len(batches)} tasks): {wall:.2f} s wall, {cpu:.2f} s CPU in this "
        f"process, {per_firing:.2f} ms CPU a firing"
    )
    batches = _dispatched(config, owner_username, due)
    # CPU time, not wall: on a shared machine the wall clock counts other processes' turns.
    profiler = cProfile.Profile(time.process_time)
    with _hooks_inline():
        profiler.enable()
        _deliver_all(batches)
        profiler.disable()
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(lines)
        out(f"  cProfile of delivering {due:,} firings (hook calls on one thread), by {order}:")
        for line in text.getvalue().splitlines():
            if line.strip() and not line.startswith(("   Ordered by", "   List reduced")):
                out(f"    {line}")
    triggers_dispatch.rows_delete(owner_username)
    return per_firing
