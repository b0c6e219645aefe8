from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("automations", "0003_used_signature_by_digest"),
    ]

    operations = [
        migrations.AddField(
            model_name="subscription",
            name="module_address",
            field=models.CharField(blank=True, default="", max_length=42),
        ),
    ]
