"""IntentRelay: the link from an intent's action to the relay that carries it, with its place.

Until now the place was only in the relay's idempotency key, "intent:<intent id>:<index>". The
existing relays are linked from those keys, in one statement."""

import django.db.models.deletion
from django.db import migrations, models


def link_existing_relays(apps, schema_editor):
    link = apps.get_model("vaults", "IntentRelay")._meta.db_table
    intent = apps.get_model("vaults", "ExecutionIntent")._meta.db_table
    relay = apps.get_model("relayer", "RelayTransaction")._meta.db_table
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO "{link}" ("intent_id", "relay_id", "position")
            SELECT i."id", r."id", split_part(r."idempotency_key", ':', 3)::smallint
              FROM "{relay}" r
              JOIN "{intent}" i ON i."id"::text = r."requested_by_id"
             WHERE r."requested_by_kind" = 'intent'
               AND r."idempotency_key" ~ '^intent:[0-9a-f-]+:[0-9]{{1,4}}$'
               AND split_part(r."idempotency_key", ':', 2) = i."id"::text
            ON CONFLICT DO NOTHING
            """  # noqa: S608 (table names from the models)
        )


class Migration(migrations.Migration):
    dependencies = [
        ("vaults", "0001_initial"),
        ("relayer", "0005_chain_is_development"),
    ]

    operations = [
        migrations.CreateModel(
            name="IntentRelay",
            fields=[
                (
                    "id",
                    models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID"),
                ),
                ("position", models.PositiveSmallIntegerField(help_text="The action's index in the intent's actions.")),
                (
                    "intent",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="relays",
                        to="vaults.executionintent",
                    ),
                ),
                (
                    "relay",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="intent_link",
                        to="relayer.relaytransaction",
                    ),
                ),
            ],
            options={
                "ordering": ["intent", "position"],
                "constraints": [
                    models.UniqueConstraint(fields=("intent", "position"), name="intent_relay_position_unique")
                ],
            },
        ),
        migrations.RunPython(link_existing_relays, migrations.RunPython.noop),
    ]
