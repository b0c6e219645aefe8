"""Workflows used by the engine tests. They run in a real Celery worker.

Inputs steer them: `fail` maps a step name to how many times it raises RetryableError before
it succeeds; `terminal_at` names a step that raises TerminalError; `hold` names a step that
announces itself (Redis key `entered:<run>:<step>`) and waits for `release:<run>`; `kill_at`
names a step whose process SIGKILLs itself, `kills` times in all (default 1), as the OOM killer
would: mid-step, before its transaction commits; `slow` maps a step name to seconds it sleeps."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from orchestrator.engine import (
    Blocked,
    RetryableError,
    RetryPolicy,
    Step,
    StepContext,
    TerminalError,
    Workflow,
    registry,
)
from tests.support import control
from tests.support.models import Effect

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=0.5)


def _behave(ctx: StepContext) -> None:
    time.sleep(float(ctx.input.get("slow", {}).get(ctx.step, 0)))
    if ctx.input.get("kill_at") == ctx.step and control.count(f"kills:{ctx.run_id}") < int(ctx.input.get("kills", 1)):
        control.bump(f"kills:{ctx.run_id}")  # outside the database: the kill rolls nothing of it back
        os.kill(os.getpid(), signal.SIGKILL)
    if ctx.input.get("hold") == ctx.step:
        control.signal(f"entered:{ctx.run_id}:{ctx.step}:{ctx.attempt}")
        if not control.wait_for_signal(f"release:{ctx.run_id}", timeout=60):
            raise RetryableError("never released")
    if ctx.attempt <= int(ctx.input.get("fail", {}).get(ctx.step, 0)):
        raise RetryableError(f"{ctx.step} fails on attempt {ctx.attempt}")
    if ctx.input.get("terminal_at") == ctx.step:
        raise TerminalError(f"{ctx.step} refuses")
    if ctx.input.get("until_released") == ctx.step and not control.is_set(f"release:{ctx.run_id}"):
        raise RetryableError(f"{ctx.step} is blocked until released")


def effect_step(ctx: StepContext) -> dict[str, Any]:
    # The effect is written before the behaviour, so a failure or a kill after it proves the
    # savepoint or the aborted transaction undid it.
    Effect.objects.create(run_id=ctx.run_id, name=ctx.step)
    _behave(ctx)
    return {"step": ctx.step, "attempt": ctx.attempt}


def keyed_effect_step(ctx: StepContext) -> dict[str, Any]:
    # A network-style step: outside any transaction, idempotent through its key. Its calls
    # are counted outside the database, where no rollback undoes them.
    control.bump(f"calls:{ctx.run_id}:{ctx.step}")
    _, created = Effect.objects.get_or_create(run_id=ctx.run_id, name=ctx.step, key=ctx.idempotency_key)
    _behave(ctx)
    return {"step": ctx.step, "created": created}


def undo(ctx: StepContext) -> dict[str, str]:
    Effect.objects.create(run_id=ctx.run_id, name=f"undo:{ctx.step}")
    return {"undone": ctx.step}


registry.register(
    Workflow(
        kind="test.effects",
        steps=(
            Step("reserve", effect_step, compensate=undo, retry=FAST_RETRY),
            Step("no_undo", effect_step, retry=FAST_RETRY),
            Step("charge", effect_step, compensate=undo, retry=FAST_RETRY),
            Step("send", effect_step, retry=FAST_RETRY),
        ),
    )
)

registry.register(
    Workflow(
        kind="test.leased",
        steps=(
            Step("first", effect_step, retry=FAST_RETRY),
            Step("call", keyed_effect_step, retry=FAST_RETRY, atomic=False, timeout=2.0),
            Step("last", effect_step, retry=FAST_RETRY),
        ),
    )
)


# A lease far longer than any test: a run that moves on after its worker died was taken back
# because the worker is gone, not because its time ran out.
registry.register(
    Workflow(
        kind="test.long_lease",
        steps=(
            Step("first", effect_step, retry=FAST_RETRY),
            Step("call", keyed_effect_step, retry=FAST_RETRY, atomic=False, timeout=600.0),
            Step("last", effect_step, retry=FAST_RETRY),
        ),
    )
)


def refuse(ctx: StepContext) -> None:
    raise Blocked("policy says no")


registry.register(
    Workflow(
        kind="test.blocked",
        steps=(Step("reserve", effect_step, compensate=undo), Step("decide", refuse)),
    )
)


def spawn(ctx: StepContext) -> dict[str, str]:
    from orchestrator.engine.services import workflow_start

    child, _ = workflow_start(kind="test.effects", idempotency_key=f"child-of-{ctx.run_id}")
    return {"child": str(child.id)}


registry.register(Workflow(kind="test.parent", steps=(Step("spawn", spawn), Step("after", effect_step))))
