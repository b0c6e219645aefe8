from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orchestrator", "0003_heartbeat"),
    ]

    operations = [
        # Worker heartbeats are named after the Celery hostname, which is longer than 50.
        migrations.AlterField(
            model_name="heartbeat",
            name="name",
            field=models.CharField(max_length=200, primary_key=True, serialize=False),
        ),
    ]
