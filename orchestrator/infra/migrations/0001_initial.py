import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    """Takes over two tables the engine app created (orchestrator 0002-0004): state only."""

    initial = True

    dependencies = [
        ("orchestrator", "0004_heartbeat_worker_names"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="IdempotencyRecord",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("key", models.CharField(max_length=255)),
                        ("fingerprint", models.CharField(help_text="SHA-256 of method, path and body.", max_length=64)),
                        ("status_code", models.PositiveSmallIntegerField(default=0)),
                        ("body", models.JSONField(null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "owner",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "orchestrator_idempotencyrecord",
                        "constraints": [
                            models.UniqueConstraint(fields=("owner", "key"), name="idempotency_key_per_client")
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="Heartbeat",
                    fields=[
                        ("name", models.CharField(max_length=200, primary_key=True, serialize=False)),
                        ("at", models.DateTimeField()),
                    ],
                    options={"db_table": "orchestrator_heartbeat"},
                ),
            ],
            database_operations=[],
        ),
    ]
