"""Dead workers in atomic steps: a pool process killed in the middle of an atomic step (its
transaction rolls back, nothing of the step remains) gets the step's message back at once
(acks_late, reject_on_worker_lost), and another process runs the step within seconds, not at
the sweep's stall rule. A step that kills its process every time is not redelivered for ever:
past WORKFLOW_MAX_REDELIVERIES each delivery that died counts as a failed attempt, and its
retry policy dead-letters it."""

from __future__ import annotations

import time

import pytest

from orchestrator.engine.models import Phase, StepStatus, WorkflowRun
from orchestrator.engine.services import workflow_start
from tests.conftest import Workers, wait_until
from tests.support import control
from tests.support.models import Effect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.engine]


def test_a_process_killed_in_an_atomic_step_has_the_step_run_again_within_seconds(workers: Workers) -> None:
    workers.start()  # no beat: only the redelivered message can run the step again
    run, _ = workflow_start(kind="test.effects", input={"kill_at": "charge"})
    started = time.monotonic()
    done = wait_until(
        lambda: WorkflowRun.objects.filter(pk=run.id, phase=Phase.COMPLETED).first(),
        timeout=20,
        message="the run to complete after its worker process died in charge",
    )
    assert control.count(f"kills:{run.id}") == 1
    assert time.monotonic() - started < 15
    # The killed attempt left nothing: its effect and journal row rolled back with it.
    assert Effect.objects.filter(run_id=run.id, name="charge").count() == 1
    charge = list(done.steps.filter(name="charge").values_list("status", "attempt"))
    assert charge == [(StepStatus.DONE, 1)]
    assert done.redeliveries == 0  # reset once the step was recorded


def test_a_process_killed_in_a_step_it_kept_after_recording_the_last_has_it_run_again(workers: Workers) -> None:
    # reserve outlasts the time a delivery may carry steps on in one transaction, so the delivery
    # keeps no_undo for itself (no message) and runs it after reserve's commit, in a transaction
    # of its own, where the process dies. The message that comes back is reserve's, recorded;
    # the run is at no_undo, due now.
    workers.start(extra_env={"WORKFLOW_INLINE_SECONDS": "0.2"})
    run, _ = workflow_start(kind="test.effects", input={"kill_at": "no_undo", "slow": {"reserve": 0.5}})
    started = time.monotonic()
    done = wait_until(
        lambda: WorkflowRun.objects.filter(pk=run.id, phase=Phase.COMPLETED).first(),
        timeout=20,
        message="the run to complete after its worker process died in a kept step",
    )
    assert time.monotonic() - started < 15
    assert control.count(f"kills:{run.id}") == 1
    steps = list(done.steps.order_by("id").values_list("name", "status"))
    assert steps == [(name, StepStatus.DONE) for name in ("reserve", "no_undo", "charge", "send")]
    assert Effect.objects.filter(run_id=run.id, name="no_undo").count() == 1


def test_a_step_that_kills_its_process_every_time_is_dead_lettered_not_redelivered_for_ever(
    workers: Workers,
) -> None:
    workers.start(extra_env={"WORKFLOW_MAX_REDELIVERIES": "1"})
    run, _ = workflow_start(kind="test.effects", input={"kill_at": "charge", "kills": 1000})
    dead = wait_until(
        lambda: WorkflowRun.objects.filter(pk=run.id, phase=Phase.DEAD_LETTER).first(),
        timeout=90,
        interval=0.5,
        message="the run to be dead-lettered",
    )
    # FAST_RETRY allows 4 attempts. Each failed attempt: a delivery that ran charge and died,
    # the one redelivery allowed (run alone) dying too, then the next recorded as the failure.
    # The steps before charge, rolled back with the first death, ran alone and were recorded.
    failures = list(dead.steps.filter(name="charge").values_list("status", flat=True))
    assert failures == [StepStatus.RETRY] * 3 + [StepStatus.FAILED]
    assert control.count(f"kills:{run.id}") >= 4 * 2
    assert set(dead.steps.exclude(name="charge").values_list("name", "status")) == {
        ("reserve", StepStatus.DONE),
        ("no_undo", StepStatus.DONE),
    }
    assert "its worker process died during the step" in dead.error
    assert not Effect.objects.filter(run_id=run.id, name="charge").exists()
