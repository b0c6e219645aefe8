"""./manage.py up: the whole system on one machine, in the foreground (what `make run` runs).

Starts anvil, migrates the database, makes a demo admin and API client, then runs the Celery
worker, beat and the web server as child processes whose output goes to VAR_DIR/log. Ctrl-C
or SIGTERM stops them in reverse order; if any child dies, the others are stopped too, so
nothing is ever left running behind the developer's back.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from celery.utils.nodenames import host_format
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError, connections
from kombu import Exchange, Queue

from orchestrator import processes
from orchestrator.celery import app as celery_app
from orchestrator.config import env_int
from orchestrator.processes import ManagedProcess, ProcessFailed

HOST = "127.0.0.1"
STEPS = 9
ADMIN_USERNAME = "admin"
API_CLIENT = "demo-client"
# Generous: the first start of a worker on a cold machine imports a lot (web3, Django).
READY_TIMEOUT = 60.0
# The example executor listens on 127.0.0.1 over plain http: a local demo, not production.
LOCAL_DESTINATIONS = ("AUTOMATION_ALLOW_INSECURE_DESTINATIONS", "AUTOMATION_ALLOW_PRIVATE_DESTINATIONS")


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


# --- small helpers ------------------------------------------------------------------------


def mask_password(url: str) -> str:
    """postgres://user:secret@host/db -> postgres://user:***@host/db (for printing)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            # trust_env=False: an HTTP(S)_PROXY in the developer's shell must not catch localhost.
            return httpx.get(url, timeout=1, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def rotate_log(path: Path) -> None:
    # ManagedProcess appends, and readiness is found by searching the log ("ready."): a line
    # from the previous run must not count. The previous run's log is kept as .1.
    if path.exists():
        path.replace(path.with_name(path.name + ".1"))


def uses_filesystem_broker() -> bool:
    return str(settings.CELERY_BROKER_URL).startswith("filesystem")


def forget_pidbox(worker: ManagedProcess) -> None:
    """Deletes a stopped worker's remote-control queue from the filesystem broker.

    The filesystem transport keeps a fanout binding until its queue is deleted, and a worker
    never deletes its own. Without this every run would leave one behind, and each later
    broadcast (`celery inspect`, a revoke) would write a message file that nobody reads."""
    node = host_format(worker.argv[worker.argv.index("-n") + 1])
    # What kombu's Mailbox.get_queue builds for Celery's "celery" namespace.
    exchange = Exchange("celery.pidbox", type="fanout", durable=False)
    queue = Queue(f"{node}.celery.pidbox", exchange, durable=False, auto_delete=True)
    with celery_app.connection_for_write() as conn:
        bound = queue(conn.default_channel)
        bound.declare()  # the channel only deletes bindings it knows about
        bound.delete()  # also purges the queue's leftover message files


@dataclass
class Layout:
    """Where this run keeps its files, all under VAR_DIR."""

    var_dir: Path

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def broker_dirs(self) -> list[Path]:
        options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
        keys = ("data_folder_in", "data_folder_out", "control_folder")
        # dict.fromkeys: unique and in order (in and out are the same folder by default).
        folders = dict.fromkeys(Path(str(options[key])).resolve() for key in keys if key in options)
        return list(folders)


@dataclass
class Running:
    """What the summary block shows once everything is up."""

    port: int
    chain: str
    chain_note: str = "CHAIN_RPC_URL, not managed here (--no-anvil)"
    admin_password: str | None = None
    token: str = ""
    # "approver1 / <password>" per demo approver, and the proposal waiting for them.
    approvers: list[str] = field(default_factory=list)
    proposal: str = ""
    executor: str = ""
    logs: list[Path] = field(default_factory=list)


# --- the command --------------------------------------------------------------------------


class Command(BaseCommand):
    help = "Start anvil, the database, a Celery worker, beat and the web server; Ctrl-C stops all."
    requires_system_checks = []  # runserver runs them in its own process

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-anvil",
            action="store_true",
            help="Do not start anvil (CHAIN_RPC_URL points at another node).",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Start everything, wait until it is ready, print the summary, stop, exit 0.",
        )

    def handle(self, *args: Any, no_anvil: bool, check: bool, **options: Any) -> None:
        try:
            port = env_int("PORT", 8000, minimum=1, maximum=65535)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        # The ready checks poll with httpx, which logs every request at INFO: noise here.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._preflight(port, no_anvil=no_anvil)
        layout = Layout(var_dir=Path(settings.VAR_DIR).resolve())
        children: list[ManagedProcess] = []
        signals = Signals(children)
        signals.install()
        try:
            running = self._start_all(layout, port, children, signals, no_anvil=no_anvil)
            self._print_summary(layout, running, check=check)
            if not check:
                self._watch(children)
        except Shutdown:
            self.stdout.write("")  # end the line after the terminal's "^C"
        except ProcessFailed as exc:
            raise CommandError(str(exc)) from exc
        finally:
            signals.stopping = True
            self._stop_all(children)

    # --- starting ---

    def _preflight(self, port: int, *, no_anvil: bool) -> None:
        # Fail before starting anything rather than at the last step, after a slow worker start.
        if not no_anvil and port == settings.ANVIL_PORT:
            raise CommandError(f"PORT and ANVIL_PORT are both {port}; give them different values.")
        if port_in_use(port):
            raise CommandError(f"Port {port} is already in use; set PORT to a free port.")

    def _start_all(
        self,
        layout: Layout,
        port: int,
        children: list[ManagedProcess],
        signals: Signals,
        *,
        no_anvil: bool,
    ) -> Running:
        self._prepare_dirs(layout)
        env = self._child_env(layout)
        progress = Progress(self, STEPS)

        def spawn(child: ManagedProcess) -> ManagedProcess:
            rotate_log(child.log_path)
            with signals.held():
                children.append(child)
                child.start()
            return child

        running = Running(port=port, chain=settings.CHAIN_RPC_URL)
        if no_anvil:
            with progress.step("Anvil") as outcome:
                answers = processes.rpc_ready(settings.CHAIN_RPC_URL)()
                state = "answers" if answers else "does NOT answer"
                outcome.text = f"skipped (--no-anvil; {settings.CHAIN_RPC_URL} {state})"
        else:
            with progress.step(f"Starting anvil on {HOST}:{settings.ANVIL_PORT}") as outcome:
                running.chain, running.chain_note = self._start_anvil(layout, spawn, outcome)

        with progress.step("Applying database migrations"):
            self._migrate()
        with progress.step(f"Creating the demo admin {ADMIN_USERNAME!r} and API client {API_CLIENT!r}") as outcome:
            running.admin_password, running.token, outcome.text = self._demo_accounts()
        with progress.step("Deploying the demo vault, protocols and policy on the chain") as outcome:
            from vaults.services.demo import demo_setup

            notes: list[str] = []
            vault = demo_setup(web_port=port, say=notes.append)
            outcome.text = f"{vault.vault_id} ({len(notes)} change(s))"
        with progress.step("Creating the demo approvers and a proposal waiting for them") as outcome:
            running.approvers, running.proposal, outcome.text = self._demo_approvers(vault)
        executor_port = env_int("EXAMPLE_EXECUTOR_PORT", port + 1, minimum=1, maximum=65535)
        with progress.step(f"Starting the example executor on {HOST}:{executor_port}, subscribed") as outcome:
            running.executor, outcome.text = self._example_executor(vault, executor_port, env, spawn)
        # The children open their own connections; holding ours would keep a SQLite lock or
        # a PostgreSQL connection busy for as long as `up` runs.
        connections.close_all()

        queues = ",".join(queue.name for queue in celery_app.conf.task_queues or ())
        with progress.step(f"Starting the Celery worker (queues {queues})"):
            worker = processes.celery_worker(log_path=layout.log("worker"), env=env, queues=queues)
            spawn(worker).wait_ready(READY_TIMEOUT)
        with progress.step("Starting Celery beat"):
            spawn(processes.celery_beat(log_path=layout.log("beat"), env=env)).wait_ready(READY_TIMEOUT)
        with progress.step(f"Starting the web server on {HOST}:{port}"):
            spawn(self._web(layout, port, env)).wait_ready(READY_TIMEOUT)

        running.logs = [child.log_path for child in children]
        return running

    def _prepare_dirs(self, layout: Layout) -> None:
        # SQLite does not create the database's folder, and the filesystem broker transport
        # fails on a missing folder instead of creating it.
        layout.log_dir.mkdir(parents=True, exist_ok=True)
        for folder in layout.broker_dirs:
            folder.mkdir(parents=True, exist_ok=True)

    def _child_env(self, layout: Layout) -> dict[str, str]:
        env = {
            # Absolute: the children run in BASE_DIR, which may not be where `up` was started.
            "VAR_DIR": str(layout.var_dir),
            # Log lines reach var/log as they happen, not when a buffer fills.
            "PYTHONUNBUFFERED": "1",
            # The web server signs the demo oracle's feed; beat pulls it (see vaults/services/demo.py).
            "DEMO_ORACLE": "1",
        }
        if "DJANGO_DEBUG" not in os.environ:
            # runserver serves the admin's static files only with DEBUG on; nothing is collected.
            env["DJANGO_DEBUG"] = "1"
        for name in LOCAL_DESTINATIONS:
            if name not in os.environ:
                env[name] = "1"
        return env

    def _start_anvil(
        self,
        layout: Layout,
        spawn: Callable[[ManagedProcess], ManagedProcess],
        outcome: StepOutcome,
    ) -> tuple[str, str]:
        """Returns the RPC URL and a note for the summary."""
        url = f"http://{HOST}:{settings.ANVIL_PORT}"
        if processes.rpc_ready(url)():
            # Probably a node the developer left running: use it rather than fail on the port.
            outcome.text = "already running there, reusing it"
            return url, "anvil that was already running; left running on exit"
        if port_in_use(settings.ANVIL_PORT):
            raise CommandError(
                f"Port {settings.ANVIL_PORT} is taken by something that does not answer JSON-RPC; "
                "set ANVIL_PORT to a free port."
            )
        spawn(processes.anvil(port=settings.ANVIL_PORT, log_path=layout.log("anvil"))).wait_ready(30)
        return url, "anvil, started here"

    def _migrate(self) -> None:
        try:
            call_command("migrate", interactive=False, verbosity=0)
        except OperationalError as exc:
            raise CommandError(f"Cannot use the database {self._database()}: {exc}") from exc

    def _demo_accounts(self) -> tuple[str | None, str, str]:
        """Returns (the admin's new password or None if it existed, the API token, a note)."""
        users = get_user_model().objects
        password: str | None = None
        if not users.filter(username=ADMIN_USERNAME).exists():
            # Random and shown once: a fixed demo password would end up on a reachable machine.
            password = secrets.token_urlsafe(12)
            users.create_superuser(ADMIN_USERNAME, email="", password=password)
        # The same logic as `manage.py create_api_client demo-client`: token on stdout.
        out, err = io.StringIO(), io.StringIO()
        call_command("create_api_client", API_CLIENT, stdout=out, stderr=err)
        token = out.getvalue().strip()
        admin_note = "admin created" if password else "admin exists"
        client_note = "client created" if err.getvalue().startswith("Created") else "client exists"
        return password, token, f"{admin_note}, {client_note}"

    def _demo_approvers(self, vault: Any) -> tuple[list[str], str, str]:
        """Returns ("user / password" lines, the waiting proposal's id, a note)."""
        from approvals.demo import demo_approvers_setup

        # Proposing logs at INFO ("notify ..."): here that would break the progress line.
        logging.getLogger("approvals").setLevel(logging.WARNING)
        admin = get_user_model().objects.get(username=ADMIN_USERNAME)
        demo = demo_approvers_setup(vault=vault, proposer=admin)
        unchanged = "(unchanged; reset it with `manage.py changepassword {}`)"
        logins = [f"{name} / {password or unchanged.format(name)}" for name, password in demo.passwords.items()]
        waiting = demo.proposal
        quorum = f"{waiting.quorum_required} of {waiting.approvers.count()}"
        created = sum(1 for password in demo.passwords.values() if password)
        state = "proposed" if demo.proposal_created else "pending"
        note = f"{created} approver(s) created, {waiting.proposal_id} {state}"
        return logins, f"{waiting.proposal_id}, waiting for {quorum} approvers", note

    def _example_executor(
        self, vault: Any, port: int, env: dict[str, str], spawn: Callable[[ManagedProcess], ManagedProcess]
    ) -> tuple[str, str]:
        """Registers the example executor (a signed config, an interval subscription for the demo
        vault's account), funds its relayer key on the local chain, and starts it."""
        from orchestrator.automations.services.demo import automation_demo_setup

        if port_in_use(port):
            raise CommandError(f"Port {port} is already in use; set EXAMPLE_EXECUTOR_PORT to a free port.")
        client = get_user_model().objects.get(username=API_CLIENT)
        for name in LOCAL_DESTINATIONS:  # as in the children (see _child_env)
            if name not in os.environ:
                setattr(settings, name, True)
        demo = automation_demo_setup(
            owner=client, port=port, chain_id=vault.chain.chain_id, sub_account=vault.account.address
        )
        for relayer in demo.config.relayers.all():  # a local dev chain: gas for its relayer key
            with suppress(Exception):
                httpx.post(
                    vault.chain.rpc_url,
                    json={
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "anvil_setBalance",
                        "params": [relayer.address, hex(10**19)],
                    },
                    timeout=5,
                    trust_env=False,
                )
        argv = [sys.executable, "-m", "orchestrator.automations.example_executor"]
        log = Path(settings.VAR_DIR) / "log" / "executor.log"
        executor = ManagedProcess(
            "executor", argv, log_path=log, env=env | demo.executor_env, ready_text="listening on"
        )
        spawn(executor).wait_ready(READY_TIMEOUT)
        sub = demo.subscription
        every = demo.config.interval_seconds
        return (
            f"{sub.id} (every {every} s), logs at /v1/{sub.id}/logs",
            f"subscription {str(sub.id)[:8]}, every {every} s",
        )

    def _web(self, layout: Layout, port: int, env: dict[str, str]) -> ManagedProcess:
        if port_in_use(port):
            # Checked again (it may have been taken since the preflight): another server
            # answering /healthz there would look like ours.
            raise CommandError(f"Port {port} is already in use; set PORT to a free port.")
        argv = [
            sys.executable,
            str(Path(settings.BASE_DIR) / "manage.py"),
            "runserver",
            f"{HOST}:{port}",
            "--noreload",  # the autoreloader forks a second process that stop() would not know
        ]
        healthz = f"http://{HOST}:{port}/healthz"
        return ManagedProcess("web", argv, log_path=layout.log("web"), env=env, ready_check=http_ok(healthz))

    # --- running ---

    def _watch(self, children: list[ManagedProcess]) -> None:
        """Returns never; raises CommandError when a child dies (Shutdown on a signal)."""
        while True:
            for child in children:
                if not child.alive:
                    code = child.proc.returncode if child.proc is not None else None
                    how = f"was killed by {signal.Signals(-code).name}" if code and code < 0 else f"exited ({code})"
                    self.stderr.write(f"\n{child.name} {how}. Last lines of {child.log_path}:")
                    self.stderr.write(child.tail())
                    raise CommandError(f"{child.name} died; stopped everything else.")
            time.sleep(1)

    def _stop_all(self, children: list[ManagedProcess]) -> None:
        if not children:
            return
        self.stdout.write("Stopping ...")
        # Reverse start order: web, beat, worker, anvil. Nothing new enters before a consumer
        # goes away, and the worker finishes its current tasks while anvil is still there.
        for child in reversed(children):
            self.stdout.write(f"  {child.name} ... ", ending="")
            self.stdout.flush()
            started = time.monotonic()
            try:
                child.stop()
                if child.name == "worker" and uses_filesystem_broker():
                    forget_pidbox(child)
            except Exception as exc:  # keep going: the others must still be stopped
                self.stdout.write(self.style.ERROR(f"failed: {exc}"))
                continue
            self.stdout.write(f"stopped ({time.monotonic() - started:.1f}s)")
        children.clear()

    # --- the summary block ---

    def _print_summary(self, layout: Layout, running: Running, *, check: bool) -> None:
        web = f"http://{HOST}:{running.port}"
        unchanged = f"(unchanged; reset it with `manage.py changepassword {ADMIN_USERNAME}`)"
        password = running.admin_password or unchanged
        rows = [
            ("Web", f"{web}/"),
            ("Admin", f"{web}/admin/"),
            ("API docs", f"{web}/api/docs/"),
            ("Health", f"{web}/healthz"),
            ("Chain RPC", f"{running.chain}  ({running.chain_note})"),
            ("Admin login", f"{ADMIN_USERNAME} / {password}"),
            ("API token", f"{running.token}  (client {API_CLIENT!r}; header `Authorization: Token ...`)"),
            *(("Approvers" if i == 0 else "", login) for i, login in enumerate(running.approvers)),
            ("Proposal", f"{running.proposal}: {web}/admin/approvals/rebalanceproposal/"),
            ("Executor", f"example executor subscription {running.executor}"),
            ("Operations", f"{web}/admin/operations/"),
            ("Database", self._database()),
            ("Broker", self._broker(layout)),
            ("Logs", f"{layout.log_dir}/ ({', '.join(path.name for path in running.logs)})"),
        ]
        if running.chain != settings.CHAIN_RPC_URL:
            rows.insert(5, ("CHAIN_RPC_URL", f"{settings.CHAIN_RPC_URL}  (what the app uses)"))
        rule = "=" * 78
        self.stdout.write(rule)
        self.stdout.write(self.style.SUCCESS("Vault Orchestrator is up.") + ("" if check else "  Ctrl-C stops it."))
        for label, value in rows:
            self.stdout.write(f"  {label:<14}{value}")
        self.stdout.write(rule)

    def _database(self) -> str:
        db = settings.DATABASES["default"]
        if db["ENGINE"] == "django.db.backends.sqlite3":
            return f"SQLite {db['NAME']}"
        return mask_password(os.environ.get("DATABASE_URL", f"{db['ENGINE']} {db.get('NAME')}"))

    def _broker(self, layout: Layout) -> str:
        url = str(settings.CELERY_BROKER_URL)
        if uses_filesystem_broker():
            folders = ", ".join(str(folder) for folder in layout.broker_dirs)
            return f"{url} (message files in {folders})"
        return mask_password(url)
