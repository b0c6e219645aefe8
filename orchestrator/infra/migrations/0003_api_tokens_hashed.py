"""API tokens are stored as a hash (orchestrator/infra/tokens.py).

Tokens issued before this were stored as the client holds them: each stored key is replaced by its
digest, in place, so every client keeps working with the token it has. A hash cannot be undone:
migrating back leaves the digests, and every client then needs a new token
(`manage.py create_api_client NAME --rotate`)."""

import hashlib
from typing import Any

from django.db import migrations


def stored_key_digest(key: str) -> str:
    # Frozen here on purpose: tokens.token_digest as of this migration.
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def hash_stored_keys(apps: Any, schema_editor: Any) -> None:
    token_model = apps.get_model("authtoken", "Token")
    # The key is the primary key: update() rewrites it in place (save() would insert a new row).
    for key in list(token_model.objects.values_list("key", flat=True)):
        token_model.objects.filter(key=key).update(key=stored_key_digest(key))


class Migration(migrations.Migration):
    dependencies = [
        ("infra", "0002_idempotency_sealed"),
        ("authtoken", "0004_alter_tokenproxy_options"),
    ]

    operations = [
        migrations.RunPython(hash_stored_keys, migrations.RunPython.noop, elidable=True),
    ]
