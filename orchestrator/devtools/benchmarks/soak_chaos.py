"""kill -9 of `up`'s children during a soak, one after the other, as a developer would do it
with `kill -9 <pid>` (the pid from VAR_DIR/run/<name>.pid); each must come back."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from orchestrator.devtools.benchmarks.soak_stack import Stack

# A restarted child counts as back once it has stayed up this long.
STABLE_SECONDS = 5.0


@dataclass
class Kill:
    name: str
    pid: int
    at: float
    restarted_at: float | None = None
    new_pid: int | None = None


class Chaos:
    """SIGKILLs the named children of `up` one after the other, as `kill -9 <pid>` would, and
    waits for each to be back (a new pid in its pid file)."""

    def __init__(self, stack: Stack, names: Sequence[str], *, seconds: float, out: Callable[[str], Any]) -> None:
        self.stack = stack
        self.names = list(names)
        self.at = [seconds * (i + 1) / (len(names) + 1) for i in range(len(names))]
        self.out = out
        self.kills: list[Kill] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-chaos", daemon=True)

    def start(self) -> Chaos:
        if self.names:
            self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=150)

    def _run(self) -> None:
        began = time.monotonic()
        for name, offset in zip(self.names, self.at, strict=True):
            if self._stop.wait(max(0.0, began + offset - time.monotonic())):
                return
            pid = self.stack.pids().get(name)
            if pid is None:
                self.out(f"  kill -9 {name}: no pid file")
                continue
            kill = Kill(name, pid, time.time())
            os.kill(pid, signal.SIGKILL)
            self.kills.append(kill)
            self._wait_back(kill)
            back = (
                f"back as {kill.new_pid} after {kill.restarted_at - kill.at:.1f} s" if kill.restarted_at else "NOT back"
            )
            self.out(f"  kill -9 {name} (pid {pid}): {back}")

    def _wait_back(self, kill: Kill) -> None:
        """Back: a new process that has stayed up for STABLE_SECONDS (the web server: answering
        /healthz), not merely one that was started and may fail at once."""
        deadline = time.monotonic() + 120
        seen: dict[int, float] = {}
        while time.monotonic() < deadline and not self._stop.is_set():
            new = self.stack.pids().get(kill.name)
            if new is not None and new != kill.pid and _alive(new):
                since = seen.setdefault(new, time.time())
                if time.time() - since >= STABLE_SECONDS and (kill.name != "web" or self._web_answers()):
                    kill.restarted_at, kill.new_pid = since, new
                    return
            time.sleep(0.2)

    def _web_answers(self) -> bool:
        try:
            return httpx.get(f"{self.stack.base_url}/healthz", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
