"""The engine end to end: a real Celery worker, a real broker, PostgreSQL."""

from __future__ import annotations

import time
import uuid

import pytest

from orchestrator.celery import app as celery_app
from orchestrator.engine.models import Phase, StepRun, StepStatus, WorkflowRun
from orchestrator.engine.services import STEP_TASK, workflow_replay, workflow_start, workflow_sweep
from orchestrator.infra.broker import queue_depth, queues_purge
from tests.conftest import Workers, wait_until
from tests.support import control
from tests.support.models import Effect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.engine]


def finished(run_id: uuid.UUID, *phases: str, timeout: float = 30.0) -> WorkflowRun:
    wanted = phases or (Phase.COMPLETED,)
    return wait_until(
        lambda: WorkflowRun.objects.filter(pk=run_id, phase__in=wanted).first(),
        timeout=timeout,
        message=f"run {run_id} to reach {wanted} (now {WorkflowRun.objects.get(pk=run_id).phase})",
    )


def effects(run_id: uuid.UUID) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in Effect.objects.filter(run_id=run_id).values_list("name", flat=True):
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_a_run_completes_with_every_step_journaled_once(worker: object) -> None:
    run, created = workflow_start(kind="test.effects", input={})
    assert created
    done = finished(run.id)
    assert effects(run.id) == {"reserve": 1, "no_undo": 1, "charge": 1, "send": 1}
    journal = list(done.steps.order_by("id").values_list("name", "status"))
    assert journal == [(n, StepStatus.DONE) for n in ("reserve", "no_undo", "charge", "send")]
    assert done.outputs["send"] == {"step": "send", "attempt": 1}
    assert list(done.transitions.values_list("to_phase", flat=True)) == [Phase.SUBMITTING, Phase.COMPLETED]
    assert done.finished_at is not None


def test_a_step_failing_twice_with_a_retryable_error_succeeds_on_the_third_try(worker: object) -> None:
    run, _ = workflow_start(kind="test.effects", input={"fail": {"charge": 2}})
    done = finished(run.id)
    attempts = list(done.steps.filter(name="charge").order_by("id").values_list("attempt", "status"))
    assert attempts == [(1, StepStatus.RETRY), (2, StepStatus.RETRY), (3, StepStatus.DONE)]
    # charge is carried on in the transaction of reserve and no_undo: its first failure rolled
    # them back too, and they ran again without it. Each is journaled and took effect once.
    journal = list(done.steps.order_by("id").values_list("name", "status"))
    assert journal == [
        ("reserve", StepStatus.DONE),
        ("no_undo", StepStatus.DONE),
        ("charge", StepStatus.RETRY),
        ("charge", StepStatus.RETRY),
        ("charge", StepStatus.DONE),
        ("send", StepStatus.DONE),
    ]
    assert effects(run.id) == {"reserve": 1, "no_undo": 1, "charge": 1, "send": 1}
    assert done.attempts == 0 and done.error == ""


def test_a_step_failing_after_a_leased_one_in_its_record_transaction_leaves_that_one_run_once(worker: object) -> None:
    # last is carried on in the transaction that records call (leased): its failure rolls that
    # record back, and call's outcome is recorded again, not fetched again.
    run, _ = workflow_start(kind="test.leased", input={"fail": {"last": 1}})
    done = finished(run.id)
    assert control.count(f"calls:{run.id}:call") == 1
    journal = list(done.steps.order_by("id").values_list("name", "attempt", "status"))
    assert journal == [
        ("first", 1, StepStatus.DONE),
        ("call", 1, StepStatus.DONE),
        ("last", 1, StepStatus.RETRY),
        ("last", 2, StepStatus.DONE),
    ]
    assert effects(run.id) == {"first": 1, "call": 1, "last": 1}


def test_a_terminal_error_runs_the_compensations_newest_first(worker: object) -> None:
    run, _ = workflow_start(kind="test.effects", input={"terminal_at": "send"})
    failed = finished(run.id, Phase.FAILED)
    compensations = list(
        StepRun.objects.filter(run=failed, kind="compensate").order_by("id").values_list("name", "status")
    )
    assert compensations == [("charge", StepStatus.DONE), ("reserve", StepStatus.DONE)]
    assert effects(run.id) == {"reserve": 1, "no_undo": 1, "charge": 1, "undo:charge": 1, "undo:reserve": 1}
    assert "send refuses" in failed.error
    assert list(failed.transitions.values_list("to_phase", flat=True)) == [
        Phase.SUBMITTING,
        Phase.COMPENSATING,
        Phase.FAILED,
    ]


def test_exhausted_retries_dead_letter_and_replay_completes_the_run(worker: object) -> None:
    run, _ = workflow_start(kind="test.effects", input={"until_released": "charge"})
    dead = finished(run.id, Phase.DEAD_LETTER)
    assert dead.steps.filter(name="charge").count() == 4  # FAST_RETRY.max_attempts
    assert "blocked until released" in dead.error

    control.signal(f"release:{run.id}")  # the operator fixed the root cause
    workflow_replay(run_id=run.id, actor="test")
    done = finished(run.id)
    assert effects(run.id) == {"reserve": 1, "no_undo": 1, "charge": 1, "send": 1}
    assert [t.to_phase for t in done.transitions.order_by("id")] == [
        Phase.SUBMITTING,
        Phase.DEAD_LETTER,
        Phase.SUBMITTING,
        Phase.COMPLETED,
    ]
    assert done.transitions.get(reason="replayed").actor == "test"


