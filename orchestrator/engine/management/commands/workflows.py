"""./manage.py workflows list|show ID|replay ID|discard ID --reason TEXT|sweep"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestrator.engine.models import WorkflowRun
from orchestrator.engine.selectors import runs_by_kind_and_phase
from orchestrator.engine.services import (
    RunNotDiscardable,
    RunNotReplayable,
    workflow_discard,
    workflow_replay,
    workflow_sweep,
)


class Command(BaseCommand):
    help = "Inspect and operate workflow runs."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="Counts of runs by kind and phase.")
        show = sub.add_parser("show", help="One run with its journal.")
        show.add_argument("run_id")
        replay = sub.add_parser("replay", help="Replay a dead-lettered run.")
        replay.add_argument("run_id")
        discard = sub.add_parser("discard", help="Give up on a dead-lettered run: it ends as failed.")
        discard.add_argument("run_id")
        discard.add_argument("--reason", required=True, help="Why; kept in the run's transition (the audit log).")
        sub.add_parser("sweep", help="Dispatch due and stalled runs now (what beat does).")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "list":
            for row in runs_by_kind_and_phase():
                self.stdout.write(f"{row['kind']:<30} {row['phase']:<18} {row['count']}")
        elif action == "show":
            run = self._run(options["run_id"])
            self.stdout.write(f"{run.kind} {run.id} phase={run.phase} step={run.step_name} error={run.error!r}")
            for step in run.steps.order_by("id"):
                self.stdout.write(f"  {step.kind:<10} {step.name:<20} #{step.attempt} {step.status:<8} {step.error}")
        elif action == "replay":
            run = self._run(options["run_id"])
            try:
                workflow_replay(run_id=run.id, actor="cli")
            except RunNotReplayable as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(self.style.SUCCESS(f"Replayed {run.id}; it continues at {run.step_name}."))
        elif action == "discard":
            run = self._run(options["run_id"])
            try:
                workflow_discard(run_id=run.id, actor="cli", reason=options["reason"])
            except RunNotDiscardable as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(self.style.SUCCESS(f"Discarded {run.id}; it is now failed."))
        elif action == "sweep":
            result = workflow_sweep()
            self.stdout.write(f"due={result.due} stalled={result.stalled} orphaned={result.orphaned}")

    def _run(self, raw: str) -> WorkflowRun:
        try:
            return WorkflowRun.objects.get(pk=uuid.UUID(raw))
        except (ValueError, WorkflowRun.DoesNotExist):
            raise CommandError(f"No workflow run {raw!r}.") from None
