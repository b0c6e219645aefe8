"""OpenTelemetry traces: on only when the standard OTEL_* variables ask for an OTLP exporter.

Off (the default), nothing of the SDK is imported or installed: `span()` yields the API's
invalid span without touching the context, `trace_headers()` is empty, and no Celery signal
handler of ours is connected. On, each process installs one TracerProvider with a
BatchSpanProcessor and an OTLP/HTTP (protobuf) exporter, configured by the OTEL_* variables
(docs/operations.md, "Traces").

Who sets it up, once per process:
- web: orchestrator/wsgi.py (gunicorn's workers and runserver both load it), before the WSGI
  handler loads the middleware, so the Django instrumentation's middleware is first;
- worker: each prefork pool child on `worker_process_init`, never the parent: a
  BatchSpanProcessor's export thread does not survive a fork, and the parent runs no task.
  The child flushes on `worker_process_shutdown`, since pool children leave with os._exit and
  skip atexit;
- beat: on `beat_init`.

The W3C `traceparent` travels in every Celery message's headers (next to the correlation id of
observability.py), so a task's span is the child of whatever published it: a request, a step,
another task. A message published outside any span (beat's ticks, a management command) gets
a short `apply_async/<task>` span of its own, so its task still has a named parent."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import signals
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from orchestrator.infra.observability import current_correlation_id

if TYPE_CHECKING:
    from celery import Celery, Task
    from django.http import HttpRequest, HttpResponse
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger("orchestrator.tracing")

CORRELATION_ID = "orchestrator.correlation_id"
# Probes and scrapes every few seconds would drown the traces that matter.
DEFAULT_EXCLUDED_URLS = "/healthz,/readyz,/metrics,/static/"

_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
_running: dict[str, tuple[trace.Span, object]] = {}  # task id -> its span and context token


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces exported over OTLP: an endpoint is set, the
    SDK is not disabled, and the traces exporter is not "none"."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    if "otlp" not in exporters:
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def tracing_on() -> bool:
    return _provider is not None


def service_name(role: str) -> str:
    return os.environ.get("OTEL_SERVICE_NAME") or f"vault-orchestrator-{role}"


def tracing_setup(*, role: str) -> bool:
    """Installs this process's TracerProvider if the environment asks for traces; says whether
    tracing is on. Safe to call again: the first call decides."""
    global _provider, _tracer
    if _provider is not None:
        return True
    if not tracing_wanted(os.environ):
        return False
    # Imported here: a process with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service_name(role), "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(_correlation_id_processor())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer("orchestrator")
    _celery_connect()
    if role == "web":
        _django_instrument()
    logger.info("tracing on: %s exports spans over OTLP/HTTP", service_name(role))
    return True


def tracing_flush() -> None:
    """Exports what is buffered now (a benchmark between its timed parts)."""
    if _provider is not None:
        _provider.force_flush()


def tracing_shutdown() -> None:
    """Exports what is buffered and stops the export thread (the process is ending)."""
    if _provider is not None:
        _provider.shutdown()


def tracing_for_celery(app: Celery) -> None:
    """Connects the per-process setup to the lifecycle signals of `app`'s workers and beat
    (Celery's signals are global: the app only names whose they are)."""
    signals.worker_process_init.connect(_worker_child_started, weak=False)
    signals.worker_process_shutdown.connect(_worker_child_ending, weak=False)
    signals.worker_init.connect(_worker_started, weak=False)
    signals.beat_init.connect(_beat_started, weak=False)


def _worker_child_started(**_: Any) -> None:
    tracing_setup(role="worker")


def _worker_child_ending(**_: Any) -> None:
    tracing_shutdown()


def _worker_started(sender: Any = None, **_: Any) -> None:
    # A threads pool runs tasks in this process and sends no worker_process_init.
    if "thread" in str(getattr(sender, "pool_cls", "")).lower():
        tracing_setup(role="worker")


def _beat_started(**_: Any) -> None:
    tracing_setup(role="beat")


@contextmanager
def span(
    name: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
) -> Iterator[trace.Span]:
    """A span around the block, the current one inside it; an exception is recorded on it.
    With tracing off: the invalid span, and nothing else is done."""
    if _provider is None:
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes) as current:
        yield current


