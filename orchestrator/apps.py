from django.apps import AppConfig
from django.db.models.signals import post_migrate


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Workflow engine"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from orchestrator import observability  # noqa: F401  (connects the Celery signals)
        from orchestrator.dbpool import register_fork_handler
        from orchestrator.schedules import ensure_periodic_tasks

        # Celery pool children and gunicorn workers are forked: none may use its parent's pool.
        register_fork_handler()

        # Every app declares its workflows in a `workflows` module; workers and web both load
        # them so that any process can start and run any kind.
        autodiscover_modules("workflows")
        post_migrate.connect(ensure_periodic_tasks, sender=self)
