"""Test settings: the real settings plus a small app of test workflows and their effects."""

from orchestrator.settings import *  # noqa: F403
from orchestrator.settings import INSTALLED_APPS, STORAGES

INSTALLED_APPS = [*INSTALLED_APPS, "tests.support"]

# Pages render without `collectstatic` (the manifest storage needs its manifest) and WhiteNoise
# has no STATIC_ROOT to scan; tests/e2e/test_web_server.py checks the real thing under gunicorn.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
STATIC_ROOT = None  # type: ignore[assignment]
