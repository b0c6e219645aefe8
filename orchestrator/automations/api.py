"""The automation API's REST endpoints, in the wire format docs/api.md specifies (executors,
configs, subscriptions). Objects belong to the API client that made them; others get 404.
Refusals are DomainErrors, turned into the error body by the API's exception handler."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, cast

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orchestrator.automations.bodies import (
    ConfigSerializer,
    DeleteSerializer,
    ExecutorSerializer,
    LogsQuerySerializer,
    SubscriptionRequestSerializer,
    SubscriptionSerializer,
)
from orchestrator.automations.models import AutomationConfig, Executor, Subscription
from orchestrator.automations.selectors import owned_subscription_logs
from orchestrator.automations.services.configs import config_create, config_delete, executor_register
from orchestrator.automations.services.subscriptions import subscription_cancel, subscription_create
from orchestrator.automations.wire import (
    ConfigCreatedOut,
    ConfigOut,
    ExecutorOut,
    LogPageOut,
    SubscriptionOut,
    config_json,
    executor_json,
    log_entry_json,
    subscription_json,
)
from orchestrator.infra.errors import DomainError, NotFound
from orchestrator.infra.idempotency import idempotent
from orchestrator.infra.schema import (
    IDEMPOTENCY_KEY,
    api_responses,
    uuid_path,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def _client(request: Request) -> User:
    """The authenticated API client (every view here needs a token)."""
    return cast("User", request.user)


def _uuid_or_404(raw: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise NotFound("Not found.") from None


class ExecutorListView(APIView):
    @extend_schema(
        request=ExecutorSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses=api_responses({201: ExecutorOut}, body=True, idempotent=True),
        summary="Register an executor",
    )
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
    @extend_schema(
        parameters=[uuid_path("registry_id")],
        responses=api_responses({200: ExecutorOut}, errors=[404]),
        summary="An executor",
    )
    def get(self, request: Request, registry_id: str) -> Response:
        return Response(executor_json(_own_executor(request, registry_id)))


class ConfigListView(APIView):
    @extend_schema(
        request=ConfigSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses=api_responses(
            {201: ConfigCreatedOut},
            errors=[404],
            body=True,
            idempotent=True,
            codes={
                400: "`invalid` with fields.destination.baseURL (a refused destination)",
                401: "`invalid_signature`",
                404: "registryID is not the client's executor",
                409: "`signature_replayed`, `config_exists`",
            },
        ),
        summary="Create an automation config (EIP-712 signed)",
    )
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
    @extend_schema(
        parameters=[uuid_path("config_id")],
        responses=api_responses({200: ConfigOut}, errors=[404]),
        summary="A config (without its hmacKey)",
    )
    def get(self, request: Request, config_id: str) -> Response:
        return Response(config_json(_own_config(request, config_id)))

    @extend_schema(
        request=DeleteSerializer,
        parameters=[uuid_path("config_id")],
        responses=api_responses(
            {200: ConfigOut},
            errors=[404, 409],
            body=True,
            codes={401: "`invalid_signature`", 409: "`config_deleted`, `signature_replayed`"},
        ),
        summary="Delete a config (signed with action DELETE); answers the config, status deleted",
    )
    def delete(self, request: Request, config_id: str) -> Response:
        config = _own_config(request, config_id)
        body = DeleteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        deleted = config_delete(config=config, signature=body.validated_data["signature"])
        return Response(config_json(deleted))


class SubscriptionListView(APIView):
    @extend_schema(
        request=SubscriptionRequestSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses=api_responses(
            {201: SubscriptionOut},
            errors=[404, 422, 503],
            body=True,
            idempotent=True,
            codes={
                400: "`invalid` with `fields.moduleAddress`: not an enabled VaultPolicyModule of the sub-account",
                404: "registryID is not the client's executor",
                422: "`no_active_config`",
                503: "`chain_unavailable`: the module could not be read",
            },
        ),
        summary="Subscribe an account to a registry's config",
    )
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
            module_address=data["moduleAddress"] or "",
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
    @extend_schema(
        parameters=[uuid_path("sub_id")],
        responses=api_responses({200: SubscriptionOut}, errors=[404]),
        summary="A subscription",
    )
    def get(self, request: Request, sub_id: str) -> Response:
        return Response(subscription_json(_own_subscription(request, sub_id)))


class SubscriptionLogsView(APIView):
    @extend_schema(
        parameters=[uuid_path("sub_id"), LogsQuerySerializer],
        responses=api_responses({200: LogPageOut}, errors=[400, 404], codes={400: "a bad offset or limit"}),
        summary="A subscription's execution log, newest first",
    )
    def get(self, request: Request, sub_id: str) -> Response:
        pk, owner = _uuid_or_404(sub_id), _client(request)
        query = LogsQuerySerializer(data=request.query_params)
        if not query.is_valid() and not Subscription.objects.filter(pk=pk, owner=owner).exists():
            raise NotFound("No subscription with that id.")  # a 404 before a bad offset's 400, as ever
        query.is_valid(raise_exception=True)
        # The subscription (only what an entry shows of it) and the page in one statement.
        found = owned_subscription_logs(
            sub_id=pk, owner_id=owner.pk, offset=query.validated_data["offset"], limit=query.validated_data["limit"]
        )
        if found is None:
            raise NotFound("No subscription with that id.")
        return Response({"data": [log_entry_json(f) for f in found[1]]})


class SubscriptionCancelView(APIView):
    @extend_schema(
        request=None,
        parameters=[uuid_path("sub_id")],
        responses=api_responses({200: SubscriptionOut}, errors=[404]),
        summary="Cancel a subscription (its triggers stop at once); answers it with status 3",
    )
    def post(self, request: Request, sub_id: str) -> Response:
        sub = subscription_cancel(subscription=_own_subscription(request, sub_id))
        return Response(subscription_json(sub))
