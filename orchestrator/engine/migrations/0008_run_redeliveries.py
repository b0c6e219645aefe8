"""How many deliveries of a run's current step came back unacknowledged (docs/engine.md,
"Dead workers in atomic steps")."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orchestrator", "0007_run_lease_holder"),
    ]

    operations = [
        migrations.AddField(
            model_name="workflowrun",
            name="redeliveries",
            field=models.PositiveSmallIntegerField(default=0),
        ),
    ]
