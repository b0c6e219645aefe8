"""The automation API's wire shapes (docs/api.md, "Automation API"): what clients and executors
receive."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestrator.automations.models import AutomationConfig, Executor, Firing, SourceType, Subscription


def rfc3339(when: datetime) -> str:
    """UTC with a Z, as the automation objects write times (docs/api.md, "Conventions")."""
    return when.isoformat().replace("+00:00", "Z")


def executor_json(executor: Executor) -> dict[str, Any]:
    return {
        "registryID": str(executor.registry_id),
        "address": executor.address,
        "name": executor.name,
        "metadata": executor.metadata,
        "createdAt": rfc3339(executor.created_at),
    }


def config_json(config: AutomationConfig) -> dict[str, Any]:
    value: int | dict[str, Any] | None = (
        config.interval_seconds if config.source_type == SourceType.INTERVAL else config.filter
    )
    return {
        "id": str(config.id),
        "registryID": str(config.executor.registry_id),
        "executorAddress": config.executor_key.address if config.executor_key else config.executor.address,
        "relayerAddress": sorted(k.address for k in config.relayers.all()),
        "verifyingAddress": config.verifying_key.address,
        "source": {"type": config.source_type, "value": value},
        "destination": {"baseURL": config.base_url},
        "verifyPayload": config.verify_payload,
        "relayerCount": config.relayer_count,
        "autosign": config.autosign,
        "allowedTargets": config.allowed_targets,
        "status": config.status,
        "createdAt": rfc3339(config.created_at),
    }


def subscription_json(sub: Subscription) -> dict[str, Any]:
    return {
        "id": str(sub.id),
        "registryId": str(sub.config.executor.registry_id),
        "chainId": sub.chain_id,
        "subAccountAddress": sub.sub_account_address,
        "status": sub.status,
        "duration": sub.config.interval_seconds or 0,
        "tokenInputs": sub.token_inputs,
        "tokenLimits": sub.token_limits,
        "metadata": sub.metadata,
        "feeToken": sub.fee_token,
        "feeAmount": sub.fee_amount,
        "commitHash": sub.commit_hash,
        "createdAt": rfc3339(sub.created_at),
    }


def log_entry_json(firing: Firing) -> dict[str, Any]:
    """One entry of GET /v1/{sub_id}/logs, with metadata.outcome (docs/api.md, "Logs")."""
    sub = firing.subscription
    return {
        "metadata": {
            "postExecutionState": firing.post_execution_state,
            "request": firing.request,
            "response": firing.response,
            "outcome": {"status": firing.status, "reason": firing.reason},
        },
        "message": "trigger",
        "createdAt": rfc3339(firing.created_at),
        "subAccountAddress": sub.sub_account_address,
        "chainId": sub.chain_id,
        "id": str(firing.id),
        "subId": str(sub.id),
        "outputTxHash": firing.output_tx_hash,
    }
