"""Vault Orchestrator: the Django project, its Celery app and the durable workflow engine."""

from orchestrator.celery import app as celery_app

__all__ = ["celery_app"]