def test_the_same_step_message_delivered_many_times_runs_its_side_effect_once(workers: Workers) -> None:
    workers.start(concurrency=4)
    run, _ = workflow_start(kind="test.leased", input={"hold": "call"})
    # Step 1 (non-atomic, leased) is now running and waiting to be released: flood duplicates of
    # every step's message while it holds its lease, then after it finishes.
    wait_until(lambda: control.is_set(f"entered:{run.id}:call:1"), message="the call step to start")
    for index in range(3):
        for _ in range(3):
            celery_app.send_task(STEP_TASK, args=[str(run.id), index], queue="workflows")
    control.signal(f"release:{run.id}")
    finished(run.id)
    for index in range(3):
        for _ in range(3):
            celery_app.send_task(STEP_TASK, args=[str(run.id), index], queue="workflows")
    # Let the duplicates drain: the run must not move and nothing must repeat.
    wait_until(_queue_empty, timeout=20, message="duplicates to drain")
    time.sleep(1)  # the last deliveries were prefetched; give them time to be dropped
    assert effects(run.id) == {"first": 1, "call": 1, "last": 1}
    assert StepRun.objects.filter(run_id=run.id, status=StepStatus.DONE).count() == 3


def _queue_empty() -> bool:
    return queue_depth("workflows") == 0


def test_two_starts_with_one_idempotency_key_make_one_run(worker: object) -> None:
    first, created_first = workflow_start(kind="test.effects", idempotency_key="order-42")
    second, created_second = workflow_start(kind="test.effects", idempotency_key="order-42")
    assert (created_first, created_second) == (True, False)
    assert first.id == second.id
    finished(first.id)
    assert WorkflowRun.objects.filter(idempotency_key="order-42").count() == 1
    assert effects(first.id)["send"] == 1


@pytest.mark.parametrize("kind,step", [("test.effects", "charge"), ("test.leased", "call")])
def test_a_worker_killed_mid_step_then_restarted_finishes_with_every_effect_once(
    workers: Workers, kind: str, step: str
) -> None:
    victim = workers.start()
    run, _ = workflow_start(kind=kind, input={"hold": step})
    wait_until(lambda: control.is_set(f"entered:{run.id}:{step}:1"), message=f"{step} to start")
    victim.kill()  # SIGKILL to the whole worker, pool children included
    victim.proc.wait(timeout=10)  # type: ignore[union-attr]

    control.signal(f"release:{run.id}")
    workers.start()

    # The killed step's message is gone (or will come back); the sweep is what guarantees
    # progress. Leased steps also need their lease (2 s) to run out first.
    def swept_and_done() -> bool:
        workflow_sweep(stall_seconds=0)
        return WorkflowRun.objects.filter(pk=run.id, phase=Phase.COMPLETED).exists()

    wait_until(swept_and_done, timeout=40, interval=0.5, message="the run to finish after the kill")
    counts = effects(run.id)
    assert all(n == 1 for n in counts.values()), counts
    assert len(counts) == 3 if kind == "test.leased" else len(counts) == 4
    done = WorkflowRun.objects.get(pk=run.id)
    assert done.steps.filter(name=step, status=StepStatus.DONE).count() == 1


def test_the_sweep_redispatches_a_run_whose_message_was_lost(worker_env: dict[str, str], workers: Workers) -> None:
    # No worker is running when the run starts; its first message is purged (lost).
    run, _ = workflow_start(kind="test.effects")
    queues_purge()
    workers.start()
    result = workflow_sweep(stall_seconds=0)
    assert result.stalled == 1
    finished(run.id)
    assert effects(run.id) == {"reserve": 1, "no_undo": 1, "charge": 1, "send": 1}


def test_a_blocked_step_ends_the_run_as_blocked_without_compensating(worker: object) -> None:
    run, _ = workflow_start(kind="test.blocked")
    blocked = finished(run.id, Phase.BLOCKED)
    assert blocked.error == "decide: policy says no"
    assert effects(run.id) == {"reserve": 1}  # a decision: nothing is undone
    assert blocked.finished_at is not None


def test_a_run_started_by_a_step_gets_its_own_message_and_both_finish(worker: object) -> None:
    # A worker carries on with its own run's next step inline; a run a step starts must still be
    # sent to the broker, not mistaken for that continuation.
    parent, _ = workflow_start(kind="test.parent")
    done = finished(parent.id)
    child = finished(uuid.UUID(done.outputs["spawn"]["child"]))
    assert effects(parent.id) == {"after": 1}
    assert effects(child.id) == {"reserve": 1, "no_undo": 1, "charge": 1, "send": 1}
