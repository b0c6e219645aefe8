from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("relayer", "0006_key_purpose_approver"),
    ]

    operations = [
        migrations.AlterField(
            model_name="signingkey",
            name="purpose",
            field=models.CharField(
                choices=[
                    ("relayer", "Relayer"),
                    ("executor", "Executor"),
                    ("operator", "Operator"),
                    ("oracle", "Oracle"),
                    ("approver", "Approver (development wallet)"),
                    ("validator", "Validator (countersigns automation requests for Safe modules)"),
                ],
                db_index=True,
                max_length=12,
            ),
        ),
    ]
