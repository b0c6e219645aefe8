"""Audit rows in tests: the append-only triggers refuse every UPDATE, so a test that needs an
entry at a given time backdates it with the triggers off for that one statement."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection


@contextmanager
def audit_rewritable() -> Iterator[None]:
    """Ordinary triggers do not fire while session_replication_role is `replica` (the test
    database's user is a superuser). Narrower than ALTER TABLE ... DISABLE TRIGGER, which a
    table with pending deferred foreign-key checks refuses."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = DEFAULT")
