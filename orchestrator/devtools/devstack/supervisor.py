"""Keeps `manage.py up`'s children running: the application's processes are restarted when
they die, the servers they depend on are not.

A worker, beat, the web server or the example executor holds nothing that a restart loses: the
engine's journal, the relayer's rows and the broker's unacknowledged messages carry the work
over (that is what the kill tests prove). PostgreSQL, Valkey and anvil are another matter: a
restart under running clients would hide a crash that the developer needs to see, so their
death stops everything, with the message naming which one died.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from orchestrator.devtools.devstack.console import Journal
from orchestrator.devtools.devstack.rundir import RunDir
from orchestrator.devtools.processes import ManagedProcess, ProcessFailed

RESTARTABLE = frozenset({"worker", "beat", "web", "executor"})
# A child that dies this often within the window is crash-looping: restarting it again only
# fills the log, so everything stops and the developer reads why.
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 120.0
TAIL_LINES = 15


class Supervisor:
    def __init__(
        self,
        *,
        children: list[ManagedProcess],
        rundir: RunDir,
        journal: Journal,
        held: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self.children = children
        self.rundir = rundir
        self.journal = journal
        # Holds Ctrl-C back while a child starts, so none is left that nobody stops.
        self.held = held
        self.restarts: dict[str, list[float]] = {}  # recent restarts' times, per child
        self.restart_counts: dict[str, int] = {}

    def spawn(self, child: ManagedProcess) -> ManagedProcess:
        with self.held():
            if child not in self.children:
                self.children.append(child)
            child.start()
            self.rundir.record(child)
        return child

    def watch(self, *, poll_seconds: float = 1.0) -> None:
        """Returns never; raises ProcessFailed when a server dies or a child crash-loops."""
        while True:
            self.check_once()
            time.sleep(poll_seconds)

    def check_once(self) -> None:
        for child in list(self.children):
            if not child.alive:
                self._handle_death(child)

    def _handle_death(self, child: ManagedProcess) -> None:
        how = child.how_it_ended()
        tail = _indent(child.tail(TAIL_LINES))
        if child.name not in RESTARTABLE:
            raise ProcessFailed(f"{child.name} {how}; stopped everything else. Last lines of {child.log_path}:\n{tail}")
        now = time.monotonic()
        recent = [t for t in self.restarts.get(child.name, []) if now - t < RESTART_WINDOW_SECONDS]
        if len(recent) >= MAX_RESTARTS:
            raise ProcessFailed(
                f"{child.name} {how}, its {len(recent) + 1}th death in {RESTART_WINDOW_SECONDS:.0f} s; "
                f"stopped everything. Last lines of {child.log_path}:\n{tail}"
            )
        self.restarts[child.name] = [*recent, now]
        self.restart_counts[child.name] = count = self.restart_counts.get(child.name, 0) + 1
        self.journal.warn(f"{child.name} died ({how}); restarting it (restart {count}). Last lines of its log:\n{tail}")
        child.kill_group()
        self.spawn(child)

    def stop_all(self) -> Iterator[tuple[ManagedProcess, float | Exception]]:
        """Stops the children in reverse start order: nothing new comes in before a consumer goes
        away, and the worker finishes its current tasks while the servers are still there.
        Yields each child with the seconds its stop took, or the error that stopped it."""
        for child in reversed(self.children):
            started = time.monotonic()
            try:
                child.stop()
            except Exception as exc:  # keep going: the others must still be stopped
                yield child, exc
                continue
            self.rundir.forget(child)
            yield child, time.monotonic() - started
        self.children.clear()


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())
