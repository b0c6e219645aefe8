from django.db import migrations


class Migration(migrations.Migration):
    """IdempotencyRecord and Heartbeat now belong to the infra app; their tables stay as they are."""

    dependencies = [
        ("orchestrator", "0004_heartbeat_worker_names"),
        ("infra", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel("IdempotencyRecord"), migrations.DeleteModel("Heartbeat")],
            database_operations=[],
        ),
    ]
