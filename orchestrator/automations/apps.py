from django.apps import AppConfig


class AutomationsConfig(AppConfig):
    name = "orchestrator.automations"
    label = "automations"
    verbose_name = "Automations"
