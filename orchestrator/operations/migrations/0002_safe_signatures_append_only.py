"""Owners' signatures of Safe transactions (vaults_safesignature) are audit rows like approvers'
decisions: append-only in PostgreSQL with the engine's `audit_append_only()` trigger function
(see 0001). UPDATE is refused, and DELETE and TRUNCATE unless the transaction set
`vault_orchestrator.audit_prune` to 'on' (orchestrator/infra/audit_guard.py)."""

from django.db import migrations

TABLE = "vaults_safesignature"

CREATE = f"""
CREATE TRIGGER {TABLE}_append_only
    BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER {TABLE}_no_truncate
    BEFORE TRUNCATE ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
"""

DROP = f"""
DROP TRIGGER IF EXISTS {TABLE}_no_truncate ON {TABLE};
DROP TRIGGER IF EXISTS {TABLE}_append_only ON {TABLE};
"""


class Migration(migrations.Migration):
    dependencies = [
        ("operations", "0001_audit_append_only"),
        ("vaults", "0004_safe_accounts"),
    ]

    operations = [migrations.RunSQL(sql=CREATE, reverse_sql=DROP)]
