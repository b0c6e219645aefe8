"""The config actions' typed data now lives in orchestrator.automations.typed_data; these names
stay importable from here for the benchmarks that still do (soak_driver, triggers)."""

from __future__ import annotations

from orchestrator.automations.typed_data import (
    KERNEL_ACTION_TYPES,
    KERNEL_DOMAIN,
    kernel_action_message,
    kernel_action_signer,
)

__all__ = ["KERNEL_ACTION_TYPES", "KERNEL_DOMAIN", "kernel_action_message", "kernel_action_signer"]
