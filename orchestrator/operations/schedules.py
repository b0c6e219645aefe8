"""The fixed periodic tasks beat runs (docs/engine.md, "Operating it").

A handful of dispatchers claim due work from indexed tables; nothing here grows with the
number of runs or subscriptions. Created after every migrate, so a fresh database has them."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def fixed_schedule() -> dict[str, tuple[str, float, str]]:
    """name -> (task, every seconds, queue)."""
    return {
        "workflow sweep": ("orchestrator.workflow_sweep", settings.WORKFLOW_SWEEP_SECONDS, "workflows"),
        "relayer monitor": ("relayer.monitor", settings.RELAYER_MONITOR_SECONDS, "relay"),
        "vault rebalance dispatch": ("vaults.rebalance_dispatch", settings.FLOW_A_DISPATCH_SECONDS, "workflows"),
        "oracle pull": ("vaults.oracles_pull", settings.ORACLE_PULL_SECONDS, "workflows"),
        "automation dispatch": ("automations.dispatch", settings.AUTOMATION_DISPATCH_SECONDS, "triggers"),
        "automation log poll": ("automations.poll_logs", settings.AUTOMATION_POLL_SECONDS, "triggers"),
        "proposal expiry": ("approvals.expire", settings.PROPOSAL_EXPIRY_SWEEP_SECONDS, "workflows"),
        "retention prune": ("operations.retention_prune", settings.RETENTION_PRUNE_SECONDS, "workflows"),
        "alert evaluation": ("operations.alerts_evaluate", settings.ALERTS_EVALUATE_SECONDS, "workflows"),
    }


def ensure_periodic_tasks(**_: Any) -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for name, (task, every, queue) in fixed_schedule().items():
        # IntervalSchedule counts whole units; sub-second periods round up to one second.
        schedule, _created = IntervalSchedule.objects.get_or_create(
            every=max(round(every), 1), period=IntervalSchedule.SECONDS
        )
        PeriodicTask.objects.update_or_create(
            name=name,
            defaults={"task": task, "interval": schedule, "queue": queue, "enabled": True},
        )
