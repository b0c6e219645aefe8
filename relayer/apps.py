from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _seed_chain(**_: object) -> None:
    from relayer.services.chains import chain_seed_from_env

    chain_seed_from_env(overwrite=False)


class RelayerConfig(AppConfig):
    name = "relayer"

    def ready(self) -> None:
        post_migrate.connect(_seed_chain, sender=self)
