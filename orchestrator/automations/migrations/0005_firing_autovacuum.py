"""automations_firing: autovacuum after every 10,000 inserted or changed rows, whatever the table's size.

The logs read walks firing_log_idx alone to the row at `offset` (selectors.LOG_PAGE_SQL) only while
the visibility map says the rows' heap pages are all-visible; each row on a page that is not
costs a heap visit. The rows a deep offset walks first are the newest firings, and those are the
ones just inserted and updated (delivery writes the outcome). PostgreSQL's defaults vacuum after
20% of the table has changed: at a million firings, 200,000 changes, and meanwhile offset 10,000
of a busy subscription walked 10,000 heap visits (27 to 51 ms instead of about 1 ms, bench logs).
With a fixed threshold autovacuum comes by about once a minute on a busy table (its naptime) and
each run reads only the pages changed since the last one (the visibility map skips the rest)."""

from django.db import migrations

SETTINGS = ("autovacuum_vacuum_scale_factor", "autovacuum_vacuum_insert_scale_factor")
THRESHOLDS = ("autovacuum_vacuum_threshold", "autovacuum_vacuum_insert_threshold")


class Migration(migrations.Migration):
    dependencies = [
        ("automations", "0004_subscription_module"),
    ]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE automations_firing SET ("
            + ", ".join([f"{name} = 0" for name in SETTINGS] + [f"{name} = 10000" for name in THRESHOLDS])
            + ")",
            reverse_sql="ALTER TABLE automations_firing RESET (" + ", ".join(SETTINGS + THRESHOLDS) + ")",
        ),
    ]
