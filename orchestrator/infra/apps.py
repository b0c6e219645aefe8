from django.apps import AppConfig


class InfraConfig(AppConfig):
    name = "orchestrator.infra"
    label = "infra"
    verbose_name = "Infrastructure"

    def ready(self) -> None:
        from orchestrator.infra import observability  # noqa: F401  (connects the Celery signals)
        from orchestrator.infra.dbpool import register_fork_handler
        from orchestrator.infra.idempotency import idempotency_reseal
        from orchestrator.infra.sealing import resealer_register

        # Celery pool children and gunicorn workers are forked: none may use its parent's pool.
        register_fork_handler()
        resealer_register("idempotency answers", idempotency_reseal)  # rotated by `keys rotate-master`
