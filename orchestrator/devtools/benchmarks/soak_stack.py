"""The system under soak, started as a developer starts it: `manage.py up` (or `make run`) in a
subprocess on the embedded default (no DATABASE_URL, no CELERY_BROKER_URL), with a fresh
VAR_DIR and free ports. Reads what `up` prints (the summary, deaths and restarts), the pid
files it keeps in VAR_DIR/run, and each child's memory and open files."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import environ
import psutil
from django.conf import settings
from django.db import connections

from orchestrator.devtools.benchmarks import common
from orchestrator.devtools.benchmarks.soak_report import Death, Sample, deaths

SERVICES = ("DATABASE_URL", "CELERY_BROKER_URL")
# Children `up` restarts when they die (the others stop everything).
SUPERVISED = ("worker", "beat", "web", "executor")
UP_IS_UP = "Vault Orchestrator is up."
# Where the soak reads the system's records: a second alias, so nothing of the bench's own
# settings (or the test database) is touched.
ALIAS = "soak"


@dataclass(frozen=True)
class Ports:
    web: int
    anvil: int
    executor: int
    postgres: int
    redis: int

    @classmethod
    def free(cls) -> Ports:
        ports: set[int] = set()
        while len(ports) < 5:
            ports.add(common.free_port())
        return cls(*ports)


@dataclass(frozen=True)
class Summary:
    """What `up` prints once everything runs."""

    token: str
    approvers: dict[str, str]  # login -> password
    proposal: str
    subscription: str

    @classmethod
    def parse(cls, text: str) -> Summary:
        token = re.search(r"API token\s+(\w+)", text)
        proposal = re.search(r"Proposal\s+(PROP-[\w-]+)", text)
        subscription = re.search(r"subscription ([0-9a-f-]{36})", text)
        if not (token and proposal and subscription):
            raise RuntimeError(f"cannot read up's summary:\n{text[-3000:]}")
        approvers = dict(re.findall(r"(approver\d) / (\S+)", text))
        return cls(token.group(1), approvers, proposal.group(1), subscription.group(1))


class Output:
    """Collects a process's output from a thread (a full pipe would block it), with the time
    each line was read."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append((time.time(), line.rstrip("\n")))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in list(self.lines))


@dataclass
class Stopped:
    returncode: int | None
    seconds: float
    output_ok: bool  # "Stopping ..." and no forced kill
    left_running: list[str] = field(default_factory=list)
    listening: list[int] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.returncode == 0 and self.output_ok and not self.left_running and not self.listening


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def use_database(url: str, alias: str = ALIAS) -> str:
    """Registers `url` as the database alias `alias` of this process and returns the alias."""
    config = environ.Env.db_url_config(url)
    config.setdefault("OPTIONS", {})["connect_timeout"] = 5
    connections.settings[alias] = connections.configure_settings({"default": config})["default"]
    with suppress(AttributeError):  # a connection made for an earlier stack's database
        del connections[alias]
    return alias


