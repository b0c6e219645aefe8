from django.apps import AppConfig


class DevtoolsConfig(AppConfig):
    """Installed for its management commands (`up`, `bench`) only: Django imports this module and
    the package's empty __init__, nothing else of it, in every process."""

    name = "orchestrator.devtools"
    label = "devtools"
    verbose_name = "Development tools"
