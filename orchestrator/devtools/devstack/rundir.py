"""VAR_DIR/run: the lock that keeps one `manage.py up` per folder, and a pid file per child.

The lock is an flock on VAR_DIR/run/up.lock held for as long as `up` runs: the kernel drops it
when `up` dies, however it dies, so a stale lock never blocks the next start. The pid files
let the next start find what a killed `up` left running (its children run in sessions of their
own, so they outlive it where the kernel's parent-death signal is not available) and stop it
before it reuses the ports and the data folders. A pid file names the process's start time as
well: a pid the system has since given to another process is left alone.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO

import psutil

from orchestrator.devtools.processes import ManagedProcess

LEFTOVER_STOP_SECONDS = 15.0


class AlreadyRunning(RuntimeError):
    pass


class RunDir:
    def __init__(self, var_dir: Path) -> None:
        self.path = var_dir / "run"
        self._lock_file: IO[str] | None = None

    def lock(self) -> None:
        """Raises AlreadyRunning, naming the running `up`'s pid, if another holds the folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock_file = (self.path / "up.lock").open("a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            pid = (self.path / "up.pid").read_text().strip() if (self.path / "up.pid").exists() else "?"
            raise AlreadyRunning(
                f"`make run` is already running in this folder (pid {pid}, using {self.path.parent}). "
                f"Use that one, stop it with Ctrl-C in its terminal (or `kill {pid}`), or give this one "
                "another VAR_DIR and other ports."
            ) from None
        self._lock_file = lock_file  # held until this process exits
        (self.path / "up.pid").write_text(f"{os.getpid()}\n")

    def record(self, child: ManagedProcess) -> None:
        if child.pid is None:
            return
        started = psutil.Process(child.pid).create_time()
        (self.path / f"{child.name}.pid").write_text(f"{child.pid} {started} {int(child.stop_signal)}\n")

    def forget(self, child: ManagedProcess) -> None:
        (self.path / f"{child.name}.pid").unlink(missing_ok=True)

    def pid_of(self, name: str) -> int | None:
        try:
            return int((self.path / f"{name}.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def stop_leftovers(self, say: Callable[[str], None]) -> int:
        """Stops every process a previous, killed `up` left running; returns how many.

        Application processes first, the servers they use last (the pid files' order does not
        matter: each is stopped with the signal it was started to stop with)."""
        found: list[tuple[str, psutil.Process, int]] = []
        for pid_file in sorted(self.path.glob("*.pid")):
            if pid_file.name == "up.pid":
                continue
            process, stop_signal = _leftover(pid_file)
            if process is not None:
                found.append((pid_file.stem, process, stop_signal))
            pid_file.unlink()
        servers = {"postgres", "valkey", "anvil"}
        found.sort(key=lambda item: item[0] in servers)
        for name, process, stop_signal in found:
            say(f"{name} (pid {process.pid}) was left running by a `make run` that was killed; stopping it")
            _stop_group(process, stop_signal)
        return len(found)


def _leftover(pid_file: Path) -> tuple[psutil.Process | None, int]:
    try:
        pid_text, started_text, signal_text = pid_file.read_text().split()
        process = psutil.Process(int(pid_text))
        # Start times are stored with the same float psutil reports; allow for rounding.
        if abs(process.create_time() - float(started_text)) > 0.5:
            return None, 0
        return process, int(signal_text)
    except (ValueError, psutil.Error):
        return None, 0


def _stop_group(process: psutil.Process, stop_signal: int) -> None:
    with suppress(psutil.Error):
        process.send_signal(stop_signal)
        try:
            process.wait(LEFTOVER_STOP_SECONDS)
        except psutil.TimeoutExpired:
            process.kill()
    # Its own children (a worker's pool, gunicorn's workers) were in its process group.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    time.sleep(0.1)
