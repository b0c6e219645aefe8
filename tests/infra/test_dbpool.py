"""Connection pools across fork (orchestrator/infra/dbpool.py): a child never uses, nor ends, the
sessions of the pool it inherited, and a real worker's pool children, forked by a main process
that writes heartbeats, run steps."""

from __future__ import annotations

import os
from typing import Any, cast

import psutil
import pytest
from django.db import connection
from django.db.backends.postgresql.base import DatabaseWrapper

from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import workflow_start
from orchestrator.infra.heartbeats import WORKER_PREFIX
from orchestrator.infra.models import Heartbeat
from tests.conftest import Workers, wait_until


def _backend_pid(conn: Any) -> int:
    return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def _in_child(check: Any) -> tuple[int, str]:
    """Runs `check` in a forked child; returns its exit status and what it wrote."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        os.close(read)
        status = 1
        try:
            os.write(write, str(check()).encode())
            status = 0
        except BaseException as exc:
            os.write(write, repr(exc).encode())
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), said


@pytest.mark.django_db(transaction=True)
def test_a_forked_child_starts_its_own_pool_and_leaves_the_parents_sessions_alone() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own = cursor.fetchone()[0]
    pool = cast(Any, connection).pool
    assert pool is not None
    # Idle connections in the pool at the fork, as a web or worker process would have them.
    idle = [pool.getconn() for _ in range(3)]
    for conn in idle:
        pool.putconn(conn)
    parent_sessions = {own, *(_backend_pid(conn) for conn in idle)}

    def child() -> int:
        # The fork handler has run: nothing inherited is left to use.
        assert connection.connection is None and not cast(Any, DatabaseWrapper)._connection_pools
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return int(cursor.fetchone()[0])

    code, said = _in_child(child)

    assert code == 0, said
    assert int(said) not in parent_sessions
    # Every session of the parent still answers, on the same server process: the child sent
    # none of them a Terminate (closing a shared connection would have).
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] == own
    assert {_backend_pid(conn) for conn in idle} == parent_sessions - {own}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [list(parent_sessions)])
        assert {row[0] for row in cursor.fetchall()} == parent_sessions


def _last_heartbeat() -> Any:
    return Heartbeat.objects.filter(name__startswith=WORKER_PREFIX).order_by("-at").values_list("at", flat=True).first()


@pytest.mark.django_db(transaction=True)
@pytest.mark.engine
def test_a_pool_child_forked_after_the_main_process_wrote_heartbeats_runs_steps(workers: Workers) -> None:
    worker = workers.start(concurrency=1, extra_env={"WORKER_HEARTBEAT_SECONDS": "0.5"})
    assert worker.proc is not None
    main = psutil.Process(worker.proc.pid)
    first = wait_until(lambda: main.children(), message="the pool child")[0]
    seen = wait_until(_last_heartbeat, message="a first heartbeat")
    wait_until(lambda: _last_heartbeat() > seen, message="a second heartbeat")

    # The main process forks a replacement now, after its heartbeats used the database.
    first.kill()
    wait_until(lambda: [c for c in main.children() if c.pid != first.pid], message="a new pool child")

    run, _ = workflow_start(kind="test.effects", input={})
    wait_until(
        lambda: WorkflowRun.objects.filter(pk=run.id, phase=Phase.COMPLETED).exists(),
        message="the run to complete in the new child",
    )
    seen = _last_heartbeat()
    wait_until(lambda: _last_heartbeat() > seen, message="heartbeats after the fork")
    assert "Traceback" not in worker.tail(200)


@pytest.mark.django_db(transaction=True)
def test_a_connection_the_database_dropped_is_replaced_before_the_next_task() -> None:
    from django.db import DatabaseError

    from orchestrator.infra.dbpool import broken_connections_drop

    connection.ensure_connection()
    dead = _backend_pid(connection.connection)
    # As a database restart would: the server ends the session under the worker's feet.
    with cast(DatabaseWrapper, connection).pool.connection() as other:
        other.execute("SELECT pg_terminate_backend(%s)", [dead])
    with pytest.raises(DatabaseError), connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert connection.errors_occurred

    broken_connections_drop()  # what every task's prerun does

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != dead
