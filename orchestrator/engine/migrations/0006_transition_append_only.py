"""The transition trail becomes append-only in PostgreSQL itself, not only through the ORM
(issue 14): `QuerySet.update()`, `QuerySet.delete()`, raw SQL and a cascade from a deleted run
all got around `WorkflowTransition.save`/`delete`.

`audit_append_only()` is the one trigger function of the audit trail; the operations app's
migrations attach it to the other audit tables (approvals, the admin's log). It refuses UPDATE
always, and DELETE and TRUNCATE unless the transaction has set
`SET LOCAL vault_orchestrator.audit_prune = 'on'`: the deliberate way for retention to prune
rows it has exported (orchestrator/infra/audit_guard.py, docs/operations.md "Audit log")."""

import django.db.models.deletion
from django.db import migrations, models

FUNCTION = """
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE')
            AND coalesce(current_setting('vault_orchestrator.audit_prune', true), '') = 'on' THEN
        IF TG_LEVEL = 'ROW' THEN
            RETURN OLD;
        END IF;
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit rows are never changed; only retention deletes them, after export '
                     '(docs/operations.md, "Audit log").';
END
$$;
"""

TRIGGERS = """
CREATE TRIGGER orchestrator_workflowtransition_append_only
    BEFORE UPDATE OR DELETE ON orchestrator_workflowtransition
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER orchestrator_workflowtransition_no_truncate
    BEFORE TRUNCATE ON orchestrator_workflowtransition
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS orchestrator_workflowtransition_no_truncate ON orchestrator_workflowtransition;
DROP TRIGGER IF EXISTS orchestrator_workflowtransition_append_only ON orchestrator_workflowtransition;
DROP FUNCTION IF EXISTS audit_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("orchestrator", "0005_idempotency_heartbeat_to_infra"),
    ]

    operations = [
        migrations.AlterField(
            model_name="workflowtransition",
            name="run",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="transitions",
                to="orchestrator.workflowrun",
            ),
        ),
        migrations.RunSQL(sql=FUNCTION + TRIGGERS, reverse_sql=DROP),
    ]
