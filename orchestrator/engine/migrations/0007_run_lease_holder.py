"""Who holds a run's lease: the advisory lock of the claiming session, the server it was taken
on, and the worker process (docs/engine.md, "Leases and dead workers")."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orchestrator", "0006_transition_append_only"),
    ]

    operations = [
        migrations.AddField(
            model_name="workflowrun",
            name="lease_lock",
            field=models.IntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="workflowrun",
            name="lease_owner",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddField(
            model_name="workflowrun",
            name="lease_server",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
