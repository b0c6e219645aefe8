"""A postprocessing hook of the OpenAPI schema (SPECTACULAR_SETTINGS): the chains a
subscription or a FILTER config may name are the chains this deployment serves, so the schema
lists them as the enum of every chainId marked `x-served-chains`, at the time it is served."""

from __future__ import annotations

from typing import Any

from relayer.models import Chain

MARKER = "x-served-chains"


def served_chains_enum(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    served = list(Chain.objects.filter(enabled=True).order_by("chain_id").values_list("chain_id", flat=True))

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.pop(MARKER, False) and served:
                node["enum"] = served
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(result)
    return result
