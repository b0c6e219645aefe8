"""The execution workflow: after an executor answered with a task (or was refused), check the
policy, relay, wait for the relay to finish, and call /kernel/executed."""

from __future__ import annotations

from django.conf import settings

from orchestrator.automations.models import Firing, ReportStatus
from orchestrator.automations.services.delivery import EXECUTION_WORKFLOW, hook_retry
from orchestrator.automations.services.execution import execution_check, execution_relay, execution_report
from orchestrator.engine import RetryPolicy, Step, Workflow, registry
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import workflow_resume
from relayer.models import RelayTransaction
from relayer.services.requests import on_relay_finished

RETRY = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=30.0)


def _report_given_up(run: WorkflowRun, from_phase: str, to_phase: str) -> None:
    if to_phase in (Phase.DEAD_LETTER, Phase.FAILED) and run.step_name == "report":
        Firing.objects.filter(workflow_run=run).update(report_status=ReportStatus.FAILED)


@on_relay_finished("firing")
def _firing_relay_finished(tx: RelayTransaction) -> None:
    """A firing's transaction finished: wake its execution run instead of waiting for the poll."""
    run_id = Firing.objects.filter(pk=tx.requested_by_id).values_list("workflow_run_id", flat=True).first()
    if run_id is not None:
        workflow_resume(run_id=run_id, reason=f"relay {tx.id} {tx.phase}")


EXECUTION = registry.register(
    Workflow(
        kind=EXECUTION_WORKFLOW,
        on_transition=_report_given_up,
        steps=(
            Step("check", execution_check, atomic=False, retry=RETRY, timeout=60),
            Step("relay", execution_relay, retry=RETRY),
            Step(
                "report",
                execution_report,
                atomic=False,
                retry=hook_retry(),
                timeout=settings.AUTOMATION_HOOK_TIMEOUT_SECONDS * 2 + 10,
            ),
        ),
    )
)
