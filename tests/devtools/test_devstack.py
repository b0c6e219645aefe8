"""`make run`'s own machinery, piece by piece: the embedded PostgreSQL and Valkey servers, the run
folder's lock and pid files, and the supervisor's restart rules. The whole of `make run` under
load is tests/e2e/test_make_run.py."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from orchestrator.devtools.devstack.console import Journal
from orchestrator.devtools.devstack.embedded import EmbeddedPostgres, EmbeddedUnavailable, EmbeddedValkey
from orchestrator.devtools.devstack.rundir import AlreadyRunning, RunDir
from orchestrator.devtools.devstack.supervisor import MAX_RESTARTS, Supervisor
from orchestrator.devtools.processes import ManagedProcess, ProcessFailed
from tests.conftest import free_port, wait_until


def sleeper(name: str, tmp_path: Path) -> ManagedProcess:
    return ManagedProcess(
        name, [sys.executable, "-c", "import time; time.sleep(300)"], log_path=tmp_path / f"{name}.log"
    )


def supervisor_for(tmp_path: Path, children: list[ManagedProcess]) -> Supervisor:
    rundir = RunDir(tmp_path)
    rundir.path.mkdir(parents=True, exist_ok=True)
    journal = Journal(BaseCommand(), tmp_path / "log" / "up.log")
    return Supervisor(children=children, rundir=rundir, journal=journal, held=lambda: _nothing())


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- the run folder -----------------------------------------------------------------------


def test_a_second_up_in_the_same_folder_is_told_that_one_is_running(tmp_path: Path, monkeypatch) -> None:
    first = RunDir(tmp_path)
    first.lock()
    with pytest.raises(AlreadyRunning, match=f"already running in this folder \\(pid {os.getpid()}"):
        RunDir(tmp_path).lock()
    # Through the command: it stops before touching anything else under VAR_DIR.
    monkeypatch.setattr("django.conf.settings.VAR_DIR", tmp_path)
    with pytest.raises(CommandError, match="already running"):
        call_command("up", "--check")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.stack  # starts its processes by hand
def test_leftovers_of_a_killed_run_are_stopped_and_strangers_left_alone(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    rundir.path.mkdir(parents=True)
    leftover = sleeper("worker", tmp_path)
    # Started from another thread: no parent-death signal, as where the platform has none.
    starter = threading.Thread(target=leftover.start)
    starter.start()
    starter.join()
    rundir.record(leftover)
    # A pid file whose process started at another time names a pid reused by a stranger.
    stranger = psutil.Process(os.getpid())
    (rundir.path / "web.pid").write_text(f"{stranger.pid} {stranger.create_time() - 100} 15\n")

    said: list[str] = []
    assert rundir.stop_leftovers(said.append) == 1
    leftover.wait(10)
    assert said == [f"worker (pid {leftover.pid}) was left running by a `make run` that was killed; stopping it"]
    assert stranger.is_running()
    assert list(rundir.path.glob("*.pid")) == []


# --- the supervisor -----------------------------------------------------------------------


@pytest.mark.stack  # starts its processes by hand
def test_a_dead_worker_is_restarted_and_its_death_logged(tmp_path: Path) -> None:
    # Like a Celery worker or a gunicorn master: a leader with a child of its own in its group.
    pool_pid = tmp_path / "pool.pid"
    script = f"sleep 300 & echo $! > {pool_pid}; wait"
    worker = ManagedProcess("worker", ["sh", "-c", script], log_path=tmp_path / "worker.log")
    supervisor = supervisor_for(tmp_path, [])
    supervisor.spawn(worker)
    first_pid = worker.pid
    try:
        wait_until(pool_pid.exists, timeout=10, message="the pool child")
        pool = psutil.Process(int(pool_pid.read_text()))
        assert supervisor.rundir.pid_of("worker") == first_pid
        os.kill(first_pid, signal.SIGKILL)
        worker.wait(5)
        assert pool.is_running()  # orphaned: it would hold the port or the tasks of the dead one
        supervisor.check_once()
        assert not pool.is_running() or pool.status() == psutil.STATUS_ZOMBIE
        assert worker.alive and worker.pid != first_pid
        assert supervisor.rundir.pid_of("worker") == worker.pid
        log = (tmp_path / "log" / "up.log").read_text()
        assert "WARNING worker died (was killed by SIGKILL); restarting it (restart 1)" in log
    finally:
        list(supervisor.stop_all())
    assert supervisor.rundir.pid_of("worker") is None


@pytest.mark.stack  # starts its processes by hand
def test_a_crash_looping_child_stops_everything(tmp_path: Path) -> None:
    crashing = ManagedProcess("beat", [sys.executable, "-c", "raise SystemExit(3)"], log_path=tmp_path / "beat.log")
    supervisor = supervisor_for(tmp_path, [])
    supervisor.spawn(crashing)
    with pytest.raises(ProcessFailed, match=r"beat exited \(3\), its 6th death"):
        for _ in range(MAX_RESTARTS + 1):
            crashing.wait(10)
            supervisor.check_once()


@pytest.mark.stack  # starts its processes by hand
def test_a_dead_server_stops_everything_naming_it(tmp_path: Path) -> None:
    database = sleeper("postgres", tmp_path)
    supervisor = supervisor_for(tmp_path, [])
    supervisor.spawn(database)
    database.kill()
    database.wait(5)
    with pytest.raises(ProcessFailed, match="postgres was killed by SIGKILL; stopped everything else"):
        supervisor.check_once()


# --- the embedded servers -----------------------------------------------------------------


@pytest.mark.stack  # starts its processes by hand
def test_embedded_postgres_keeps_its_data_and_recovers_from_a_stale_lock(tmp_path: Path) -> None:
    server = EmbeddedPostgres(var_dir=tmp_path, port=free_port(), database="demo")
    assert server.prepare(say=print).startswith("initialised")
    process = server.process().start().wait_ready(30)
    try:
        assert server.ensure_database() is True
        assert server.ensure_database() is False
        with psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="demo") as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        process.kill()  # as a crash would: postmaster.pid stays behind
        process.wait(10)
    finally:
        process.stop()
    # The dead server's pid now names a live process that is not PostgreSQL (this one).
    lock = server.data_dir / "postmaster.pid"
    lines = lock.read_text().splitlines()
    lock.write_text("\n".join([str(os.getpid()), *lines[1:]]) + "\n")

    again = EmbeddedPostgres(var_dir=tmp_path, port=server.port, database="demo")
    assert again.prepare(say=print).startswith("data kept")
    process = again.process().start().wait_ready(30)
    try:
        with psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="demo") as conn:
            assert conn.execute("SELECT n FROM kept").fetchone() == (42,)
    finally:
        process.stop()
    assert not lock.exists()  # a clean (fast) shutdown


def test_embedded_postgres_refuses_a_folder_that_is_not_a_cluster(tmp_path: Path) -> None:
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddedUnavailable, match="holds no PostgreSQL cluster"):
        EmbeddedPostgres(var_dir=tmp_path, port=free_port(), database="demo").prepare(say=print)
    assert (tmp_path / "postgres" / "notes.txt").read_text() == "mine"


@pytest.mark.stack  # starts its processes by hand
def test_embedded_valkey_keeps_queued_messages_across_a_restart(tmp_path: Path) -> None:
    server = EmbeddedValkey(var_dir=tmp_path, port=free_port())
    process = server.process().start().wait_ready(30)
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        client.lpush("celery", "a message")
    finally:
        process.stop()
    process = server.process().start().wait_ready(30)
    try:
        assert client.lrange("celery", 0, -1) == [b"a message"]
    finally:
        process.stop()
