"""The test database as a backup or a stolen dump would hold it: for tests that a secret is not
stored in the clear."""

from __future__ import annotations

import os
import subprocess

from django.db import connection


def pg_dump() -> str:
    """The whole test database as `pg_dump` writes it (data included), read by a separate client:
    what a backup or a stolen dump would hold. Only committed rows are in it: use it from a
    `django_db(transaction=True)` test."""
    db = connection.settings_dict
    argv = ["pg_dump", "--no-owner", "-h", db["HOST"] or "127.0.0.1", "-p", str(db["PORT"] or 5432)]
    argv += ["-U", db["USER"] or "postgres", db["NAME"]]
    env = {**os.environ, "PGPASSWORD": db["PASSWORD"] or ""}
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=60).stdout
