"""Test settings: the real settings plus a small app of test workflows and their effects."""

from orchestrator.settings import *  # noqa: F403
from orchestrator.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.support"]
