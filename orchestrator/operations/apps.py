from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


class OperationsConfig(AppConfig):
    name = "orchestrator.operations"
    label = "operations"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Importing them registers their collectors.
        from orchestrator.operations import alert_metrics, metrics  # noqa: F401
        from orchestrator.operations.schedules import ensure_periodic_tasks

        # The fixed schedule is rows of django-celery-beat's tables: written once they exist.
        post_migrate.connect(ensure_periodic_tasks, sender=apps.get_app_config("django_celery_beat"))
        # Declares the dalp.ddwf instruments (served on /metrics, exported over OTLP by beat).
        import orchestrator.operations.ddwf_metrics  # noqa: F401
