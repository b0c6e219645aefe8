"""Worker heartbeats: each Celery worker keeps a Heartbeat row named `worker:<hostname>` fresh.

Written by the worker's own timer in its main process, not by a task: a worker whose pool is
busy, or that consumes no queue beat sends to, still proves it is alive. /metrics reads the rows
at scrape time, so one scrape of any web process sees every worker on every machine.

A worker also registers, once, when it is fully started (`worker_registered`, on Celery's
worker_ready): its row gets when, how long the start took and how many workflow kinds it serves,
and EndpointRegistration counts the attempt as ok, or as failed when the database refused it
(retried with each beat, the failures counted with the attempt that gets through). The
dalp.ddwf metrics read them (orchestrator/infra/telemetry_metrics.py).

Imported by orchestrator/celery.py before Django is set up: nothing here touches models at
import time."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import bootsteps

logger = logging.getLogger("orchestrator.heartbeats")

BEAT = "beat"
WORKER_PREFIX = "worker:"
# Rows of workers that died without a clean stop are dropped after this, so the label set of
# orchestrator_heartbeat_age_seconds does not grow with every restart.
FORGET_AFTER = timedelta(days=1)


def heartbeat(name: str) -> None:
    """Records that the process named `name` is alive now (beat: each workflow sweep)."""
    from django.utils import timezone

    from orchestrator.infra.models import Heartbeat

    Heartbeat.objects.update_or_create(name=name, defaults={"at": timezone.now()})


def worker_heartbeat_name(hostname: str) -> str:
    return f"{WORKER_PREFIX}{hostname}"


@dataclass
class _Registration:
    name: str
    startup_ms: int
    services_bound: int
    failures: int = 0  # attempts the database refused, not counted yet
    done: bool = False


# This worker's registration until the database has it (a worker is one main process).
_registration: _Registration | None = None


def worker_registered(sender: Any, **_: Any) -> None:
    """Celery's worker_ready (sender: the consumer, in the worker's main process, its pool
    started and its queues consumed): registers this worker. Never raises; a failed attempt is
    retried by the next heartbeat."""
    global _registration
    from orchestrator.infra import telemetry_metrics

    consume_from = sender.app.amqp.queues.consume_from
    queues = list(consume_from) if consume_from else list(sender.app.amqp.queues)
    _registration = _Registration(
        name=worker_heartbeat_name(sender.hostname),
        startup_ms=telemetry_metrics.ms_since_init(),
        services_bound=telemetry_metrics.services_bound(queues),
    )
    _register(_registration)


def _register(registration: _Registration) -> None:
    from django.db import transaction
    from django.utils import timezone

    from orchestrator.infra.models import EndpointRegistration, Heartbeat

    try:
        now = timezone.now()
        with transaction.atomic():
            Heartbeat.objects.update_or_create(
                name=registration.name,
                defaults={
                    "at": now,
                    "started_at": now,
                    "startup_ms": registration.startup_ms,
                    "services_bound": registration.services_bound,
                },
            )
            registrations_count(outcome=EndpointRegistration.Outcome.OK, attempts=1, at=now)
            if registration.failures:
                registrations_count(outcome=EndpointRegistration.Outcome.FAILED, attempts=registration.failures, at=now)
        registration.done = True
    except Exception as exc:  # the database may be down; the next beat tries again
        registration.failures += 1
        logger.warning("worker %s not registered: %s", registration.name, exc)
    finally:
        _pools_close(registration.name)


def registrations_count(*, outcome: str, attempts: int, at: datetime) -> None:
    """Adds attempts to the database's registration counter (in the caller's transaction)."""
    from django.db.models import F

    from orchestrator.infra.models import EndpointRegistration

    EndpointRegistration.objects.get_or_create(outcome=outcome)
    EndpointRegistration.objects.filter(outcome=outcome).update(attempts=F("attempts") + attempts, last_at=at)


def _pools_close(name: str) -> None:
    from orchestrator.infra.dbpool import pools_close

    # This main process forks the pool children (at start, and to replace one that died or
    # was recycled). A pool kept open here between beats would be inherited by them, its
    # sockets shared (dbpool.py): one new connection per beat is cheaper than that risk,
    # and a connection broken by a database restart is never reused.
    try:
        pools_close()
    except Exception as exc:
        logger.warning("worker heartbeat %s: database pool not closed: %s", name, exc)


def _write(name: str, *, prune: bool = False) -> None:
    from django.utils import timezone

    from orchestrator.infra.models import Heartbeat

    pending = _registration
    if pending is not None and pending.name == name and not pending.done:
        _register(pending)
    try:
        heartbeat(name)
        if prune:
            stale = timezone.now() - FORGET_AFTER
            Heartbeat.objects.filter(name__startswith=WORKER_PREFIX, at__lt=stale).delete()
    except Exception as exc:  # the database may be down; the next beat tries again
        logger.warning("worker heartbeat %s not written: %s", name, exc)
    finally:
        _pools_close(name)


def _forget(name: str) -> None:
    from orchestrator.infra.models import Heartbeat

    try:
        Heartbeat.objects.filter(name=name).delete()
    except Exception as exc:  # shutting down: nothing more to do about it
        logger.warning("worker heartbeat %s not removed: %s", name, exc)


class WorkerHeartbeat(bootsteps.StartStopStep):
    """A worker bootstep: beats every WORKER_HEARTBEAT_SECONDS; a clean stop removes the row."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.heartbeat_name = ""
        self.timers: list[Any] = []

    def start(self, worker: Any) -> None:
        from django.conf import settings

        self.heartbeat_name = worker_heartbeat_name(worker.hostname)
        # The first beat soon, from the timer rather than here: start() runs before the pool
        # forks its children, and they must not inherit an open database connection.
        self.timers = [
            worker.timer.call_after(1.0, _write, (self.heartbeat_name,), {"prune": True}),
            worker.timer.call_repeatedly(settings.WORKER_HEARTBEAT_SECONDS, _write, (self.heartbeat_name,)),
        ]

    def stop(self, worker: Any) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers = []
        if self.heartbeat_name:
            _forget(self.heartbeat_name)

    def terminate(self, worker: Any) -> None:
        self.stop(worker)
