from django.apps import AppConfig


class AutomationsConfig(AppConfig):
    name = "orchestrator.automations"
    label = "automations"
    verbose_name = "Automations"

    def ready(self) -> None:
        from orchestrator.automations import metrics  # noqa: F401  (registers its collectors)
        from orchestrator.automations.services.configs import config_hmac_reseal
        from orchestrator.infra.sealing import resealer_register

        resealer_register("config HMAC keys", config_hmac_reseal)  # rotated by `keys rotate-master`