def current_context() -> otel_context.Context | None:
    """The context to hand to another thread (contextvars do not follow a thread pool)."""
    return otel_context.get_current() if _provider is not None else None


def trace_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for an outgoing HTTP request."""
    if _provider is None:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def span_failed(current: trace.Span, *, error_type: str, description: str = "") -> None:
    """Marks a span as failed by what happened, not by an exception (an HTTP answer, say)."""
    current.set_attribute("error.type", error_type)
    current.set_status(trace.Status(trace.StatusCode.ERROR, description or None))


def step_attributes(*, kind: str, run_id: object, step: str, attempt: int, compensating: bool) -> dict[str, Any]:
    return {
        "orchestrator.workflow.kind": kind,
        "orchestrator.workflow.run_id": str(run_id),
        "orchestrator.workflow.step": step,
        "orchestrator.workflow.attempt": attempt,
        "orchestrator.workflow.compensating": compensating,
    }


def _correlation_id_processor() -> Any:
    from opentelemetry.sdk.trace import SpanProcessor

    class CorrelationIdProcessor(SpanProcessor):
        """Stamps every span with the correlation id in force when it starts (observability.py),
        unless it was given one: tasks and steps set theirs before their spans start."""

        def on_start(self, span: Any, parent_context: object = None) -> None:
            cid = current_correlation_id()
            if cid != "-" and CORRELATION_ID not in (span.attributes or {}):
                span.set_attribute(CORRELATION_ID, cid)

    return CorrelationIdProcessor()


def _django_instrument() -> None:
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    configured = os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS") or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
    DjangoInstrumentor().instrument(
        response_hook=_response_hook, excluded_urls=None if configured else DEFAULT_EXCLUDED_URLS
    )


def _response_hook(span: trace.Span, request: HttpRequest, response: HttpResponse) -> None:
    # The correlation id is chosen by CorrelationIdMiddleware, after this span started.
    cid = response.get("X-Request-ID") if hasattr(response, "get") else None
    if cid and span.is_recording():
        span.set_attribute(CORRELATION_ID, cid)


def _celery_connect() -> None:
    # Connected after observability.py's handlers, so a task's correlation id is set when its
    # span starts; weak=False since these are module functions kept for the process's life.
    signals.before_task_publish.connect(_before_publish, weak=False)
    signals.task_prerun.connect(_task_started, weak=False)
    signals.task_failure.connect(_task_failed, weak=False)
    signals.task_postrun.connect(_task_ended, weak=False)


def _before_publish(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:
        return
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)
        return
    root = _tracer.start_span(f"apply_async/{sender}", kind=SpanKind.PRODUCER)
    root.set_attribute("celery.task_name", str(sender))
    propagate.inject(headers, context=trace.set_span_in_context(root))
    root.end()


def _task_started(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    request = task.request
    carrier = {k: v for k in ("traceparent", "tracestate") if isinstance(v := getattr(request, k, None), str)}
    parent = propagate.extract(carrier)
    delivery = getattr(request, "delivery_info", None) or {}
    attributes: dict[str, str | int] = {
        "celery.task_name": task.name,
        "messaging.message.id": task_id,
        "messaging.destination.name": str(delivery.get("routing_key") or ""),
        "celery.retries": int(getattr(request, "retries", 0) or 0),
    }
    current = _tracer.start_span(
        f"run/{task.name}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    )
    token = otel_context.attach(trace.set_span_in_context(current, parent))
    _running[task_id] = (current, token)


def _task_failed(task_id: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
    entry = _running.get(task_id or "")
    if entry is not None and exception is not None:
        entry[0].record_exception(exception)
        entry[0].set_status(trace.Status(trace.StatusCode.ERROR, type(exception).__name__))


def _task_ended(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    entry = _running.pop(task_id or "", None)
    if entry is None:
        return
    current, token = entry
    if state:
        current.set_attribute("celery.state", state)
    otel_context.detach(token)  # type: ignore[arg-type]
    current.end()
