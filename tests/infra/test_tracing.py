"""Traces (orchestrator/infra/tracing.py): off without the OTEL_* variables; with them, one trace
follows a feed from its API request through Flow A's steps and the relay's phases, and an
automation's hook call carries its traceparent. The stack tests export to a real OTLP/HTTP
receiver running in this process (orchestrator/devtools/otlp_receiver.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from opentelemetry import trace

from orchestrator.automations.models import Firing
from orchestrator.devtools import processes
from orchestrator.devtools.otlp_receiver import OtlpReceiver, ReceivedSpan
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.infra import tracing
from orchestrator.infra.tokens import api_token_issue
from relayer.models import RelayTransaction
from tests.conftest import ARTIFACTS, AnvilFactory, Workers, free_port, wait_until
from tests.support.automations import LOCAL_DESTINATIONS, automation_create, beat_start, fund
from tests.support.executor_server import ExecutorServer
from tests.support.flows import ENTRIES, bootstrapped_vault, signed_feed
from tests.support.relays import RELAY_ENV, make_chain
from vaults.onchain import approve_calldata, deploy_asset

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[0-9a-f]$")
FLOW_A_STEPS = ("verify", "positions", "allocate", "check", "decide", "relay")
RELAY_PHASES = ("simulate", "sign", "broadcast", "confirm")
SERVER, CLIENT = 2, 3  # OTLP span kinds


# The fast tier: nothing set up without the variables.


def test_without_otel_variables_tracing_is_off_and_no_sdk_provider_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.tracing_setup(role="worker") is False
    assert not tracing.tracing_on()
    from opentelemetry.sdk.trace import TracerProvider

    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert tracing.trace_headers() == {} and tracing.current_context() is None
    with tracing.span("anything") as current:
        assert current is trace.INVALID_SPAN and not current.is_recording()


def test_a_web_process_started_without_otel_variables_loads_no_tracing_sdk() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    probe = (
        "import sys, weakref, orchestrator.wsgi\n"
        "from celery import signals\n"
        "from opentelemetry import trace\n"
        "from orchestrator.infra import tracing\n"
        "refs = [r[1] for r in signals.task_prerun.receivers]\n"
        "handlers = [r() if isinstance(r, weakref.ReferenceType) else r for r in refs]\n"
        "print(type(trace.get_tracer_provider()).__name__, 'opentelemetry.sdk.trace' in sys.modules,\n"
        "      tracing._task_started in handlers)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ProxyTracerProvider", "False", "False"]


def test_the_otel_variables_decide_whether_traces_are_exported() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert tracing.tracing_wanted(endpoint)
    assert tracing.tracing_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not tracing.tracing_wanted({})
    assert not tracing.tracing_wanted({**endpoint, "OTEL_SDK_DISABLED": "true"})
    assert tracing.tracing_wanted({**endpoint, "OTEL_SDK_DISABLED": "false"})
    assert not tracing.tracing_wanted({**endpoint, "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.tracing_wanted({**endpoint, "OTEL_TRACES_EXPORTER": "console"})
    assert tracing.tracing_wanted({**endpoint, "OTEL_TRACES_EXPORTER": "otlp,console"})


def test_service_names_default_by_role_and_follow_otel_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    assert [tracing.service_name(r) for r in ("web", "worker", "beat")] == [
        "vault-orchestrator-web",
        "vault-orchestrator-worker",
        "vault-orchestrator-beat",
    ]
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orchestrator-eu")
    assert tracing.service_name("worker") == "orchestrator-eu"


# The stack: real web server, workers, beat and anvil, exporting to a receiver here.


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    running = OtlpReceiver().start()
    yield running
    running.stop()


def otel_env(receiver: OtlpReceiver, *, delay_ms: int = 200) -> dict[str, str]:
    # The batch processor's delay: short, so a test need not wait the default five seconds; or
    # longer than the test, so the spans arrive only if the processes flush as they stop.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": str(delay_ms)}


def named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    by_id = {s.span_id: s for s in spans}
    chain, current = [], span
    while current.parent_id and current.parent_id in by_id:
        current = by_id[current.parent_id]
        chain.append(current)
    return chain


def dump(spans: list[ReceivedSpan], name: str) -> None:
    """The trace as an indented tree in test-artifacts/traces/, for whoever reads a failure."""
    children: dict[str, list[ReceivedSpan]] = {}
    for s in sorted(spans, key=lambda s: s.start_ns):
        children.setdefault(s.parent_id, []).append(s)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for s in children.get(parent, []):
            lines.append(f"{'  ' * depth}{s.name}  [{s.service}] {(s.end_ns - s.start_ns) / 1e6:.1f} ms")
            walk(s.span_id, depth + 1)

    walk("", 0)
    (ARTIFACTS / "traces").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "traces" / f"{name}.txt").write_text("\n".join(lines) + "\n")


def connected(spans: list[ReceivedSpan]) -> bool:
    """Every span's parent is in the trace, and there is one root."""
    ids = {s.span_id for s in spans}
    return sum(not s.parent_id for s in spans) == 1 and all(not s.parent_id or s.parent_id in ids for s in spans)


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_one_trace_links_the_feed_request_the_flow_a_steps_and_the_relay_phases(
    workers: Workers, anvils: AnvilFactory, worker_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    chain = make_chain(anvils.start(), poll_interval=0.1)
    setup = bootstrapped_vault(chain)
    # Nothing is exported before the processes stop: the pool children's worker_process_shutdown
    # and gunicorn's worker exit must flush what they hold.
    held = otel_env(receiver, delay_ms=600_000)
    workers.start(extra_env={**RELAY_ENV, **held})
    port = free_port()
    web = processes.web_server(
        port=port,
        log_path=ARTIFACTS / "logs" / f"web-traces-{port}.log",
        env={**worker_env, **held},
        workers=1,
        threads=4,
    )
    web.start().wait_ready(timeout=60)
    cid = uuid.uuid4().hex
    token = api_token_issue(user=get_user_model().objects.create_user("feeder"))
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/feeds",
            json=signed_feed(setup.oracle, ENTRIES),
            headers={"Authorization": f"Token {token}", "X-Request-ID": cid},
            timeout=30,
            trust_env=False,
        )
        assert response.status_code == 201, response.text
        feed_id = response.json()["id"]
        run = wait_until(
            lambda: WorkflowRun.objects.filter(
                kind="vault.rebalance", input__feed=feed_id, phase=Phase.COMPLETED
            ).first(),
            timeout=90,
            interval=0.2,
            message="Flow A's run to complete",
        )
        assert receiver.snapshot() == []  # all held in the processes' batch processors
    finally:
        web.stop()
        workers.stop_all()

    request_span = wait_until(
        lambda: next((s for s in receiver.snapshot() if s.kind == SERVER and "v1/feeds" in s.name), None),
        timeout=20,
        message="the API request's span",
    )
    wanted = {f"vault.rebalance/{step}" for step in FLOW_A_STEPS} | {f"relay/{phase}" for phase in RELAY_PHASES}

    def complete() -> list[ReceivedSpan] | None:
        spans = receiver.trace(request_span.trace_id)
        return spans if wanted <= {s.name for s in spans} and connected(spans) else None

    spans = wait_until(complete, timeout=30, message="Flow A's and the relay's spans in the request's trace")
    dump(spans, "flow-a")

    assert request_span.parent_id == "" and request_span.service == "vault-orchestrator-web"
    # The Django instrumentation names the old HTTP conventions' attribute unless told otherwise.
    status = request_span.attributes.get("http.response.status_code", request_span.attributes.get("http.status_code"))
    assert request_span.name == "POST v1/feeds" and status == 201
    assert request_span.attributes[tracing.CORRELATION_ID] == cid == run.correlation_id
    # The first step's task is the request's child: its traceparent came in the Celery message.
    first_task = next(
        a for a in ancestors(named(spans, "vault.rebalance/verify")[0], spans) if a.name.startswith("run/")
    )
    assert first_task.name == "run/orchestrator.workflow_step" and first_task.service == "vault-orchestrator-worker"
    assert request_span in ancestors(first_task, spans)
    for step in FLOW_A_STEPS:
        step_span = named(spans, f"vault.rebalance/{step}")[0]
        assert step_span.attributes["orchestrator.workflow.run_id"] == str(run.id)
        assert step_span.attributes["orchestrator.workflow.kind"] == "vault.rebalance"
        assert step_span.attributes["orchestrator.workflow.step"] == step
        assert step_span.attributes["orchestrator.workflow.attempt"] >= 1
        assert step_span.attributes[tracing.CORRELATION_ID] == cid
    relays = list(RelayTransaction.objects.filter(correlation_id=cid))
    assert relays and all(r.tx_hash for r in relays)
    for phase in RELAY_PHASES:
        for phase_span in named(spans, f"relay/{phase}"):
            parent = ancestors(phase_span, spans)[0]
            assert parent.name == f"relay.batch/{phase}"  # the workflow step it is the work of
            assert phase_span.attributes["relayer.chain_id"] == chain.chain_id
            assert cid in phase_span.attributes["relayer.correlation_ids"]
            assert set(phase_span.attributes["relayer.request_ids"]) & {str(r.id) for r in relays}
    signed = {h for s in named(spans, "relay/sign") for h in s.attributes["relayer.tx_hashes"]}
    assert {r.tx_hash for r in relays} <= signed | {
        h for s in named(spans, "relay/broadcast") for h in s.attributes["relayer.tx_hashes"]
    }


