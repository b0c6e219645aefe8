"""Starting and stopping the system's processes: used by `manage.py up`, the benchmarks and the
test suite, so all three run the same worker, beat and anvil command lines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import httpx
from django.conf import settings


class ProcessFailed(RuntimeError):
    pass


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
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.ready_text = ready_text
        self.ready_check = ready_check
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        # Its own session: a signal to the group reaches the worker's children too.
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            cwd=settings.BASE_DIR,
        )
        log.close()
        return self

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
            return self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self._log_text().splitlines()[-lines:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.alive:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

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
            os.kill(self.proc.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        if self.alive:
            self.kill(signal.SIGKILL)
            self.proc.wait(timeout=5)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def celery_worker(
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    queues: str = "workflows,triggers,relay",
    concurrency: int = 2,
    name: str = "worker",
    extra: list[str] | None = None,
) -> ManagedProcess:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "orchestrator",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-n",
        f"{name}-{os.getpid()}-{time.time_ns()}@%h",
        "-l",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        *(extra or []),
    ]
    return ManagedProcess(name, argv, log_path=log_path, env=env, ready_text=" ready.")


def celery_beat(*, log_path: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "orchestrator",
        "beat",
        "-l",
        "INFO",
        "--scheduler",
        "django_celery_beat.schedulers:DatabaseScheduler",
        "--pidfile",
        "",
    ]
    return ManagedProcess("beat", argv, log_path=log_path, env=env, ready_text="beat: Starting")


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