class Stack:
    """`up` in a subprocess. `argv` defaults to `python manage.py up`; the smoke test passes
    `make run`. With `external`, DATABASE_URL and CELERY_BROKER_URL are kept from this
    environment (servers of your own) instead of the embedded ones."""

    def __init__(
        self,
        *,
        var_dir: Path,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        external: bool = False,
    ) -> None:
        self.var_dir = var_dir
        self.ports = Ports.free()
        self.argv = argv or [sys.executable, "manage.py", "up"]
        self.external = external
        drop = {"DJANGO_SETTINGS_MODULE", *(() if external else SERVICES)}
        self.env = (
            {k: v for k, v in os.environ.items() if k not in drop}
            | {
                "PORT": str(self.ports.web),
                "ANVIL_PORT": str(self.ports.anvil),
                "EXAMPLE_EXECUTOR_PORT": str(self.ports.executor),
                "EMBEDDED_POSTGRES_PORT": str(self.ports.postgres),
                "EMBEDDED_REDIS_PORT": str(self.ports.redis),
                "VAR_DIR": str(var_dir),
                "PYTHONUNBUFFERED": "1",
                # The soak's own executor listens on 127.0.0.1 over http, as the example executor does.
                "AUTOMATION_ALLOW_INSECURE_DESTINATIONS": "1",
                "AUTOMATION_ALLOW_PRIVATE_DESTINATIONS": "1",
                # Flow A: a feed every 10 s instead of 30 s.
                "ORACLE_PULL_SECONDS": "10",
            }
            | (env or {})
        )
        self.proc: subprocess.Popen[str] | None = None
        self.output: Output | None = None
        self.started_at = 0.0
        self.seen: dict[int, str] = {}  # every child pid seen, for the check after the stop

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.web}"

    @property
    def database_url(self) -> str:
        if self.external:
            return os.environ["DATABASE_URL"]
        return f"postgres://postgres@127.0.0.1:{self.ports.postgres}/vault_orchestrator"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def text(self) -> str:
        return self.output.text if self.output else ""

    def start(self, *, timeout: float = 600.0) -> Summary:
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=settings.BASE_DIR,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the SIGINT of a Ctrl-C goes to it alone
        )
        assert self.proc.stdout is not None
        self.output = Output(self.proc.stdout)
        deadline = time.monotonic() + timeout
        while UP_IS_UP not in self.text:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(timeout=60)
                raise RuntimeError(f"up did not come up (exit {self.proc.returncode}):\n{self.text[-4000:]}")
            time.sleep(0.2)
        time.sleep(1)  # the rest of the summary block
        return Summary.parse(self.text)

    def deaths(self) -> list[Death]:
        return deaths(list(self.output.lines) if self.output else [])

    def up_pid(self) -> int | None:
        pid = _read_pid(self.var_dir / "run" / "up.pid")
        if pid is not None or self.proc is None:
            return pid
        if "manage.py" in " ".join(self.argv):
            return self.proc.pid
        with suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                if "up" in child.cmdline() and any("manage.py" in a for a in child.cmdline()):
                    return child.pid
        return None

    def pids(self) -> dict[str, int]:
        """Each child's current pid, from VAR_DIR/run/<name>.pid (`up` rewrites it on a restart)."""
        found = {}
        run = self.var_dir / "run"
        for path in sorted(run.glob("*.pid")) if run.exists() else []:
            pid = _read_pid(path)
            if path.stem != "up" and pid is not None:
                found[path.stem] = pid
        for name, pid in found.items():
            self.seen.setdefault(pid, name)
        return found

    def stop(self, *, timeout: float = 180.0) -> Stopped:
        """Ctrl-C, as a developer stops it, and what is left afterwards."""
        assert self.proc is not None
        known = dict(self.seen)
        began = time.monotonic()
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        seconds = time.monotonic() - began
        if self.output:
            self.output.thread.join(timeout=5)
        time.sleep(1)
        text = self.text
        ok = "Stopping ..." in text and "Killing everything now" not in text
        returncode = self.proc.returncode
        if "manage.py" not in " ".join(self.argv):
            # make passes the SIGINT on and then dies of it itself; up's own failure it reports
            # as "make: *** [Makefile:49: run] Error 1".
            failed = re.search(r"make: \*\*\* \[[^\]]*\] Error (\d+)", text)
            returncode = (
                int(failed.group(1)) if failed else (0 if returncode in (-signal.SIGINT, 2, 130) else returncode)
            )
        return Stopped(
            returncode=returncode,
            seconds=seconds,
            output_ok=ok,
            left_running=left_running(known),
            listening=[p for p in vars(self.ports).values() if listening(p)],
        )


def left_running(known: dict[int, str]) -> list[str]:
    """Processes still alive among `known` (pid -> name) or in their process groups (each child
    leads its own group: a worker's pool, gunicorn's workers)."""
    groups = set(known)
    alive = []
    for proc in psutil.process_iter(["pid", "name", "status"]):
        with suppress(psutil.Error):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            pgid = os.getpgid(proc.info["pid"])
            if proc.info["pid"] in known or pgid in groups:
                owner = known.get(proc.info["pid"]) or known.get(pgid, "?")
                alive.append(f"{owner}: pid {proc.info['pid']} ({proc.info['name']})")
    return alive


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def tree_sample(name: str, pid: int, at: float) -> Sample | None:
    """Memory (PSS, so the pages a worker shares with its pool count once) and open files of a
    process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    rss = fds = 0
    for proc in procs:
        with suppress(psutil.Error):
            rss += proc.memory_full_info().pss
            fds += proc.num_fds()
    return Sample(at=at, name=name, pid=pid, rss=rss, fds=fds, procs=len(procs))


class Sampler:
    """Samples every child of the stack every `every` seconds, from a thread."""

    def __init__(self, stack: Stack, *, every: float = 5.0) -> None:
        self.stack = stack
        self.every = every
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> Sampler:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            for name, pid in self.stack.pids().items():
                sample = tree_sample(name, pid, now)
                if sample is not None:
                    self.samples.append(sample)
            self._stop.wait(self.every)
