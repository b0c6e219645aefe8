"""Starting and stopping the system's processes: used by `manage.py up`, the benchmarks and the
test suite, so all three run the same worker, beat and anvil command lines."""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings


class ProcessFailed(RuntimeError):
    pass


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: the kernel sends it SIGTERM when the process
    that started it dies, even by SIGKILL, so a killed `manage.py up` or test run leaves no
    server running behind it. Linux only; elsewhere the next start cleans up (devstack.pidfiles)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def as_user(user: str | None) -> dict[str, Any]:
    """subprocess arguments that run a child as `user`, with that user's group and no other: a
    child left in root's group would be refused where root's group has no access."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        ready_text: str | None = None,
        ready_check: Callable[[], bool] | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.ready_text = ready_text
        self.ready_check = ready_check
        # Run as this system user (PostgreSQL refuses to run as root).
        self.user = user
        # What asks it to stop cleanly: SIGTERM for most; PostgreSQL's fast shutdown is SIGINT
        # (its SIGTERM waits for every client to disconnect).
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None
        # Where this start's output begins in the log: the log is appended to across restarts,
        # and a "ready." line from an earlier start must not count.
        self._log_start = 0

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._log_start = log.tell()
        # Its own session: a signal to the group reaches the worker's children too.
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            cwd=settings.BASE_DIR,
            **as_user(self.user),
            # The kernel ties this to the thread that forks, not the process: a child started
            # from a short-lived thread would be killed when that thread ends.
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def wait(self, timeout: float) -> int:
        """Waits for the process to end; its return code (raises subprocess.TimeoutExpired)."""
        if self.proc is None:
            raise ProcessFailed(f"{self.name} was never started")
        return self.proc.wait(timeout=timeout)

    def how_it_ended(self) -> str:
        """'was killed by SIGKILL' or 'exited (1)', for a process that is no longer alive."""
        code = self.proc.returncode if self.proc is not None else None
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited ({code})"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> ManagedProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise ProcessFailed(f"{self.name} exited early; see {self.log_path}:\n{self.tail()}")
            if self.ready_check is not None and self.ready_check():
                return self
            if self.ready_text is not None and self.ready_text in self._log_text():
                return self
            time.sleep(0.1)
        raise ProcessFailed(f"{self.name} not ready after {timeout}s; see {self.log_path}:\n{self.tail()}")

    def _log_text(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self._log_text().splitlines()[-lines:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.alive:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill_group(self, timeout: float = 5.0) -> None:
        """SIGKILLs what is left of a dead process's group and waits until it is gone: a killed
        gunicorn master's workers would otherwise go on holding the port, a killed worker's
        pool children its tasks."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
            while time.monotonic() < deadline:
                os.killpg(self.proc.pid, 0)  # raises ProcessLookupError once the group is empty
                time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> None:
        """Stops the process and everything in its process group.

        SIGTERM goes to the group leader first so it shuts its own children down in order: a
        Celery worker's warm shutdown lets running tasks finish and then ends its pool. A
        SIGTERM to the whole group at once also hits the pool processes, and the worker then
        sometimes hangs at exit on a lock a dead pool process held. Whatever is left after the
        timeout, or outlived the leader, gets SIGKILL."""
        if self.proc is None:
            return
        if self.alive:
            os.kill(self.proc.pid, self.stop_signal)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        if self.alive:
            self.kill(signal.SIGKILL)
            self.proc.wait(timeout=5)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _celery(*args: str) -> list[str]:
    """`celery -A orchestrator ...` in this interpreter, so a virtualenv need not be activated."""
    return [sys.executable, "-m", "celery", "-A", "orchestrator", *args, "-l", "INFO"]


def celery_worker(
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    queues: str = "workflows,triggers,relay",
    concurrency: int = 2,
    name: str = "worker",
    extra: list[str] | None = None,
) -> ManagedProcess:
    argv = _celery(
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-n",
        f"{name}-{os.getpid()}-{time.time_ns()}@%h",
        "--without-gossip",
        "--without-mingle",
        *(extra or []),
    )
    return ManagedProcess(name, argv, log_path=log_path, env=env, ready_text=" ready.")


def celery_beat(*, log_path: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    argv = _celery("beat", "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler", "--pidfile", "")
    return ManagedProcess("beat", argv, log_path=log_path, env=env, ready_text="beat: Starting")


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            # trust_env=False: an HTTP(S)_PROXY in the developer's shell must not catch localhost.
            return httpx.get(url, timeout=1, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def web_server(
    *, port: int, log_path: Path, env: dict[str, str] | None = None, workers: int = 2, threads: int = 8
) -> ManagedProcess:
    """gunicorn as production runs it: gthread workers, so the threads of a process share its
    bounded connection pool (DB_POOL_MAX_SIZE) and a burst of clients waits in the listen
    backlog instead of opening connections without end. Ready when /healthz answers."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "orchestrator.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--timeout",
        "60",
        "--graceful-timeout",
        "20",
        "--access-logfile",
        "-",
        "--error-logfile",
        "-",
    ]
    return ManagedProcess(
        "web", argv, log_path=log_path, env=env, ready_check=http_ok(f"http://127.0.0.1:{port}/healthz")
    )


def anvil_binary() -> Path:
    path = Path(settings.BASE_DIR) / "node_modules" / ".bin" / "anvil"
    if not path.exists():
        raise ProcessFailed(f"anvil is not installed at {path}; run `make install`.")
    return path


def rpc_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            response = httpx.post(
                url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1
            )
            return "result" in response.json()
        except (httpx.HTTPError, ValueError):
            return False

    return check


def anvil(*, port: int, log_path: Path, extra: list[str] | None = None) -> ManagedProcess:
    argv = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(port), *(extra or [])]
    return ManagedProcess("anvil", argv, log_path=log_path, ready_check=rpc_ready(f"http://127.0.0.1:{port}"))
