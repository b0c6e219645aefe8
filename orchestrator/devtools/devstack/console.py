"""The terminal side of `manage.py up`: Ctrl-C handling and the "[n/N] step ... ok" lines."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from django.core.management.base import BaseCommand

from orchestrator.devtools.processes import ManagedProcess


class Shutdown(BaseException):
    """Raised in the main thread by the first SIGINT/SIGTERM.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way up
    (in a library or a ready check) can swallow the request to stop."""


# --- signals ------------------------------------------------------------------------------


class Signals:
    """First SIGINT/SIGTERM: a clean stop (raises Shutdown). Any signal once stopping has
    begun: SIGKILL every child's process group and exit at once.

    While a child is being spawned, the Shutdown is held back until the child is recorded:
    a Ctrl-C at that instant must not leave a process that nobody will stop."""

    def __init__(self, children: list[ManagedProcess]) -> None:
        self.children = children
        self.stopping = False
        self._held = False
        self._pending = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping or self._pending:
            self._kill_now()
        if self._held:
            self._pending = True
            return
        self.stopping = True
        raise Shutdown(signal.Signals(signum).name)

    def _kill_now(self) -> None:
        # os.write, not print: a signal handler may interrupt a print to the same stream.
        os.write(2, b"\nKilling everything now.\n")
        for child in self.children:
            if child.proc is not None:
                # The whole group, even if its leader is gone: a prefork pool may remain.
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
        os._exit(130)  # 128 + SIGINT: the shell's code for "interrupted"

    @contextmanager
    def held(self) -> Iterator[None]:
        self._held = True
        try:
            yield
        finally:
            self._held = False
        if self._pending:
            self._pending = False
            self.stopping = True
            raise Shutdown("signal received while starting a process")


# --- progress lines -----------------------------------------------------------------------


@dataclass
class StepOutcome:
    """What a step reports after "... ": "ok" unless the step says something more useful."""

    text: str = "ok"


class Progress:
    """Prints "[n/N] label ... ok (0.8s)" with the label shown before the step starts."""

    def __init__(self, command: BaseCommand, total: int) -> None:
        self.command = command
        self.total = total
        self.done = 0

    @contextmanager
    def step(self, label: str) -> Iterator[StepOutcome]:
        self.done += 1
        out = self.command.stdout
        out.write(f"[{self.done}/{self.total}] {label} ... ", ending="")
        out.flush()
        started = time.monotonic()
        outcome = StepOutcome()
        try:
            yield outcome
        except Shutdown:
            out.write("interrupted")
            raise
        except BaseException:
            out.write(self.command.style.ERROR("FAILED"))
            raise
        elapsed = time.monotonic() - started
        out.write(f"{self.command.style.SUCCESS(outcome.text)} ({elapsed:.1f}s)")


class Journal:
    """What `up` says about its children after start-up (deaths, restarts, leftovers): on the
    terminal and, with a timestamp, in VAR_DIR/log/up.log, where it outlives the terminal."""

    def __init__(self, command: BaseCommand, path: Path) -> None:
        self.command = command
        self.path = path

    def say(self, text: str, *, warning: bool = False) -> None:
        self.command.stdout.write(self.command.style.WARNING(text) if warning else text)
        self.record("WARNING" if warning else "INFO", text)

    def record(self, level: str, text: str) -> None:
        """Only in the log: for what the terminal shows another way (a CommandError)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        with self.path.open("a") as log:
            log.write(f"{stamp} {level} {text}\n")

    def warn(self, text: str) -> None:
        self.say(text, warning=True)