@pytest.mark.stack
@pytest.mark.automations
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("local_destinations")
def test_a_hook_call_sends_its_traceparent_and_its_span_is_in_the_trace_from_dispatch_to_relay(
    anvil: str, server: ExecutorServer, workers: Workers, worker_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    """Firings are started by beat's dispatch tick, not by a request: their trace begins at the
    tick's publication in beat and runs through dispatch, delivery, the hook calls and the relay."""
    make_chain(anvil)
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(anvil))
    token = deploy_asset(w3=w3, deployer=w3.eth.accounts[0])
    executor = server.executor
    relayed: dict[str, Any] = {}

    def first_relays_then_skips(body: dict[str, Any]) -> Any:
        if relayed:
            return executor.skip(body)
        relayed["request"] = body["requestID"]
        return executor.task(body, to=token, data=approve_calldata(executor.account.address, 1000))

    executor.on_trigger = first_relays_then_skips
    executor.on_executed = lambda body: (200, {"log": {}}, 0)
    automation = automation_create(server, source={"type": "INTERVAL", "value": 2})
    fund(anvil, *automation.config["relayerAddress"])
    automation.subscribe(tokenLimits={token: "1"})
    otel = {**LOCAL_DESTINATIONS, **otel_env(receiver)}
    workers.start(extra_env=otel)
    beat = beat_start({**worker_env, **otel})
    try:
        wait_until(lambda: executor.executed(), timeout=60, message="the post-execution hook")
    finally:
        beat.stop()

    trigger = next(t for t in executor.triggers() if t.body["requestID"] == relayed["request"])
    match = TRACEPARENT.match(trigger.headers.get("traceparent", ""))
    assert match, trigger.headers
    trace_id, hook_span_id = match.groups()
    firing = Firing.objects.get(request_id=relayed["request"])
    wanted = {"hook/trigger", "hook/executed", *(f"relay/{phase}" for phase in RELAY_PHASES)}

    def complete() -> list[ReceivedSpan] | None:
        spans = receiver.trace(trace_id)
        return spans if wanted <= {s.name for s in spans} and connected(spans) else None

    spans = wait_until(complete, timeout=30, message="the hook's trace through the relay")
    dump(spans, "automation-hook")
    hook = next(s for s in spans if s.span_id == hook_span_id)
    assert hook.name == "hook/trigger" and hook.kind == CLIENT
    assert hook.attributes["url.path"] == "/kernel/trigger" and hook.attributes["http.response.status_code"] == 200
    assert hook.attributes[tracing.CORRELATION_ID] == firing.correlation_id
    assert hook.attributes["orchestrator.hook.request_id"] == relayed["request"]
    lineage = [a.name for a in ancestors(hook, spans)]
    assert lineage[0] == "run/automations.deliver"
    assert "run/automations.dispatch" in lineage and lineage[-1] == "apply_async/automations.dispatch"
    assert next(s for s in spans if not s.parent_id).service == "vault-orchestrator-beat"
    executed = named(spans, "hook/executed")[0]
    assert executed.attributes["url.path"] == "/kernel/executed"
    assert executed.attributes[tracing.CORRELATION_ID] == firing.correlation_id
    executed_request = next(r for r in executor.executed() if r.body["executionRequestID"] == relayed["request"])
    assert TRACEPARENT.match(executed_request.headers["traceparent"]).group(1) == trace_id  # type: ignore[union-attr]
