"""Idempotency records keep the secrets of an answer sealed (orchestrator/infra/idempotency.py).

Records written before this stored the hmacKey of POST /v1/config in the clear: it is sealed
here, in place, with the key manager (so KEY_MASTER_KEYS must be set for `migrate`, as it is for
the web and the workers). A replay of such a record answers the same hmacKey as before."""

from typing import Any

from django.db import migrations, models

# The only secret an answer held before the views named theirs.
SECRET_FIELDS = ("hmacKey",)


def seal_stored_secrets(apps: Any, schema_editor: Any) -> None:
    from orchestrator.infra.idempotency import answer_sealed

    record_model = apps.get_model("infra", "IdempotencyRecord")
    for field in SECRET_FIELDS:
        stored = record_model.objects.filter(body__has_key=field).exclude(**{f"body__{field}": None})
        for record in stored.iterator():
            record.body, record.sealed, record.sealed_version = answer_sealed(
                record.body, secret=SECRET_FIELDS, record_id=record.pk
            )
            record.save(update_fields=["body", "sealed", "sealed_version"])


class Migration(migrations.Migration):
    dependencies = [
        ("infra", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="idempotencyrecord",
            name="sealed",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="idempotencyrecord",
            name="sealed_version",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.RunPython(seal_stored_secrets, migrations.RunPython.noop, elidable=True),
    ]
