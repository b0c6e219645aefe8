"""Readiness and metrics: what an operator's probes and Prometheus see."""

from __future__ import annotations

import pytest
from django.test import Client

from orchestrator.models import Heartbeat, WorkflowRun
from orchestrator.tasks import workflow_sweep
from tests.conftest import free_port
from tests.relay_support import make_chain

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_touching_anything() -> None:
    assert Client().get("/healthz").json() == {"status": "ok"}


def test_readyz_says_which_part_is_missing_and_recovers(anvil: str) -> None:
    make_chain(anvil)
    response = Client().get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["beat"]["status"] == "fail" and "no beat heartbeat" in checks["beat"]["detail"]
    assert checks["database"]["status"] == checks["broker"]["status"] == checks["chain:31337"]["status"] == "ok"

    workflow_sweep()  # what beat runs every few seconds: it leaves the heartbeat
    ready = Client().get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_readyz_fails_while_a_chains_rpc_is_down() -> None:
    make_chain(f"http://127.0.0.1:{free_port()}")
    workflow_sweep()
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["chain:31337"]["status"] == "fail"
    assert response.json()["checks"]["beat"]["status"] == "ok"


def test_metrics_are_prometheus_text_and_move_with_the_state() -> None:
    before = Client().get("/metrics")
    assert before.status_code == 200 and before["Content-Type"].startswith("text/plain")
    for i in range(3):
        WorkflowRun.objects.create(kind="demo.kind", idempotency_key=f"k{i}", correlation_id="c", phase="completed")
    Heartbeat.objects.create(name="beat", at="2026-01-01T00:00:00Z")
    text = Client().get("/metrics").content.decode()
    assert 'orchestrator_workflow_runs{kind="demo.kind",phase="completed"} 3.0' in text
    assert 'orchestrator_heartbeat_age_seconds{name="beat"}' in text
    assert "orchestrator_workflow_stalled 0.0" in text
    assert 'celery_queue_depth{queue="workflows"}' in text
