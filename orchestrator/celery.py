"""The Celery app: JSON only, explicit time limits, one queue per kind of work."""

from __future__ import annotations

import gc
import os

from celery import Celery
from celery.signals import beat_init, task_prerun, worker_process_init, worker_ready
from kombu import Exchange, Queue

from orchestrator.infra.heartbeats import WorkerHeartbeat, worker_registered
from orchestrator.infra.telemetry_metrics import metrics_init, otlp_export_start
from orchestrator.infra.tracing import tracing_for_celery

# The start of the clock of dalp.ddwf.startup.duration_ms (docs/operations.md, "Metrics: dalp.ddwf").
metrics_init()

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")

QUEUES = ("workflows", "triggers", "relay")

app = Celery("orchestrator")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Queues let each pool be sized and placed on its own machines (README, "Several machines").
# Each queue gets its own direct exchange and routing key. A bare Queue(name) inherits the
# default exchange and key ("workflows"), binding all three to one key: every message would then
# be copied into every queue.
app.conf.task_queues = tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES)
app.autodiscover_tasks()
# Every worker keeps its own heartbeat row fresh (/metrics, the operations dashboard).
app.steps["worker"].add(WorkerHeartbeat)
# A worker fully started registers (its heartbeat row, the registration counter); beat alone
# exports the database-backed dalp.ddwf metrics over OTLP (orchestrator/infra/telemetry_metrics.py).
worker_ready.connect(worker_registered, weak=False)
beat_init.connect(otlp_export_start, weak=False)
# Traces, when the OTEL_* variables ask for them: set up in each pool child and in beat.
tracing_for_celery(app)


@app.on_after_configure.connect
def _reuse_db_connections(sender: Celery, **_: object) -> None:
    # The Django fixup reads this literal key (not a namespaced setting); without it every task
    # opens a new database connection. See CELERY_DB_REUSE_MAX in settings.py.
    from django.conf import settings

    sender.conf.CELERY_DB_REUSE_MAX = settings.CELERY_DB_REUSE_MAX


@task_prerun.connect
def _drop_broken_connections(**_: object) -> None:
    from orchestrator.infra.dbpool import broken_connections_drop

    broken_connections_drop()


@worker_process_init.connect
@beat_init.connect
def _freeze_startup_objects(**_: object) -> None:
    # Everything loaded before the first task (Django, the apps, web3: ~175,000 objects) lives as
    # long as the process. Out of the collector's reach, a full collection no longer walks them:
    # 100-130 ms measured here, a pause that landed on whichever step was running.
    gc.freeze()
