"""./manage.py up: the whole system on one machine, in the foreground (what `make run` runs).

Starts PostgreSQL and Valkey from their wheels (unless DATABASE_URL / CELERY_BROKER_URL point
elsewhere) and anvil, migrates, makes the demo data, then runs the example executor, the Celery
worker, beat and the web server (gunicorn) as child processes whose output goes to VAR_DIR/log.
A worker, beat, web or executor that dies is restarted; a server that dies stops everything.
Ctrl-C or SIGTERM stops the children in reverse order. One `up` per VAR_DIR: a second says so.
"""

from __future__ import annotations

import logging
import os
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError

from orchestrator.celery import app as celery_app
from orchestrator.devtools import processes
from orchestrator.devtools.demo import setup as demo
from orchestrator.devtools.devstack.console import Journal, Progress, Shutdown, Signals, StepOutcome
from orchestrator.devtools.devstack.embedded import EmbeddedPostgres, EmbeddedUnavailable, EmbeddedValkey
from orchestrator.devtools.devstack.local import mask_password, port_in_use, rotate_log
from orchestrator.devtools.devstack.rundir import AlreadyRunning, RunDir
from orchestrator.devtools.devstack.supervisor import Supervisor
from orchestrator.devtools.processes import ManagedProcess, ProcessFailed
from orchestrator.infra.config import env_int
from orchestrator.infra.dbpool import pools_close
from orchestrator.infra.tracing import tracing_wanted

HOST = "127.0.0.1"
STEPS = 11
# Generous: the first start of a worker on a cold machine imports a lot (web3, Django).
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Plan:
    """What this run starts itself and on which ports; the rest is external."""

    web_port: int
    executor_port: int
    embedded_db: bool
    embedded_broker: bool
    anvil: bool

    def ports(self) -> list[tuple[int, str]]:
        wanted = [(self.web_port, "PORT"), (self.executor_port, "EXAMPLE_EXECUTOR_PORT")]
        if self.anvil:
            wanted.append((settings.ANVIL_PORT, "ANVIL_PORT"))
        if self.embedded_db:
            wanted.append((settings.EMBEDDED_POSTGRES_PORT, "EMBEDDED_POSTGRES_PORT"))
        if self.embedded_broker:
            wanted.append((settings.EMBEDDED_REDIS_PORT, "EMBEDDED_REDIS_PORT"))
        return wanted


@dataclass
class Running:
    """What the summary block shows once everything is up."""

    chain: str
    chain_note: str = "CHAIN_RPC_URL, not managed here (--no-anvil)"
    database: str = ""
    broker: str = ""
    accounts: demo.DemoAccounts | None = None
    approvers: demo.DemoApprovers | None = None
    executor: str = ""
    logs: list[Path] = field(default_factory=list)


