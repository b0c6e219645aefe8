"""One correlation id finds everything about one execution: the run, its transitions, the relay
it asked for, and a structured log line from every step, written by a real worker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine.models import WorkflowTransition
from orchestrator.engine.services import workflow_start
from relayer.models import RelayTransaction
from relayer.services.requests import relay_request
from tests.conftest import Workers, wait_until
from tests.factories import NodeChainFactory
from tests.support.relays import RELAY_ENV, batched, funded_signer
from tests.support.runs import reach

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.relayer]


def json_lines(log: Path, correlation_id: str) -> list[dict[str, Any]]:
    lines = []
    for raw in log.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            line = json.loads(raw)
            if line["correlation_id"] == correlation_id:
                lines.append(line)
    return lines


def test_every_step_of_a_relay_logs_a_json_line_with_the_runs_correlation_id(workers: Workers, anvil: str) -> None:
    worker = workers.start(extra_env={**RELAY_ENV, "LOG_FORMAT": "json"})
    chain = NodeChainFactory.create(rpc_url=anvil, poll_interval=0.1)
    signer = funded_signer(anvil)
    cid = f"ops-{uuid.uuid4().hex}"

    tx = relay_request(
        signer=signer,
        chain=chain,
        to="0x000000000000000000000000000000000000dEaD",
        value=1,
        idempotency_key=uuid.uuid4().hex,
        correlation_id=cid,
    )
    run = reach(batched(tx.id))  # a batch of one carries its request's correlation id

    steps = ["simulate", "sign", "broadcast", "confirm"]

    def every_step_logged() -> list[dict[str, Any]] | None:
        lines = json_lines(worker.log_path, cid)
        messages = " | ".join(line["message"] for line in lines)
        return lines if all(f"step {i} {name} #1 done" in messages for i, name in enumerate(steps)) else None

    lines = wait_until(every_step_logged, timeout=10, message="a log line per step")
    messages = [line["message"] for line in lines]
    relayer_lines = [line["message"] for line in lines if line["logger"] == "relayer"]
    assert any("signed nonce" in m for m in relayer_lines)
    assert any("broadcast" in m for m in relayer_lines)
    assert any("confirmed" in m for m in relayer_lines)
    assert any(m.endswith("completed") and str(run.id) in m for m in messages)
    assert {line["level"] for line in lines} == {"INFO"}

    # The same id is on every record of that execution.
    assert run.correlation_id == cid
    assert RelayTransaction.objects.get(pk=tx.id).correlation_id == cid
    assert set(WorkflowTransition.objects.filter(run=run).values_list("correlation_id", flat=True)) == {cid}


def test_a_run_started_by_a_step_shares_its_parents_correlation_id(worker: object) -> None:
    parent, _ = workflow_start(kind="test.parent", correlation_id="req-42")
    done = reach(parent.id)
    child = reach(uuid.UUID(done.outputs["spawn"]["child"]))
    assert child.correlation_id == "req-42"
    assert set(WorkflowTransition.objects.filter(run=child).values_list("correlation_id", flat=True)) == {"req-42"}
