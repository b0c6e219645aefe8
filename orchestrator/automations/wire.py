"""The automation API's wire shapes (docs/api.md, "Automation API"): what clients and executors
receive, and the serializers that describe them in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orchestrator.automations.models import (
    AutomationConfig,
    ConfigStatus,
    Executor,
    Firing,
    FiringStatus,
    SourceType,
    Subscription,
    SubscriptionStatus,
)
from orchestrator.automations.selectors import validator_address


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
    return subscription_wire(
        id=sub.id,
        registry_id=sub.config.executor.registry_id,
        chain_id=sub.chain_id,
        sub_account_address=sub.sub_account_address,
        status=sub.status,
        duration=sub.config.interval_seconds or 0,
        token_inputs=sub.token_inputs,
        token_limits=sub.token_limits,
        metadata=sub.metadata,
        fee_token=sub.fee_token,
        fee_amount=sub.fee_amount,
        commit_hash=sub.commit_hash,
        created_at=sub.created_at,
        module_address=sub.module_address,
        validator=validator_address() if sub.module_address else None,
    )


def subscription_wire(
    *,
    id: Any,
    registry_id: Any,
    chain_id: int,
    sub_account_address: str,
    status: int,
    duration: int,
    token_inputs: Any,
    token_limits: Any,
    metadata: Any,
    fee_token: str,
    fee_amount: str,
    commit_hash: str,
    created_at: datetime,
    module_address: str,
    validator: str | None,
) -> dict[str, Any]:
    """The subscription object from plain values: the API's, and the dispatcher's from the
    tuples it claims (services/interval_batch.py), so both send one wire format."""
    return {
        "id": str(id),
        "registryId": str(registry_id),
        "chainId": chain_id,
        "subAccountAddress": sub_account_address,
        "status": status,
        "duration": duration,
        "tokenInputs": token_inputs,
        "tokenLimits": token_limits,
        "metadata": metadata,
        "feeToken": fee_token,
        "feeAmount": fee_amount,
        "commitHash": commit_hash,
        "createdAt": rfc3339(created_at),
        "executionPath": "module" if module_address else "direct",
        "moduleAddress": module_address or None,
        "validatorAddress": validator if module_address else None,
    }


def trigger_body(
    *,
    execution_count: int,
    prev_execution_at: datetime | None,
    prev_execution_id: str,
    executor_address: str,
    executor_id: str,
    sub_account_address: str,
    chain_id: int,
    subscription: dict[str, Any],
    request_id: str,
    signature: str,
    trigger: dict[str, Any],
) -> dict[str, Any]:
    """The /kernel/trigger body (docs/api.md), for firing_new and the INTERVAL dispatch batch."""
    return {
        "context": {
            "executionCount": execution_count,
            "prevExecutionAt": rfc3339(prev_execution_at) if prev_execution_at else None,
            "prevExecutionID": prev_execution_id or None,
        },
        "params": {
            "executorAddress": executor_address,
            "subAccountAddress": sub_account_address,
            "executorID": executor_id,
            "chainID": chain_id,
            "subscription": subscription,
        },
        "requestID": request_id,
        "signature": signature,
        "trigger": trigger,
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


# --- The same shapes for the OpenAPI schema (the views answer the dicts above) ---------------


class ExecutorOut(serializers.Serializer):
    registryID = serializers.UUIDField()
    address = serializers.CharField()
    name = serializers.CharField()
    metadata = serializers.DictField()
    createdAt = serializers.DateTimeField()


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "minimum": 1, "description": "INTERVAL: whole seconds"},
            {"type": "object", "additionalProperties": True, "description": "FILTER: the eth_getLogs filter"},
        ]
    }
)
class _SourceValueOut(serializers.JSONField):
    pass


class SourceOut(serializers.Serializer):
    type = serializers.ChoiceField(choices=SourceType.values)
    value = _SourceValueOut()


class DestinationOut(serializers.Serializer):
    baseURL = serializers.CharField()


class ConfigCreatedOut(serializers.Serializer):
    id = serializers.UUIDField()
    registryID = serializers.UUIDField()
    executorAddress = serializers.CharField()
    hmacKey = serializers.CharField(help_text="64 hex characters; shown in this answer only.")
    relayerAddress = serializers.ListField(child=serializers.CharField())
    verifyingAddress = serializers.CharField()


class ConfigOut(serializers.Serializer):
    id = serializers.UUIDField()
    registryID = serializers.UUIDField()
    executorAddress = serializers.CharField()
    relayerAddress = serializers.ListField(child=serializers.CharField())
    verifyingAddress = serializers.CharField()
    source = SourceOut()  # type: ignore[assignment]  # DRF pops declared fields off the class
    destination = DestinationOut()
    verifyPayload = serializers.BooleanField()
    relayerCount = serializers.IntegerField()
    autosign = serializers.BooleanField()
    allowedTargets = serializers.ListField(child=serializers.CharField())
    status = serializers.ChoiceField(choices=ConfigStatus.values)
    createdAt = serializers.DateTimeField()


class SubscriptionOut(serializers.Serializer):
    id = serializers.UUIDField()
    registryId = serializers.UUIDField()
    chainId = serializers.IntegerField()
    subAccountAddress = serializers.CharField()
    status = serializers.ChoiceField(choices=SubscriptionStatus.values, help_text="2 active, 3 cancelled.")
    duration = serializers.IntegerField(help_text="The config's interval in seconds; 0 for FILTER.")
    tokenInputs = serializers.DictField(child=serializers.CharField())
    tokenLimits = serializers.DictField(child=serializers.CharField())
    metadata = serializers.DictField()
    feeToken = serializers.CharField(allow_blank=True)
    feeAmount = serializers.CharField()
    commitHash = serializers.CharField(allow_blank=True)
    createdAt = serializers.DateTimeField()
    executionPath = serializers.ChoiceField(
        choices=["direct", "module"],
        help_text="direct: tasks are transactions from the config's relayer key; module: they run "
        "through the Safe's policy module (executeRequest), the relayer key only paying gas.",
    )
    moduleAddress = serializers.CharField(allow_null=True, help_text="The Safe's VaultPolicyModule; null for direct.")
    validatorAddress = serializers.CharField(
        allow_null=True,
        help_text="The orchestrator's validator, to register with the module's setValidator; null for direct.",
    )


class OutcomeOut(serializers.Serializer):
    status = serializers.ChoiceField(choices=FiringStatus.values)
    reason = serializers.CharField(allow_blank=True)


class LogMetadataOut(serializers.Serializer):
    postExecutionState = serializers.JSONField(allow_null=True)
    request = serializers.JSONField(allow_null=True, help_text="The /kernel/trigger body sent.")
    response = serializers.JSONField(allow_null=True, help_text="The executor's answer, or null.")
    outcome = OutcomeOut()


class LogEntryOut(serializers.Serializer):
    metadata = LogMetadataOut()
    message = serializers.CharField()
    createdAt = serializers.DateTimeField()
    subAccountAddress = serializers.CharField()
    chainId = serializers.IntegerField()
    id = serializers.UUIDField()
    subId = serializers.UUIDField()
    outputTxHash = serializers.CharField(allow_blank=True)


class LogPageOut(serializers.Serializer):
    data = LogEntryOut(many=True)  # type: ignore[assignment]  # a declared field, not Serializer.data
