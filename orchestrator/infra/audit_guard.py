"""The one deliberate way past the audit trail's append-only triggers.

PostgreSQL refuses UPDATE, DELETE and TRUNCATE on the audit tables (the trigger function
`audit_append_only()`, orchestrator/engine/migrations/0006_transition_append_only.py, attached
to AUDIT_TABLES). DELETE and TRUNCATE, never UPDATE, go through in a transaction that has set
PRUNE_SETTING to 'on' with SET LOCAL: for retention, which deletes rows only once they are
exported, and for the test suite's flush between tests. SET LOCAL ends with the transaction, so
nothing else that runs on the same pooled connection afterwards inherits it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections, transaction

PRUNE_SETTING = "vault_orchestrator.audit_prune"
AUDIT_TABLES = ("orchestrator_workflowtransition", "approvals_approval", "django_admin_log")
PRUNE_SQL = f"SET LOCAL {PRUNE_SETTING} = 'on'"


@contextmanager
def audit_prune(using: str = "default") -> Iterator[None]:
    """A transaction in which audit rows may be deleted (never changed). Only for code that
    has exported what it deletes."""
    with transaction.atomic(using=using):
        with connections[using].cursor() as cursor:
            cursor.execute(PRUNE_SQL)
        yield
        # Inside an outer transaction this block is a savepoint, and a released savepoint
        # keeps a SET LOCAL: switch it off again so the code after the block is guarded.
        # (A block that raises is rolled back, and the setting with it.)
        with connections[using].cursor() as cursor:
            cursor.execute(f"SET LOCAL {PRUNE_SETTING} = 'off'")
