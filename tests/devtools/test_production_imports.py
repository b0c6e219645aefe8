"""Production processes never import the development tools.

import-linter keeps the static imports out (pyproject.toml); this checks what a web process and
a worker really load, dynamic imports included: Django's app loading, URL resolution, admin
autodiscovery and Celery's task autodiscovery. Only the devtools app's own package and AppConfig
may be loaded (Django imports every installed app; devtools is installed for its commands)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from django.conf import settings

ALLOWED = {"orchestrator.devtools", "orchestrator.devtools.apps"}

WEB = """
from orchestrator.wsgi import application
from django.urls import get_resolver
get_resolver().url_patterns  # imports every view module the URLs name
"""

WORKER = """
import django
django.setup()
from orchestrator.celery import app
app.loader.import_default_modules()  # what a worker does at start: every app's tasks module
"""


def _devtools_loaded(program: str, **extra_env: str) -> list[str]:
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "DATABASE_URL": f"postgres://{db.get('USER') or 'postgres'}@{db.get('HOST') or '127.0.0.1'}:"
        f"{db.get('PORT') or 5432}/{db['NAME']}",
        "DEMO_ORACLE": "0",
        **extra_env,
    }
    report = (
        "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('orchestrator.devtools'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program + report],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_production_process_loads_no_development_tool() -> None:
    # One process loads what web and worker load (a process start costs seconds here).
    loaded = _devtools_loaded(WEB + WORKER)
    assert set(loaded) <= ALLOWED, f"production code imported {sorted(set(loaded) - ALLOWED)}"


def test_the_check_sees_a_development_module_when_one_is_loaded() -> None:
    # The demo oracle's URL is routed only in the demo (DEMO_ORACLE=1): then its module loads,
    # which shows the check above would see such an import.
    loaded = _devtools_loaded(WEB, DEMO_ORACLE="1")
    assert "orchestrator.devtools.demo.oracle" in loaded