class Command(BaseCommand):
    help = "Start PostgreSQL, Valkey, anvil, a Celery worker, beat and the web server; Ctrl-C stops all."
    requires_system_checks = []  # the web server runs them in its own processes

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-anvil", action="store_true", help="Do not start anvil (CHAIN_RPC_URL points at another node)."
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Start everything, wait until it is ready, print the summary, stop, exit 0.",
        )

    def handle(self, *args: Any, no_anvil: bool, check: bool, **options: Any) -> None:
        try:
            port = env_int("PORT", 8000, minimum=1, maximum=65535)
            plan = Plan(
                web_port=port,
                executor_port=env_int("EXAMPLE_EXECUTOR_PORT", port + 1, minimum=1, maximum=65535),
                embedded_db="DATABASE_URL" not in os.environ,
                embedded_broker="CELERY_BROKER_URL" not in os.environ,
                anvil=not no_anvil,
            )
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        # The ready checks poll with httpx, which logs every request at INFO: noise here.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        var_dir = Path(settings.VAR_DIR).resolve()
        rundir = RunDir(var_dir)
        try:
            rundir.lock()  # before anything under VAR_DIR is touched
        except AlreadyRunning as exc:
            raise CommandError(str(exc)) from exc
        journal = Journal(self, var_dir / "log" / "up.log")
        journal.path.parent.mkdir(parents=True, exist_ok=True)
        rotate_log(journal.path)
        self._log_to(journal.path)
        rundir.stop_leftovers(journal.warn)
        self._preflight(plan)
        children: list[ManagedProcess] = []
        signals = Signals(children)
        signals.install()
        supervisor = Supervisor(children=children, rundir=rundir, journal=journal, held=signals.held)
        try:
            running = self._start_all(var_dir, plan, supervisor)
            self._print_summary(var_dir, plan, running, check=check)
            if not check:
                supervisor.watch()
        except Shutdown:
            self.stdout.write("")  # end the line after the terminal's "^C"
        except (ProcessFailed, EmbeddedUnavailable) as exc:
            journal.record("ERROR", str(exc))
            raise CommandError(str(exc)) from exc
        finally:
            signals.stopping = True
            self._stop_all(supervisor)

    # --- starting ---

    def _preflight(self, plan: Plan) -> None:
        # Fail before starting anything rather than at the last step, after a slow worker start.
        seen: dict[int, str] = {}
        for port, name in plan.ports():
            if port in seen:
                raise CommandError(f"{seen[port]} and {name} are both {port}; give them different values.")
            seen[port] = name
            if port_in_use(port) and not (name == "ANVIL_PORT" and processes.rpc_ready(self._anvil_url())()):
                raise CommandError(f"Port {port} is already in use; set {name} to a free port.")

    def _log_to(self, path: Path) -> None:
        """This process's own log lines (a relayer key funded, a development master key made)
        go to up.log: on the terminal they would break the progress lines."""
        root = logging.getLogger()
        handler = logging.FileHandler(path)
        for old in list(root.handlers):  # a copy: the loop removes them
            handler.setFormatter(old.formatter)
            for log_filter in old.filters:
                handler.addFilter(log_filter)
            root.removeHandler(old)
        root.addHandler(handler)

    def _anvil_url(self) -> str:
        return f"http://{HOST}:{settings.ANVIL_PORT}"

    def _start_all(self, var_dir: Path, plan: Plan, supervisor: Supervisor) -> Running:
        log_dir = var_dir / "log"
        env = self._child_env(var_dir)
        progress = Progress(self, STEPS)

        def spawn(child: ManagedProcess) -> ManagedProcess:
            rotate_log(child.log_path)
            return supervisor.spawn(child)

        running = Running(chain=settings.CHAIN_RPC_URL)
        with progress.step("PostgreSQL") as outcome:
            running.database = self._postgres(var_dir, plan, spawn, outcome)
        with progress.step("Valkey (the Celery broker)") as outcome:
            running.broker = self._valkey(var_dir, plan, spawn, outcome)
        with progress.step(f"Anvil on {HOST}:{settings.ANVIL_PORT}") as outcome:
            self._start_anvil(log_dir, plan, spawn, outcome, running)
        with progress.step("Applying database migrations and collecting static files"):
            self._migrate()
        with progress.step(f"Demo admin {demo.ADMIN_USERNAME!r} and API client {demo.API_CLIENT!r}") as outcome:
            running.accounts = demo.demo_accounts()
            outcome.text = running.accounts.note
        with progress.step("Deploying the demo vault, protocols and policy on the chain") as outcome:
            from orchestrator.devtools.demo.vaults import demo_setup

            notes: list[str] = []
            vault = demo_setup(web_port=plan.web_port, say=notes.append)
            if demo.demo_client_grant(vault):
                notes.append(f"{demo.API_CLIENT} may read {vault.vault_id}")
            outcome.text = f"{vault.vault_id} ({len(notes)} change(s))"
        with progress.step("Demo approvers and a proposal waiting for them") as outcome:
            running.approvers = demo.demo_approvers(vault)
            outcome.text = running.approvers.note
        with progress.step(f"Example executor on {HOST}:{plan.executor_port}, subscribed") as outcome:
            executor = demo.demo_executor(
                vault=vault, port=plan.executor_port, env=env, log_path=log_dir / "executor.log"
            )
            spawn(executor.process).wait_ready(READY_TIMEOUT)
            running.executor, outcome.text = executor.summary, executor.note
        # The children open their own connections; ours (and our pool) would sit idle for as long
        # as `up` runs, and be cut off as errors when PostgreSQL stops.
        pools_close()

        queues = ",".join(queue.name for queue in celery_app.conf.task_queues or ())
        with progress.step(f"Celery worker (queues {queues})"):
            spawn(processes.celery_worker(log_path=log_dir / "worker.log", env=env, queues=queues)).wait_ready(
                READY_TIMEOUT
            )
        with progress.step("Celery beat"):
            spawn(processes.celery_beat(log_path=log_dir / "beat.log", env=env)).wait_ready(READY_TIMEOUT)
        with progress.step(f"Web server (gunicorn) on {HOST}:{plan.web_port}"):
            spawn(self._web(log_dir, plan.web_port, env)).wait_ready(READY_TIMEOUT)

        running.logs = [child.log_path for child in supervisor.children]
        return running

    def _child_env(self, var_dir: Path) -> dict[str, str]:
        return {
            # Absolute: the children run in BASE_DIR, which may not be where `up` was started.
            "VAR_DIR": str(var_dir),
            # Log lines reach var/log as they happen, not when a buffer fills.
            "PYTHONUNBUFFERED": "1",
            # The web server signs the demo oracle's feed; beat pulls it (see orchestrator/devtools/demo/vaults.py).
            "DEMO_ORACLE": "1",
            **demo.local_destinations_env(),
        }

    def _postgres(self, var_dir: Path, plan: Plan, spawn: Any, outcome: StepOutcome) -> str:
        db = settings.DATABASES["default"]
        url = os.environ.get("DATABASE_URL", "")
        if not plan.embedded_db:
            outcome.text = f"external, {mask_password(url)}"
            return mask_password(url)
        server = EmbeddedPostgres(var_dir=var_dir, port=settings.EMBEDDED_POSTGRES_PORT, database=db["NAME"])
        note = server.prepare(say=lambda text: self.stdout.write(f"\n      {text}", ending=""))
        spawn(server.process()).wait_ready(30)
        created = server.ensure_database()
        outcome.text = f"embedded PostgreSQL on {HOST}:{server.port}, {note}" + (
            f", database {db['NAME']!r} created" if created else ""
        )
        return f"postgres://postgres@{HOST}:{server.port}/{db['NAME']} (embedded; data in {server.data_dir})"

    def _valkey(self, var_dir: Path, plan: Plan, spawn: Any, outcome: StepOutcome) -> str:
        url = str(settings.CELERY_BROKER_URL)
        if not plan.embedded_broker:
            outcome.text = f"external, {mask_password(url)}"
            return mask_password(url)
        server = EmbeddedValkey(var_dir=var_dir, port=settings.EMBEDDED_REDIS_PORT)
        spawn(server.process()).wait_ready(30)
        outcome.text = f"embedded Valkey on {HOST}:{server.port}, data in {server.data_dir}"
        return f"{url} (embedded Valkey; append-only file in {server.data_dir})"

    def _start_anvil(self, log_dir: Path, plan: Plan, spawn: Any, outcome: StepOutcome, running: Running) -> None:
        if not plan.anvil:
            answers = processes.rpc_ready(settings.CHAIN_RPC_URL)()
            outcome.text = (
                f"skipped (--no-anvil; {settings.CHAIN_RPC_URL} {'answers' if answers else 'does NOT answer'})"
            )
            return
        url = self._anvil_url()
        running.chain = url
        if processes.rpc_ready(url)():
            # A node the developer started by hand: use it rather than fail on the port.
            outcome.text = "already running there, reusing it"
            running.chain_note = "anvil that was already running; left running on exit"
            return
        # The chain is kept across restarts like the database that records what happened on it
        # (deployed contracts, nonces, balances): dumped on a clean stop and every 30 s. Not more
        # often: each dump rewrites the whole chain (the soak's 30 minutes made 3 MB of it).
        state = log_dir.parent / "anvil" / "state.json"
        state.parent.mkdir(parents=True, exist_ok=True)
        # --prune-history: no per-block state snapshots kept in memory (measured: 91 -> 48 MB after
        # 1,500 transactions); blocks, receipts and logs stay, and nothing here reads old state.
        extra = ["--state", str(state), "--state-interval", "30", "--prune-history"]
        spawn(processes.anvil(port=settings.ANVIL_PORT, log_path=log_dir / "anvil.log", extra=extra)).wait_ready(30)
        running.chain_note = f"anvil, started here; state kept in {state}"

    def _migrate(self) -> None:
        db = settings.DATABASES["default"]
        try:
            # Directly, not through the pool: the pool would wait DB_POOL_TIMEOUT and then report
            # its timeout instead of the server's reason (refused, unknown database, password).
            psycopg.connect(
                host=db["HOST"] or HOST,
                port=db["PORT"] or 5432,
                user=db["USER"],
                password=db["PASSWORD"] or None,
                dbname=db["NAME"],
                connect_timeout=5,
            ).close()
        except psycopg.OperationalError as exc:
            raise CommandError(f"Cannot connect to the database {self._database_name()}: {exc}") from exc
        try:
            call_command("migrate", interactive=False, verbosity=0)
        except OperationalError as exc:
            raise CommandError(f"Cannot use the database {self._database_name()}: {exc}") from exc
        # gunicorn serves the admin's files through WhiteNoise, from STATIC_ROOT, as in production.
        call_command("collectstatic", interactive=False, verbosity=0)

    def _database_name(self) -> str:
        return mask_password(os.environ.get("DATABASE_URL", f"{settings.DATABASES['default']['NAME']} (embedded)"))

    def _web(self, log_dir: Path, port: int, env: dict[str, str]) -> ManagedProcess:
        if port_in_use(port):
            # Checked again (it may have been taken since the preflight): another server
            # answering /healthz there would look like ours.
            raise CommandError(f"Port {port} is already in use; set PORT to a free port.")
        threads = env_int("WEB_THREADS", 8, minimum=1)
        # Every thread may hold a connection at once: a smaller pool would make requests wait.
        pool = {"DB_POOL_MAX_SIZE": str(max(threads, settings.DB_POOL_MAX_SIZE))}
        return processes.web_server(
            port=port,
            log_path=log_dir / "web.log",
            env=env | pool,
            workers=env_int("WEB_WORKERS", 2, minimum=1),
            threads=threads,
        )

    # --- stopping ---

    def _stop_all(self, supervisor: Supervisor) -> None:
        if not supervisor.children:
            return
        with suppress(Exception):  # a failed start may have left a connection open; not if the server is gone
            pools_close()
        self.stdout.write("Stopping ...")
        for child, result in supervisor.stop_all():
            if isinstance(result, Exception):
                self.stdout.write(f"  {child.name} ... " + self.style.ERROR(f"failed: {result}"))
            else:
                self.stdout.write(f"  {child.name} ... stopped ({result:.1f}s)")

    # --- the summary block ---

    def _print_summary(self, var_dir: Path, plan: Plan, running: Running, *, check: bool) -> None:
        web = f"http://{HOST}:{plan.web_port}"
        accounts, approvers = running.accounts, running.approvers
        assert accounts is not None and approvers is not None
        unchanged = f"(unchanged; reset it with `manage.py changepassword {demo.ADMIN_USERNAME}`)"
        rows = [
            ("Web", f"{web}/"),
            ("Admin", f"{web}/admin/"),
            ("API docs", f"{web}/api/docs/"),
            ("Health", f"{web}/healthz"),
            ("Chain RPC", f"{running.chain}  ({running.chain_note})"),
            ("Admin login", f"{demo.ADMIN_USERNAME} / {accounts.admin_password or unchanged}"),
            ("API token", f"{accounts.token}  (client {demo.API_CLIENT!r}; header `Authorization: Token ...`)"),
            *(("Approvers" if i == 0 else "", login) for i, login in enumerate(approvers.logins)),
            ("Proposal", f"{approvers.proposal}: {web}/admin/approvals/rebalanceproposal/"),
            ("Safe proposal", f"{approvers.safe_proposal} (sign with each approver's development wallet)"),
            ("Policy module", f"{approvers.module_vault}: {web}/admin/vaults/executionintent/"),
            ("Executor", f"example executor subscription {running.executor}"),
            ("Operations", f"{web}/admin/operations/"),
            ("Alerts", f"{web}/admin/operations/alert/ (add a channel: {web}/admin/operations/notificationchannel/)"),
            ("Metrics", f"{web}/metrics (Prometheus: orchestrator_*, dalp_ddwf_*; rules in deploy/prometheus/)"),
            ("Traces", _traces_note()),
            ("Database", running.database),
            ("Broker", running.broker),
            ("Logs", f"{var_dir / 'log'}/ ({', '.join(path.name for path in running.logs)}, up.log)"),
        ]
        if running.chain != settings.CHAIN_RPC_URL:
            rows.insert(5, ("CHAIN_RPC_URL", f"{settings.CHAIN_RPC_URL}  (what the app uses)"))
        rule = "=" * 78
        self.stdout.write(rule)
        self.stdout.write(self.style.SUCCESS("Vault Orchestrator is up.") + ("" if check else "  Ctrl-C stops it."))
        for label, value in rows:
            self.stdout.write(f"  {label:<14}{value}")
        self.stdout.write(rule)


def _traces_note() -> str:
    if tracing_wanted(os.environ):
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return f"exported over OTLP to {endpoint}"
    return "off (set OTEL_EXPORTER_OTLP_ENDPOINT to export them; docs/operations.md, Traces)"
