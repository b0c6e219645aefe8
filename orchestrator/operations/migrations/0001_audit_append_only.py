"""The other two audit sources (orchestrator/operations/audit.py) become append-only in
PostgreSQL as well: approvers' decisions (approvals_approval) and the admin's log
(django_admin_log). They take the engine's trigger function, `audit_append_only()`
(orchestrator/engine/migrations/0006_transition_append_only.py): UPDATE is refused, and DELETE
and TRUNCATE unless the transaction set `vault_orchestrator.audit_prune` to 'on'.

Here rather than in those apps' migrations: the audit log is the operations app's, and neither
approvals nor django.contrib.admin should know it. The tables exist by then (the dependencies)."""

from django.db import migrations

TABLES = ("approvals_approval", "django_admin_log")


def _create(table: str) -> str:
    return f"""
CREATE TRIGGER {table}_append_only
    BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER {table}_no_truncate
    BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
"""


def _drop(table: str) -> str:
    return f"""
DROP TRIGGER IF EXISTS {table}_no_truncate ON {table};
DROP TRIGGER IF EXISTS {table}_append_only ON {table};
"""


class Migration(migrations.Migration):
    dependencies = [
        ("orchestrator", "0006_transition_append_only"),
        ("approvals", "0001_initial"),
        ("admin", "0003_logentry_add_action_flag_choices"),
    ]

    operations = [migrations.RunSQL(sql=_create(table), reverse_sql=_drop(table)) for table in TABLES]
