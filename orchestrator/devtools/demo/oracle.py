"""The demo oracle's endpoint (only routed when DEMO_ORACLE is on)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from orchestrator.devtools.demo.vaults import demo_feed


def demo_oracle_feed(request: HttpRequest) -> JsonResponse:
    return JsonResponse(demo_feed())
