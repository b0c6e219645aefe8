"""Correlation ids and structured logs.

One id follows a piece of work everywhere: the HTTP request that started it, every Celery task
message (as a header), every log line. A workflow run's correlation id is set for the duration
of each of its steps, so `grep <id>` finds the whole execution.
"""

from __future__ import annotations

import contextvars
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import before_task_publish, task_postrun, task_prerun
from django.http import HttpRequest, HttpResponse

_correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="-")
HEADER = "correlation_id"


def current_correlation_id() -> str:
    return _correlation_id.get()


def new_correlation_id() -> str:
    return uuid.uuid4().hex


@contextmanager
def correlation(correlation_id: str) -> Iterator[None]:
    token = _correlation_id.set(correlation_id)
    try:
        yield
    finally:
        _correlation_id.reset(token)


class CorrelationIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = _correlation_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "correlation_id": getattr(record, "correlation_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


class CorrelationIdMiddleware:
    """Takes X-Request-ID from the request (or makes one) and echoes it on the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        cid = incoming if incoming and len(incoming) <= 64 and incoming.isprintable() else new_correlation_id()
        with correlation(cid):
            response = self.get_response(request)
        response["X-Request-ID"] = cid
        return response


@before_task_publish.connect
def _publish_correlation(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None and HEADER not in headers:
        headers[HEADER] = _correlation_id.get()


_task_tokens: dict[str, contextvars.Token[str]] = {}


@task_prerun.connect
def _enter_correlation(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    cid = getattr(task.request, HEADER, None) if task is not None else None
    if cid and task_id:
        _task_tokens[task_id] = _correlation_id.set(cid)


@task_postrun.connect
def _leave_correlation(task_id: str | None = None, **_: Any) -> None:
    token = _task_tokens.pop(task_id or "", None)
    if token is not None:
        _correlation_id.reset(token)
