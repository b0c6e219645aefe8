"""The automation API's REST endpoints, in the wire format docs/api.md specifies (executors,
configs, subscriptions). Objects belong to the API client that made them; others get 404.
Refusals are DomainErrors, turned into the error body by the API's exception handler."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any, cast

from drf_spectacular.utils import extend_schema
from eth_utils import is_address, to_checksum_address
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orchestrator.automations.models import AutomationConfig, Executor, SourceType, Subscription
from orchestrator.automations.selectors import subscription_logs
from orchestrator.automations.services.configs import config_create, config_delete, executor_register
from orchestrator.automations.services.subscriptions import subscription_cancel, subscription_create
from orchestrator.automations.wire import config_json, executor_json, log_entry_json, subscription_json
from orchestrator.infra.errors import DomainError, NotFound
from orchestrator.infra.idempotency import idempotent
from orchestrator.infra.validation import (
    BIGINT_MAX,
    INTEGER_MAX,
    AmountField,
    DecimalTextField,
    WholeNumberField,
)
from relayer.services.chains import served_chain_ids

if TYPE_CHECKING:
    from django.contrib.auth.models import User

HEX_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")
TOPIC = re.compile(r"^0x[0-9a-fA-F]{64}$")


def _client(request: Request) -> User:
    """The authenticated API client (every view here needs a token)."""
    return cast("User", request.user)


def _uuid_or_404(raw: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise NotFound("Not found.") from None


class AddressField(serializers.CharField):
    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if not is_address(value):
            raise serializers.ValidationError("Not an address.")
        return to_checksum_address(value)


class ExecutorSerializer(serializers.Serializer):
    address = AddressField()
    name = serializers.CharField(max_length=200)
    metadata = serializers.DictField(required=False, default=dict)


class ExecutorListView(APIView):
    @extend_schema(request=ExecutorSerializer, summary="Register an executor")
    @idempotent
    def post(self, request: Request) -> Response:
        body = ExecutorSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        executor = executor_register(owner=_client(request), **body.validated_data)
        return Response(executor_json(executor), status=status.HTTP_201_CREATED)


def _own_executor(request: Request, registry_id: object) -> Executor:
    executor = Executor.objects.filter(registry_id=_uuid_or_404(registry_id), owner=_client(request)).first()
    if executor is None:
        raise NotFound("No executor with that registryID.")
    return executor


class ExecutorDetailView(APIView):
    @extend_schema(summary="An executor")
    def get(self, request: Request, registry_id: str) -> Response:
        return Response(executor_json(_own_executor(request, registry_id)))


class SourceSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=SourceType.values)
    value = serializers.JSONField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        value = attrs["value"]
        if attrs["type"] == SourceType.INTERVAL:
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= INTEGER_MAX:
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
    chain_id = value.get("chainId")
    if not isinstance(chain_id, int) or isinstance(chain_id, bool) or not 1 <= chain_id <= BIGINT_MAX:
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
    from_block = value.get("fromBlock", "latest")
    if from_block != "latest" and (
        not isinstance(from_block, int) or isinstance(from_block, bool) or not 0 <= from_block <= BIGINT_MAX
    ):
        raise serializers.ValidationError({"value": 'fromBlock must be "latest" or a block number.'})
    return {
        "chainId": chain_id,
        "address": [to_checksum_address(a) for a in listed]
        if isinstance(addresses, list)
        else to_checksum_address(addresses),
        "topics": [t.lower() if isinstance(t, str) else ([x.lower() for x in t] if t else t) for t in topics],
        "fromBlock": from_block,
    }


class DestinationSerializer(serializers.Serializer):
    baseURL = serializers.CharField(max_length=500, trim_whitespace=False)


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


class ConfigListView(APIView):
    @extend_schema(request=ConfigSerializer, summary="Create an automation config (EIP-712 signed)")
    @idempotent(secret=("hmacKey",))  # a replay still answers it, but it is stored sealed
    def post(self, request: Request) -> Response:
        body = ConfigSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        executor = _own_executor(request, data["registryID"])
        created = config_create(
            executor=executor,
            source_type=data["source"]["type"],
            source_value=data["source"]["value"],
            base_url=data["destination"]["baseURL"],
            verify_payload=data["verifyPayload"],
            relayer_count=data["relayerCount"],
            autosign=data["autosign"],
            allowed_targets=data["allowedTargets"],
            signature=data["signature"],
        )
        full = config_json(created.config)
        answer = {k: full[k] for k in ("id", "registryID", "executorAddress")}
        answer |= {
            "hmacKey": created.hmac_key,
            "relayerAddress": full["relayerAddress"],
            "verifyingAddress": full["verifyingAddress"],
        }
        return Response(answer, status=status.HTTP_201_CREATED)


class DeleteSerializer(serializers.Serializer):
    signature = serializers.RegexField(HEX_SIGNATURE, error_messages={"invalid": "A 65-byte 0x-hex signature."})


def _own_config(request: Request, config_id: str) -> AutomationConfig:
    config = (
        AutomationConfig.objects.select_related("executor", "verifying_key", "executor_key")
        .filter(pk=_uuid_or_404(config_id), executor__owner=_client(request))
        .first()
    )
    if config is None:
        raise NotFound("No config with that id.")
    return config


class ConfigDetailView(APIView):
    @extend_schema(summary="A config (without its hmacKey)")
    def get(self, request: Request, config_id: str) -> Response:
        return Response(config_json(_own_config(request, config_id)))

    @extend_schema(request=DeleteSerializer, summary="Delete a config (signed with action DELETE)")
    def delete(self, request: Request, config_id: str) -> Response:
        config = _own_config(request, config_id)
        body = DeleteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        deleted = config_delete(config=config, signature=body.validated_data["signature"])
        return Response(config_json(deleted))


class SubscriptionSerializer(serializers.Serializer):
    chainId = WholeNumberField(min_value=1)
    subAccountAddress = AddressField()
    tokenInputs = serializers.DictField(child=AmountField(), required=False, default=dict)
    tokenLimits = serializers.DictField(child=DecimalTextField(), required=False, default=dict)
    metadata = serializers.DictField(required=False, default=dict)
    feeToken = serializers.CharField(required=False, allow_blank=True, default="")
    feeAmount = AmountField(required=False, default="0")

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


class SubscriptionListView(APIView):
    @extend_schema(request=SubscriptionSerializer, summary="Subscribe an account to a registry's config")
    @idempotent
    def post(self, request: Request) -> Response:
        raw = dict(request.data) if isinstance(request.data, dict) else {}
        registry = raw.get("registryID", raw.get("registryId"))  # both spellings are accepted
        if not registry:
            raise DomainError("Invalid request.", code="invalid", fields={"registryID": "This field is required."})
        body = SubscriptionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        executor = _own_executor(request, registry)
        config = executor.configs.filter(status="active").first()
        sub = subscription_create(
            owner=_client(request),
            config=config,
            chain_id=data["chainId"],
            sub_account_address=data["subAccountAddress"],
            token_inputs=data["tokenInputs"],
            token_limits=data["tokenLimits"],
            metadata=data["metadata"],
            fee_token=data["feeToken"],
            fee_amount=data["feeAmount"],
        )
        return Response(subscription_json(sub), status=status.HTTP_201_CREATED)


def _own_subscription(request: Request, sub_id: str) -> Subscription:
    sub = (
        Subscription.objects.select_related("config__executor")
        .filter(pk=_uuid_or_404(sub_id), owner=_client(request))
        .first()
    )
    if sub is None:
        raise NotFound("No subscription with that id.")
    return sub


class SubscriptionDetailView(APIView):
    @extend_schema(summary="A subscription")
    def get(self, request: Request, sub_id: str) -> Response:
        return Response(subscription_json(_own_subscription(request, sub_id)))


class LogsQuerySerializer(serializers.Serializer):
    offset = WholeNumberField(default=0)
    limit = WholeNumberField(max_value=100, default=10)


class SubscriptionLogsView(APIView):
    @extend_schema(parameters=[LogsQuerySerializer], summary="A subscription's execution log, newest first")
    def get(self, request: Request, sub_id: str) -> Response:
        sub = _own_subscription(request, sub_id)
        query = LogsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        page = subscription_logs(
            subscription=sub, offset=query.validated_data["offset"], limit=query.validated_data["limit"]
        )
        return Response({"data": [log_entry_json(f) for f in page]})


class SubscriptionCancelView(APIView):
    @extend_schema(summary="Cancel a subscription (its triggers stop at once)")
    def post(self, request: Request, sub_id: str) -> Response:
        sub = subscription_cancel(subscription=_own_subscription(request, sub_id))
        return Response(subscription_json(sub))
