"""Leases and dead workers: a worker killed holding a leased step's lease gives it back at the
next sweep (its PostgreSQL session, and the advisory lock the claim took on it, ended with
it); a worker that is slow but alive keeps it, whatever the sweep does meanwhile."""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from orchestrator.engine.models import Phase, StepStatus, WorkflowRun
from orchestrator.engine.services import workflow_start, workflow_sweep
from orchestrator.engine.services.leases import LEASE_LOCK_CLASS, lease_locks_held, server_started
from tests.conftest import Workers, wait_until
from tests.factories import WorkflowRunFactory
from tests.support import control
from tests.support.models import Effect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.engine]

# The sweep in these tests never re-dispatches a run for being stalled: only a dead holder counts.
NEVER_STALLED = 3600.0


def _held_by(run_id: uuid.UUID) -> int:
    """The pid of the pool process holding the run's lease, from its lease_owner."""
    run = wait_until(
        lambda: WorkflowRun.objects.filter(pk=run_id, lease_lock__isnull=False).first(), message="the lease"
    )
    return int(run.lease_owner.rsplit(":", 1)[1])


@pytest.mark.parametrize("victim", ["pool child", "main process"])
def test_a_worker_killed_holding_a_lease_has_its_step_run_again_by_another_within_seconds(
    workers: Workers, victim: str
) -> None:
    dying = workers.start()
    run, _ = workflow_start(kind="test.long_lease", input={"hold": "call"})
    wait_until(lambda: control.is_set(f"entered:{run.id}:call:1"), message="call to start")
    holder = _held_by(run.id)
    assert holder != dying.pid  # a pool child holds it; its parent goes on beating
    workers.start()
    # The main process takes its pool children with it (Celery sets PDEATHSIG on them).
    os.kill(holder if victim == "pool child" else dying.pid or 0, signal.SIGKILL)
    killed_at = time.monotonic()
    control.signal(f"release:{run.id}")

    def swept() -> int:
        return workflow_sweep(stall_seconds=NEVER_STALLED).orphaned

    wait_until(swept, timeout=15, interval=0.5, message="the sweep to take the lease back")
    done = wait_until(
        lambda: WorkflowRun.objects.filter(pk=run.id, phase=Phase.COMPLETED).first(),
        timeout=15,
        message="the run to finish on the other worker",
    )
    assert time.monotonic() - killed_at < 15
    calls = list(done.steps.filter(name="call").order_by("id").values_list("status", "error"))
    assert calls == [(StepStatus.FAILED, "lease expired; superseded by a later attempt"), (StepStatus.DONE, "")]
    assert control.count(f"calls:{run.id}:call") == 2  # once by the dead worker, once after it
    assert Effect.objects.filter(run_id=run.id, name="call").count() == 1  # idempotent through its key
    assert done.lease_lock is None and done.lease_owner == ""


def test_a_slow_worker_keeps_its_lease_while_the_sweep_runs(workers: Workers) -> None:
    workers.start()
    run, _ = workflow_start(kind="test.long_lease", input={"hold": "call"})
    wait_until(lambda: control.is_set(f"entered:{run.id}:call:1"), message="call to start")
    leased = WorkflowRun.objects.get(pk=run.id)
    # The step is blocked (as on a slow RPC) while the sweep runs again and again, with no
    # stall threshold at all: the lock says its holder lives, so nothing takes the run.
    for _ in range(10):
        result = workflow_sweep(stall_seconds=0)
        assert (result.orphaned, result.stalled) == (0, 0)
        time.sleep(0.3)
    assert WorkflowRun.objects.get(pk=run.id).lease_lock == leased.lease_lock
    control.signal(f"release:{run.id}")
    done = wait_until(
        lambda: WorkflowRun.objects.filter(pk=run.id, phase=Phase.COMPLETED).first(), message="the run to finish"
    )
    assert control.count(f"calls:{run.id}:call") == 1
    assert list(done.steps.filter(name="call").values_list("status", flat=True)) == [StepStatus.DONE]


def _leased_run(*, lease_lock: int, lease_server: object) -> WorkflowRun:
    now = timezone.now()
    return WorkflowRunFactory.create(
        kind="test.long_lease",
        current_step=1,
        step_name="call",
        due_at=now,
        dispatched_at=now,
        lease_until=now + timedelta(minutes=10),
        lease_lock=lease_lock,
        lease_server=lease_server,
        lease_owner="elsewhere:1",
    )


def test_a_lease_whose_lock_no_session_holds_is_taken_back_and_one_still_held_is_not() -> None:
    started = server_started()
    orphan = _leased_run(lease_lock=11, lease_server=started)
    alive = _leased_run(lease_lock=12, lease_server=started)
    with connection.cursor() as cursor:  # this test's own session holds the second one
        cursor.execute("SELECT pg_advisory_lock(%s, 12)", [LEASE_LOCK_CLASS])
    try:
        assert lease_locks_held([11, 12]) == {12}
        assert workflow_sweep(stall_seconds=NEVER_STALLED).orphaned == 1
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, 12)", [LEASE_LOCK_CLASS])
    taken = WorkflowRun.objects.get(pk=orphan.pk)
    assert taken.lease_lock is None and taken.lease_until is not None and taken.lease_until <= timezone.now()
    assert orphan.dispatched_at is not None and taken.dispatched_at is not None
    assert taken.dispatched_at > orphan.dispatched_at
    assert WorkflowRun.objects.get(pk=alive.pk).lease_lock == 12


def test_a_lease_taken_before_the_database_restarted_waits_for_its_time() -> None:
    # Every session ended with the restart, its worker's too, which may still be at work.
    before = server_started() - timedelta(hours=1)
    run = _leased_run(lease_lock=13, lease_server=before)
    assert workflow_sweep(stall_seconds=NEVER_STALLED).orphaned == 0
    assert WorkflowRun.objects.get(pk=run.pk).lease_lock == 13
