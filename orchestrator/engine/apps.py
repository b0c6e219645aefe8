from django.apps import AppConfig


class EngineConfig(AppConfig):
    name = "orchestrator.engine"
    # The label the engine had when it was the project package: its tables, migration history,
    # permissions and admin URLs (/admin/orchestrator/...) keep their names.
    label = "orchestrator"
    verbose_name = "Workflow engine"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        # Every app declares its workflows in a `workflows` module; workers and web both load
        # them so that any process can start and run any kind.
        autodiscover_modules("workflows")
