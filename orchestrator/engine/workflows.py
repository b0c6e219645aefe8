"""The engine's own workflows."""

from __future__ import annotations

from orchestrator.engine import Step, StepContext, Workflow, registry


def noop(ctx: StepContext) -> dict[str, int]:
    return {"attempt": ctx.attempt}


# Five steps that do nothing: `manage.py bench engine` measures the engine's own cost with it,
# and an operator can start one to check a deployment end to end.
NOOP = registry.register(Workflow(kind="engine.noop", steps=tuple(Step(f"noop{i}", noop) for i in range(1, 6))))
