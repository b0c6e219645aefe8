"""The automation API's request bodies (docs/api.md, "Automation API"): the serializers that
check them and, where a serializer's own schema would say less than it checks, the schema the
OpenAPI document shows for them (the `source` shapes, the served chains, token-keyed maps).
The views are in api.py."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import extend_schema_field
from eth_utils import to_checksum_address
from rest_framework import serializers

from orchestrator.automations.models import SourceType
from orchestrator.automations.schema import MARKER
from orchestrator.infra.schema import ADDRESS_PATTERN, DECIMAL_PATTERN, TextField, json_whole_number
from orchestrator.infra.validation import (
    BIGINT_MAX,
    INTEGER_MAX,
    AmountField,
    DecimalTextField,
    WholeNumberField,
)
from relayer.services.chains import served_chain_ids

# \Z, not $: Python's $ also matches before a final newline, which JSON Schema's does not.
HEX_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}\Z")
TOPIC = re.compile(r"^0x[0-9a-fA-F]{64}\Z")
ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}\Z")


def is_address(value: object) -> bool:
    """20 bytes of 0x-hex in any case. Not eth_utils.is_address, which refuses a mixed case that
    is not a valid EIP-55 checksum: the contract takes addresses in any case (docs/api.md)."""
    return isinstance(value, str) and ADDRESS.match(value) is not None


@extend_schema_field({"type": "string", "pattern": ADDRESS_PATTERN})
class AddressField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if not is_address(value):
            raise serializers.ValidationError("Not an address.")
        return to_checksum_address(value)


class ExecutorSerializer(serializers.Serializer):
    address = AddressField()
    name = TextField(max_length=200)
    metadata = serializers.DictField(required=False, default=dict)


_ADDRESS = {"type": "string", "pattern": ADDRESS_PATTERN}
_TOPIC = {"type": "string", "pattern": r"^0x[0-9a-fA-F]{64}$"}
_LOG_FILTER = {
    "type": "object",
    "description": "An eth_getLogs filter; topics match as eth_getLogs does (null: anything, a list: any of).",
    "required": ["chainId", "address"],
    "properties": {
        "chainId": {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX, MARKER: True},
        "address": {"oneOf": [_ADDRESS, {"type": "array", "minItems": 1, "items": _ADDRESS}]},
        "topics": {
            "type": "array",
            "maxItems": 4,
            "items": {"oneOf": [{"type": "null"}, _TOPIC, {"type": "array", "items": _TOPIC}]},
        },
        "fromBlock": {
            "oneOf": [{"type": "string", "enum": ["latest"]}, {"type": "integer", "minimum": 0, "maximum": BIGINT_MAX}]
        },
    },
}


# The type decides what value is, which the serializer checks in validate(): say it as a oneOf.
@extend_schema_field(
    {
        "oneOf": [
            {
                "type": "object",
                "required": ["type", "value"],
                "properties": {
                    "type": {"type": "string", "enum": [SourceType.INTERVAL.value]},
                    "value": {"type": "integer", "minimum": 1, "maximum": INTEGER_MAX, "description": "Whole seconds."},
                },
            },
            {
                "type": "object",
                "required": ["type", "value"],
                "properties": {"type": {"type": "string", "enum": [SourceType.FILTER.value]}, "value": _LOG_FILTER},
            },
        ]
    }
)
class SourceSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=SourceType.values)
    value = serializers.JSONField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        value = attrs["value"]
        if attrs["type"] == SourceType.INTERVAL:
            value = attrs["value"] = json_whole_number(value)
            if value is None or not 1 <= value <= INTEGER_MAX:
                raise serializers.ValidationError({"value": f"A whole number of seconds, 1 to {INTEGER_MAX}."})
        else:
            attrs["value"] = _log_filter(value)
        return attrs


def chain_unserved_message(chain_id: int) -> str | None:
    """Why a subscription or a FILTER config may not name this chain, or None if it may."""
    served = served_chain_ids()
    if chain_id in served:
        return None
    return f"chain {chain_id} is not served here; served chains: {', '.join(map(str, served)) or 'none'}."


def _log_filter(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise serializers.ValidationError({"value": "An eth_getLogs filter object."})
    chain_id = json_whole_number(value.get("chainId"))
    if chain_id is None or not 1 <= chain_id <= BIGINT_MAX:
        raise serializers.ValidationError({"value": "chainId must be a positive integer."})
    if (unserved := chain_unserved_message(chain_id)) is not None:
        raise serializers.ValidationError({"value": f"chainId: {unserved}"})
    addresses = value.get("address")
    listed = addresses if isinstance(addresses, list) else [addresses]
    if not listed or not all(isinstance(a, str) and is_address(a) for a in listed):
        raise serializers.ValidationError({"value": "address must be an address or a list of addresses."})
    topics = value.get("topics", [])
    if not isinstance(topics, list) or len(topics) > 4:
        raise serializers.ValidationError({"value": "topics must be a list of at most 4 entries."})
    for topic in topics:
        options = topic if isinstance(topic, list) else [topic]
        if topic is not None and not all(isinstance(t, str) and TOPIC.match(t) for t in options):
            raise serializers.ValidationError({"value": "each topic is null, a 32-byte hex or a list of them."})
    raw_block = value.get("fromBlock", "latest")
    block = None if raw_block == "latest" else json_whole_number(raw_block)
    if raw_block != "latest" and (block is None or not 0 <= block <= BIGINT_MAX):
        raise serializers.ValidationError({"value": 'fromBlock must be "latest" or a block number.'})
    return {
        "chainId": chain_id,
        "address": [to_checksum_address(a) for a in listed]
        if isinstance(addresses, list)
        else to_checksum_address(addresses),
        "topics": [t.lower() if isinstance(t, str) else ([x.lower() for x in t] if t else t) for t in topics],
        "fromBlock": "latest" if block is None else block,
    }


class DestinationSerializer(serializers.Serializer):
    baseURL = serializers.CharField(min_length=1, max_length=500, trim_whitespace=False)


class ConfigSerializer(serializers.Serializer):
    registryID = serializers.UUIDField()
    source = SourceSerializer()  # type: ignore[assignment]  # DRF pops declared fields off the class
    destination = DestinationSerializer()
    verifyPayload = serializers.BooleanField()
    relayerCount = WholeNumberField(min_value=1, max_value=16, default=1)
    autosign = serializers.BooleanField(default=False)
    # Optional: an allowlist of the addresses tasks may call.
    allowedTargets = serializers.ListField(child=AddressField(), required=False, default=list, max_length=100)
    signature = serializers.RegexField(HEX_SIGNATURE, error_messages={"invalid": "A 65-byte 0x-hex signature."})


class DeleteSerializer(serializers.Serializer):
    signature = serializers.RegexField(HEX_SIGNATURE, error_messages={"invalid": "A 65-byte 0x-hex signature."})


class SubscriptionSerializer(serializers.Serializer):
    chainId = WholeNumberField(min_value=1)
    subAccountAddress = AddressField()
    tokenInputs = serializers.DictField(child=AmountField(), required=False, default=dict)
    tokenLimits = serializers.DictField(child=DecimalTextField(), required=False, default=dict)
    metadata = serializers.DictField(required=False, default=dict)
    feeToken = serializers.RegexField(
        r"^(0x[0-9a-fA-F]{40})?\Z", required=False, allow_blank=True, default="", trim_whitespace=False
    )
    feeAmount = AmountField(required=False, default="0")
    # A Safe sub-account's VaultPolicyModule: tasks then run through it (docs/api.md, "Subscriptions").
    moduleAddress = AddressField(required=False, allow_null=True, default=None)

    def validate_chainId(self, chain_id: int) -> int:
        if (unserved := chain_unserved_message(chain_id)) is not None:
            raise serializers.ValidationError(unserved[0].upper() + unserved[1:])
        return chain_id

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for field in ("tokenInputs", "tokenLimits"):
            if not all(is_address(k) for k in attrs[field]):
                raise serializers.ValidationError({field: "Keys must be token addresses."})
        if attrs["feeToken"] and not is_address(attrs["feeToken"]):
            raise serializers.ValidationError({"feeToken": "Not an address."})
        return attrs


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": BIGINT_MAX, MARKER: True})
class _ServedChainId(serializers.IntegerField):
    pass


def _by_token(values: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "propertyNames": {"pattern": ADDRESS_PATTERN}, "additionalProperties": values}


# 77 digits: every such number is below 2**256, where AmountField stops.
@extend_schema_field(_by_token({"type": "string", "pattern": r"^[0-9]{1,77}$"}))
class _TokenAmounts(serializers.DictField):
    pass


@extend_schema_field(_by_token({"type": "string", "pattern": DECIMAL_PATTERN, "maxLength": 80}))
class _TokenLimits(serializers.DictField):
    pass


class SubscriptionRequestSerializer(SubscriptionSerializer):
    """The body as the schema shows it; the view reads registryID (or registryId) itself."""

    registryID = serializers.UUIDField(help_text="The executor's registryID; registryId is accepted too.")
    chainId = _ServedChainId(help_text="A chain this deployment serves.")  # type: ignore[assignment]
    tokenInputs = _TokenAmounts(required=False, help_text="Token address to a whole amount in base units.")
    tokenLimits = _TokenLimits(required=False, help_text="Token address to a decimal amount in whole tokens.")


class LogsQuerySerializer(serializers.Serializer):
    offset = WholeNumberField(default=0)
    limit = WholeNumberField(max_value=100, default=10)
