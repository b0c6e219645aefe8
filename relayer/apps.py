from celery.signals import task_postrun
from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _seed_chain(**_: object) -> None:
    from relayer.services.chains import chain_seed_from_env

    chain_seed_from_env(overwrite=False)


def _kicks_sent(**_: object) -> None:
    from relayer.services.lanes import lane_kicks_flush

    lane_kicks_flush()


class RelayerConfig(AppConfig):
    name = "relayer"

    def ready(self) -> None:
        from orchestrator.infra.sealing import sealer_register
        from relayer.keys import MasterKeySealer
        from relayer.profiling import profiling_connect

        post_migrate.connect(_seed_chain, sender=self)
        # Infrastructure stores secrets too (idempotent answers) but may not import the relayer:
        # it seals them with whatever is registered here.
        sealer_register(MasterKeySealer())
        profiling_connect()  # only with RELAYER_PROFILE_DIR set (bench relayer --profile)
        # A task's relay requests are kicked before the task counts as done: a pool child may
        # leave with os._exit right after it, and its kick thread with it.
        task_postrun.connect(_kicks_sent, weak=False)
