"""Database connection pools and fork.

Every process keeps a bounded psycopg pool (settings, DB_POOL_*). A pool must never be used
across a fork: its idle connections' sockets would be shared by parent and child, two
processes writing into one PostgreSQL session, and its worker threads do not exist in the
child. Closing it there is no remedy: closing a connection sends PostgreSQL a Terminate
message, which ends the parent's session too.

So the Celery worker's main process closes its pool after every heartbeat (heartbeats.py),
leaving nothing for the pool children it forks; and every forked process, whatever forked it
(a Celery pool child, a gunicorn worker, a test), first drops what it inherited without a byte
sent (`inherited_pools_drop`, run by os.register_at_fork from OrchestratorConfig.ready)."""

from __future__ import annotations

import logging
import os
from contextlib import suppress
from typing import Any

logger = logging.getLogger("orchestrator.infra.dbpool")


def pools_close() -> None:
    """Gives back this thread's connections and closes this process's pools, ending their
    server connections. The next query opens a new pool."""
    from django.db import connections

    for wrapper in connections.all(initialized_only=True):
        wrapper.close()
        if hasattr(wrapper, "close_pool"):
            wrapper.close_pool()


def _forget(conn: Any) -> None:
    """Closes a connection's inherited socket in this process only. No Terminate message is
    sent, and none ever will be: psycopg finishes a connection on garbage collection only in
    the process that opened it."""
    with suppress(Exception):
        os.close(conn.pgconn.socket)


def inherited_pools_drop() -> None:
    """In a freshly forked child: forgets the parent's pools and connections, closing only this
    process's copies of their sockets. Runs before anything else in the child, single-threaded."""
    from django.db import connections
    from django.db.backends.postgresql.base import DatabaseWrapper

    for wrapper in connections.all(initialized_only=True):
        if wrapper.connection is not None:
            _forget(wrapper.connection)
            # As if never connected: the next query connects (through a new pool) and resets the
            # wrapper's transaction state.
            wrapper.connection = None
    # Django keeps pools per alias on the class. Not pool.close(): it would send Terminate on
    # the sockets shared with the parent, and wait for worker threads that are not here.
    pools: dict[str, Any] = DatabaseWrapper._connection_pools  # type: ignore[attr-defined]
    for alias, pool in list(pools.items()):
        for conn in list(pool._pool):  # the idle connections (those checked out are the wrapper's)
            _forget(conn)
        pool._pool.clear()
        pool._closed = True  # its __del__ then leaves the parent's threads alone
        del pools[alias]


def register_fork_handler() -> None:
    os.register_at_fork(after_in_child=_after_fork)


def _after_fork() -> None:
    try:
        inherited_pools_drop()
    except Exception:  # never let a child die for this; it would only use a fresh pool anyway
        logger.exception("inherited database pools not dropped")


def broken_connections_drop() -> None:
    """Before a task: a connection on which an error occurred and that no longer answers is
    closed, so the task gets a fresh one from the pool. Celery keeps a worker child's connection
    across tasks (CELERY_DB_REUSE_MAX) and Django checks health only around web requests: after
    a database restart a child would otherwise fail task after task on a dead connection."""
    from django.db import connections

    for wrapper in connections.all(initialized_only=True):
        if wrapper.connection is not None and wrapper.errors_occurred and not wrapper.is_usable():
            wrapper.close()
