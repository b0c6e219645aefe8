from django.apps import AppConfig


class AutomationsConfig(AppConfig):
    name = "orchestrator.automations"
    label = "automations"
    verbose_name = "Automations"

    def ready(self) -> None:
        from orchestrator.automations import metrics  # noqa: F401  (registers its collectors)
