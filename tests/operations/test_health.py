"""Readiness and metrics: what an operator's probes and Prometheus see."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.engine.tasks import workflow_sweep
from orchestrator.infra.models import Heartbeat
from relayer.models import RelayTransaction, TxPhase
from relayer.services.requests import relay_request
from tests.conftest import AnvilFactory, Workers, free_port, wait_until
from tests.factories import HeartbeatFactory, NodeChainFactory, WorkflowRunFactory
from tests.support.relays import RELAY_ENV, funded_signer, settled
from tests.support.runs import reach
from tests.support.servers import redis_server, web_server

pytestmark = pytest.mark.django_db


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(client: Client | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = (client or Client()).get("/metrics")
    assert response.status_code == 200
    return samples(response.content.decode())


def test_healthz_answers_without_touching_anything() -> None:
    assert Client().get("/healthz").json() == {"status": "ok"}


def test_readyz_says_which_part_is_missing_and_recovers(anvil: str) -> None:
    NodeChainFactory.create(rpc_url=anvil)
    response = Client().get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["beat"]["status"] == "fail" and "no beat heartbeat" in checks["beat"]["detail"]
    assert checks["database"]["status"] == checks["broker"]["status"] == checks["chain:31337"]["status"] == "ok"

    workflow_sweep()  # what beat runs every few seconds: it leaves the heartbeat
    ready = Client().get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_readyz_fails_while_a_chains_rpc_is_down() -> None:
    NodeChainFactory.create(rpc_url=f"http://127.0.0.1:{free_port()}")
    workflow_sweep()
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["chain:31337"]["status"] == "fail"
    assert response.json()["checks"]["beat"]["status"] == "ok"


def test_readyz_fails_on_an_old_beat_heartbeat() -> None:
    HeartbeatFactory.create(name="beat", at=timezone.now() - timedelta(minutes=10))
    beat = Client().get("/readyz").json()["checks"]["beat"]
    assert beat["status"] == "fail" and "s ago" in beat["detail"]


@pytest.mark.django_db(transaction=True)
def test_a_web_process_is_unready_while_its_redis_or_its_chain_is_down_and_recovers(
    worker_env: dict[str, str], anvils: AnvilFactory
) -> None:
    # A Redis and an anvil of this test's own, so stopping them disturbs nobody else.
    redis_port, web_port = free_port(), free_port()
    broker = redis_server(redis_port)
    chain_url = anvils.start()
    chain_port = int(chain_url.rsplit(":", 1)[1])
    NodeChainFactory.create(rpc_url=chain_url)
    HeartbeatFactory.create(name="beat")
    env = {
        **worker_env,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "BEAT_HEARTBEAT_MAX_AGE_SECONDS": "600",
    }
    web = web_server(web_port, env)
    base = f"http://127.0.0.1:{web_port}"

    def ready() -> httpx.Response:
        return httpx.get(f"{base}/readyz", timeout=20, trust_env=False)

    try:
        assert ready().status_code == 200

        broker.stop()
        down = ready()
        assert down.status_code == 503
        checks = down.json()["checks"]
        assert checks["broker"]["status"] == "fail"
        assert checks["database"]["status"] == checks["beat"]["status"] == checks["chain:31337"]["status"] == "ok"
        # Metrics still answer, promptly, and say the broker is gone.
        metrics = samples(httpx.get(f"{base}/metrics", timeout=10, trust_env=False).text)
        assert metrics[("celery_broker_up", ())] == 0
        assert ("celery_queue_depth", (("queue", "workflows"),)) not in metrics

        broker = redis_server(redis_port)
        assert ready().status_code == 200

        anvils.stop_all()
        down = ready()
        assert down.status_code == 503
        assert down.json()["checks"]["chain:31337"]["status"] == "fail"
        assert down.json()["checks"]["broker"]["status"] == "ok"

        anvils.start(port=chain_port)
        assert ready().status_code == 200
    finally:
        web.stop()
        broker.stop()


def test_metrics_are_prometheus_text_and_move_with_the_state(settings: Any) -> None:
    settings.WORKFLOW_STALL_PENDING_SECONDS = settings.WORKFLOW_STALL_NO_MUTATION_SECONDS = 0
    before = Client().get("/metrics")
    assert before.status_code == 200 and before["Content-Type"].startswith("text/plain")
    WorkflowRunFactory.create_batch(3, kind="demo.kind", phase="completed")
    WorkflowRunFactory.create(kind="demo.kind", phase="failed")
    WorkflowRunFactory.create(kind="demo.kind", phase="dead-letter")
    an_hour_ago = timezone.now() - timedelta(hours=1)
    WorkflowRunFactory.create(kind="demo.kind", phase="submitting", due_at=an_hour_ago, dispatched_at=an_hour_ago)
    HeartbeatFactory.create(name="beat", at="2026-01-01T00:00:00Z")
    HeartbeatFactory.create(name="worker:w1@host")
    found = scrape()
    assert found[("orchestrator_workflow_runs", (("kind", "demo.kind"), ("phase", "completed")))] == 3
    completed = "orchestrator_workflow_completed_total"
    assert found[(completed, (("kind", "demo.kind"), ("outcome", "completed")))] == 3
    assert found[(completed, (("kind", "demo.kind"), ("outcome", "failed")))] == 1
    assert (completed, (("kind", "demo.kind"), ("outcome", "dead-letter"))) not in found  # not final
    assert found[("orchestrator_workflow_stalled", ())] == 1
    assert found[("orchestrator_heartbeat_age_seconds", (("name", "beat"),))] > 3600
    assert found[("orchestrator_heartbeat_age_seconds", (("name", "worker:w1@host"),))] < 60
    assert found[("orchestrator_workers_alive", ())] == 1
    assert found[("celery_broker_up", ())] == 1
    assert ("celery_queue_depth", (("queue", "workflows"),)) in found
    assert found[("relayer_confirmation_seconds_count", ())] == 0
    assert ("orchestrator_metrics_collector_errors", (("collector", "queues"),)) not in found


def test_a_failing_collector_is_reported_and_the_others_still_served() -> None:
    from orchestrator.infra import metrics

    def broken() -> list[object]:
        raise RuntimeError("boom")

    metrics.collector(broken)
    try:
        found = scrape()
    finally:
        metrics.COLLECTORS.remove(broken)
    assert found[("orchestrator_metrics_collector_errors", (("collector", "broken"),))] == 1
    assert found[("celery_broker_up", ())] == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.relayer
def test_metrics_move_after_a_relay_flow_on_a_real_worker(workers: Workers, anvil: str) -> None:
    worker = workers.start(extra_env={**RELAY_ENV, "WORKER_HEARTBEAT_SECONDS": "0.5"})
    chain = NodeChainFactory.create(rpc_url=anvil, poll_interval=0.1)
    signer = funded_signer(anvil)
    before = scrape()
    completed = ("orchestrator_workflow_completed_total", (("kind", "relay.batch"), ("outcome", "completed")))

    tx = relay_request(
        signer=signer,
        chain=chain,
        to="0x000000000000000000000000000000000000dEaD",
        value=1,
        idempotency_key=uuid.uuid4().hex,
    )
    settled(tx.id, TxPhase.COMPLETED)
    reach(RelayTransaction.objects.get(pk=tx.id).workflow_run_id)  # the run ends just after the relay
    after = scrape()
    assert after[completed] == before.get(completed, 0) + 1
    relays = ("relayer_transactions", (("phase", "completed"),))
    assert after[relays] == before.get(relays, 0) + 1
    assert after[("relayer_confirmation_seconds_count", ())] == before[("relayer_confirmation_seconds_count", ())] + 1
    assert after[("relayer_confirmation_seconds_sum", ())] > before[("relayer_confirmation_seconds_sum", ())]
    assert (
        after[("relayer_confirmation_seconds_bucket", (("le", "+Inf"),))]
        == after[("relayer_confirmation_seconds_count", ())]
    )

    # The worker's heartbeat, written from its own process, is visible in this scrape.
    worker_beats = wait_until(
        lambda: [k for k in scrape() if k[0] == "orchestrator_heartbeat_age_seconds" and "worker:" in k[1][0][1]],
        timeout=15,
        message="a worker heartbeat in /metrics",
    )
    assert len(worker_beats) == 1
    assert scrape()[("orchestrator_workers_alive", ())] == 1
    worker.stop()  # a clean stop takes the worker's row with it
    assert not Heartbeat.objects.filter(name__startswith="worker:").exists()
