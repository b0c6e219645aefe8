"""Who holds a leased step: a PostgreSQL advisory lock of the claiming worker's session.

A leased step (atomic=False) runs outside any transaction, so no row lock says a worker is on
it; the lease's time (Step.timeout) alone used to say so, and a worker killed mid-step held its
run until that time and the stall rule had passed. Now the claim also takes a session-level
advisory lock (LEASE_LOCK_CLASS, a random key) on the worker's own database connection, in the
claim's transaction, and gives it back once the step's outcome is recorded. PostgreSQL releases
it when that session ends, exactly as it releases an atomic step's row lock: the process died
(a pool child SIGKILLed; the main process too, since Celery's pool children die with it), its
socket closed, its backend exited. So under a lease that has not run out, a free lock means its
holder is dead, and the sweep takes the run back at once (sweeping.py).

A slow worker is never taken for dead: a GC pause or a 15 s RPC call keeps its connection, and
its lock, whatever its heartbeat does. Heartbeats could not say as much: the main process beats
while a child may be dead, and a stale beat does not prove a child stopped.

A database restart (or a failover) ends every session while the workers live on, so a lock is
only believed on the server it was taken on: the claim records pg_postmaster_start_time(), and
a lease taken on another one waits for its time as before.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime

from django.db import connection

logger = logging.getLogger("orchestrator.engine")

# The first key of pg_advisory_lock(int, int) for leases: ASCII "vole" (other advisory locks in
# this project use the one-bigint form, a different key space).
LEASE_LOCK_CLASS = 0x766F6C65
_KEY_LIMIT = 2**31 - 1

_local = threading.local()


def lease_owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_lock_take() -> tuple[int, datetime]:
    """Takes a fresh lease lock on this connection (in the caller's transaction, which
    must commit the lease with it; see lease_locks_guard). Returns its key and the server's
    start time."""
    with connection.cursor() as cursor:
        while True:
            key = secrets.randbelow(_KEY_LIMIT) + 1
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s), pg_postmaster_start_time()", [LEASE_LOCK_CLASS, key])
            taken, started = cursor.fetchone()
            if taken:  # else another live lease drew the same key: draw again
                pending = getattr(_local, "pending", None)
                if pending is not None:
                    pending.append(key)
                return key, started


def lease_lock_release(key: int | None) -> None:
    """Gives a lease lock back. Never raises: a connection that broke has lost it already."""
    if key is None:
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LEASE_LOCK_CLASS, key])
    except Exception as exc:
        logger.warning("lease lock %s not released: %s", key, exc)


@contextmanager
def lease_locks_guard() -> Iterator[None]:
    """Wraps a transaction that may claim leases. A session-level lock outlives a rollback,
    so the locks taken in a transaction that raised are given back: no lease holds them."""
    outer = getattr(_local, "pending", None)  # a step that runs another run's steps inline
    taken: list[int] = []
    _local.pending = taken
    try:
        yield
    except BaseException:
        for key in taken:
            lease_lock_release(key)
        raise
    finally:
        _local.pending = outer


def server_started() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()")
        started: datetime = cursor.fetchone()[0]
        return started


def lease_locks_held(keys: Iterable[int]) -> set[int]:
    """Which of these lease locks some session of this database holds (pg_locks)."""
    keys = list(keys)
    if not keys:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT objid::bigint FROM pg_locks
            WHERE locktype = 'advisory' AND granted AND objsubid = 2
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND classid = %s::bigint::oid AND objid::bigint = ANY(%s::bigint[])
            """,
            [LEASE_LOCK_CLASS, keys],
        )
        return {int(row[0]) for row in cursor.fetchall()}
