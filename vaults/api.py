"""REST endpoints for feeds, vaults and intents (docs/api.md). Refusals are DomainErrors: the
API's exception handler answers them. A client sees the vaults it was granted
(`vaults_visible_to`); any other vault is 404, as an unknown one is."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orchestrator.engine.models import WorkflowRun
from orchestrator.infra.errors import NotFound
from orchestrator.infra.idempotency import idempotent
from orchestrator.infra.schema import (
    ADDRESS_PATTERN,
    DECIMAL_PATTERN,
    IDEMPOTENCY_KEY,
    SIGNATURE_PATTERN,
    TextField,
    api_responses,
    text_path,
)
from vaults.models import ExecutionIntent, IntentStatus, PolicyStatus, Vault, VaultPolicy
from vaults.selectors import vaults_visible_to
from vaults.services.feeds import FEED_DOMAIN, FEED_TYPES, MAX_ENTRIES, feed_accept
from vaults.services.rebalance import REBALANCE_WORKFLOW


def policy_json(policy: VaultPolicy | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {
        "version": policy.version,
        "status": policy.status,
        "maxExposurePct": str(policy.max_exposure_pct),
        "whitelist": sorted(policy.whitelist.values_list("name", flat=True)),
        "maxRiskScore": policy.max_risk_score,
        "minIntervalSeconds": policy.min_interval_seconds,
        "windowStartHour": policy.window_start_hour,
        "windowEndHour": policy.window_end_hour,
        "maxFeedAgeSeconds": policy.max_feed_age_seconds,
        "maxTurnoverPct": str(policy.max_turnover_pct),
        "approvalThreshold": str(policy.approval_threshold),
        "intentTtlSeconds": policy.intent_ttl_seconds,
        "spendingLimit": None if policy.spending_limit is None else str(int(policy.spending_limit)),
        "spendingPeriodSeconds": policy.spending_period_seconds,
        "committedHash": policy.committed_hash or None,
        "oracles": sorted(policy.oracles.values_list("address", flat=True)),
        "activatedAt": policy.activated_at.isoformat() if policy.activated_at else None,
    }


def vault_json(vault: Vault, *, with_policy: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vaultId": vault.vault_id,
        "name": vault.name,
        "chainId": vault.chain_id,
        "account": vault.account.address,
        "safe": vault.safe_address or None,
        "module": vault.module_address or None,
        "operator": vault.operator.address,
        "asset": vault.asset_address,
        "strategy": vault.strategy,
        "autoRebalance": vault.auto_rebalance,
        "intentNonce": vault.intent_nonce,
        "lastRebalanceAt": vault.last_rebalance_at.isoformat() if vault.last_rebalance_at else None,
    }
    if with_policy:
        data["policy"] = policy_json(vault.policies.filter(status=PolicyStatus.ACTIVE).first())
    return data


def intent_json(intent: ExecutionIntent) -> dict[str, Any]:
    return {
        "id": str(intent.id),
        "vaultId": intent.vault.vault_id,
        "nonce": intent.nonce,
        "actions": intent.actions,
        "allocation": intent.allocation,
        "deadline": intent.deadline.isoformat(),
        "issuer": intent.issuer,
        "policyVersion": intent.policy.version,
        "feedId": str(intent.feed_id) if intent.feed_id else None,
        "proposalId": intent.proposal_id or None,
        "digest": intent.digest,
        "signature": intent.signature,
        "module": intent.module_intent,
        "status": intent.status,
        "error": intent.error or None,
        "createdAt": intent.created_at.isoformat(),
        "executedAt": intent.executed_at.isoformat() if intent.executed_at else None,
    }


# --- The schema's view of the bodies: feed_parse (vaults/services/feeds.py) checks the feed ---


class FeedEntrySerializer(serializers.Serializer):
    protocol = TextField(max_length=100, help_text="Each protocol once per feed.")
    apy = serializers.RegexField(DECIMAL_PATTERN, help_text='Non-negative decimal string, e.g. "0.051".')
    tvl = serializers.RegexField(DECIMAL_PATTERN, help_text="Non-negative decimal string.")
    risk = serializers.IntegerField(min_value=0, max_value=255)


class FeedSerializer(serializers.Serializer):
    oracle = serializers.RegexField(ADDRESS_PATTERN)
    timestamp = serializers.DateTimeField(help_text="RFC 3339 with a zone.")
    entries = serializers.ListField(child=FeedEntrySerializer(), min_length=1, max_length=MAX_ENTRIES)
    signature = serializers.RegexField(SIGNATURE_PATTERN, help_text="65 bytes: r || s || v.")


class FeedOut(serializers.Serializer):
    id = serializers.UUIDField()
    oracle = serializers.CharField()
    timestamp = serializers.DateTimeField()
    digest = serializers.CharField(help_text="The typed-data hash.")
    rebalances = serializers.ListField(child=serializers.UUIDField(), help_text="The Flow A runs started.")


class PolicyOut(serializers.Serializer):
    version = serializers.IntegerField()
    status = serializers.ChoiceField(choices=PolicyStatus.values)
    maxExposurePct = serializers.CharField()
    whitelist = serializers.ListField(child=serializers.CharField())
    maxRiskScore = serializers.IntegerField()
    minIntervalSeconds = serializers.IntegerField()
    windowStartHour = serializers.IntegerField()
    windowEndHour = serializers.IntegerField()
    maxFeedAgeSeconds = serializers.IntegerField()
    maxTurnoverPct = serializers.CharField()
    approvalThreshold = serializers.CharField()
    intentTtlSeconds = serializers.IntegerField()
    spendingLimit = serializers.CharField(
        allow_null=True,
        help_text="With a policy module: at most this much of the asset (base units) approved or transferred "
        "through it per period, enforced on chain. Null: no limit.",
    )
    spendingPeriodSeconds = serializers.IntegerField()
    committedHash = serializers.CharField(
        allow_null=True, help_text="The hash committed to the vault's policy module (0x-hex); null without one."
    )
    oracles = serializers.ListField(child=serializers.CharField())
    activatedAt = serializers.DateTimeField(allow_null=True)


class VaultOut(serializers.Serializer):
    vaultId = serializers.CharField()
    name = serializers.CharField()
    chainId = serializers.IntegerField()
    account = serializers.CharField(help_text="Holds the funds, or with a Safe only pays its transactions' gas.")
    safe = serializers.CharField(allow_null=True, help_text="The Safe that holds the funds, if one does.")
    module = serializers.CharField(
        allow_null=True, help_text="The policy module on the Safe that runs Flow A's intents, if it has one."
    )
    operator = serializers.CharField()
    asset = serializers.CharField()
    strategy = serializers.CharField()
    autoRebalance = serializers.BooleanField()
    intentNonce = serializers.IntegerField()
    lastRebalanceAt = serializers.DateTimeField(allow_null=True)


class VaultDetailOut(VaultOut):
    policy = PolicyOut(allow_null=True, help_text="The active policy, or null.")


class VaultPageOut(serializers.Serializer):
    data = VaultOut(many=True)  # type: ignore[assignment]  # a declared field, not Serializer.data


@extend_schema_field({"type": "object", "additionalProperties": True})
class _ActionOut(serializers.JSONField):
    pass


class _ModuleCallOut(serializers.Serializer):
    to = serializers.CharField()
    value = serializers.CharField(help_text="Wei, as a decimal string.")
    data = serializers.CharField()  # type: ignore[assignment]  # a declared field, not Serializer.data


class _ModuleIntentOut(serializers.Serializer):
    module = serializers.CharField(help_text="The VaultPolicyModule (the EIP-712 verifying contract).")
    nonce = serializers.IntegerField(help_text="The module's nonce, not the vault's.")
    deadline = serializers.IntegerField(help_text="Unix seconds.")
    policyHash = serializers.CharField(help_text="The policy committed on chain that the signature is bound to.")
    calls = _ModuleCallOut(many=True)


class IntentOut(serializers.Serializer):
    id = serializers.UUIDField()
    vaultId = serializers.CharField()
    nonce = serializers.IntegerField()
    actions = serializers.ListField(child=_ActionOut())
    allocation = serializers.DictField(child=serializers.CharField())
    deadline = serializers.DateTimeField()
    issuer = serializers.CharField()
    policyVersion = serializers.IntegerField()
    feedId = serializers.UUIDField(allow_null=True)
    proposalId = serializers.CharField(allow_null=True)
    digest = serializers.CharField()
    signature = serializers.CharField()
    module = _ModuleIntentOut(
        allow_null=True,
        help_text="Sent through the vault's policy module as one executeIntent: what the operator signed "
        "(digest and signature above are the module's). Null: the actions were sent one by one.",
    )
    status = serializers.ChoiceField(choices=IntentStatus.values)
    error = serializers.CharField(allow_null=True)
    createdAt = serializers.DateTimeField()
    executedAt = serializers.DateTimeField(allow_null=True)


class IntentPageOut(serializers.Serializer):
    data = IntentOut(many=True)  # type: ignore[assignment]  # a declared field, not Serializer.data


class FeedView(APIView):
    @extend_schema(
        request=FeedSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses=api_responses(
            {201: FeedOut},
            errors=[403, 422],
            body=True,
            idempotent=True,
            codes={
                401: "`invalid_signature`",
                403: "`unknown_oracle`",
                409: "`feed_replayed`",
                422: "`future_feed`, `stale_feed`",
            },
        ),
        summary="Submit a signed market feed",
        description=(
            "EIP-712 typed data signed by an allow-listed oracle key. Domain "
            f"{FEED_DOMAIN}; types {FEED_TYPES}; message: the body's oracle, its timestamp as Unix "
            "seconds, and its entries with apy and tvl as the exact strings sent. Refused feeds "
            "(unknown_oracle 403, invalid_signature 401, future_feed/stale_feed 422, "
            "feed_replayed 409, invalid 400) are stored nowhere. An accepted feed starts an "
            "automated rebalance for every vault whose active policy trusts the oracle; "
            "`rebalances` lists those of the vaults the client may read, and the client owns them."
        ),
        examples=[
            OpenApiExample(
                "feed",
                value={
                    "oracle": "0x" + "ab" * 20,
                    "timestamp": "2026-11-23T12:00:00Z",
                    "entries": [{"protocol": "Aave USDC", "apy": "0.051", "tvl": "1250000", "risk": 2}],
                    "signature": "0x" + "cd" * 65,
                },
            )
        ],
    )
    @idempotent
    def post(self, request: Request) -> Response:
        feed = feed_accept(payload=request.data, client=request.user)
        # The runs this request started on the vaults the client may read: those it owns.
        runs = list(
            WorkflowRun.objects.filter(
                kind=REBALANCE_WORKFLOW, input__feed=str(feed.id), owner_id=request.user.pk
            ).values_list("id", flat=True)
        )
        return Response(
            {
                "id": str(feed.id),
                "oracle": feed.oracle.address,
                "timestamp": feed.timestamp.isoformat(),
                "digest": feed.digest,
                "rebalances": [str(r) for r in runs],
            },
            status=status.HTTP_201_CREATED,
        )


def _vault_or_404(request: Request, vault_id: str) -> Vault:
    vault = vaults_visible_to(user=request.user).filter(vault_id=vault_id).first()
    if vault is None:  # unknown, or not granted to this client: the same answer
        raise NotFound("No vault with that id.")
    return vault


class VaultListView(APIView):
    @extend_schema(responses=api_responses({200: VaultPageOut}), summary="Vaults", operation_id="v1_vaults_list")
    def get(self, request: Request) -> Response:
        vaults = vaults_visible_to(user=request.user)
        return Response({"data": [vault_json(v, with_policy=False) for v in vaults]})


class VaultDetailView(APIView):
    @extend_schema(
        parameters=[text_path("vault_id")],
        responses=api_responses({200: VaultDetailOut}, errors=[404]),
        summary="A vault with its active policy",
    )
    def get(self, request: Request, vault_id: str) -> Response:
        return Response(vault_json(_vault_or_404(request, vault_id), with_policy=True))


class VaultIntentsView(APIView):
    @extend_schema(
        parameters=[text_path("vault_id")],
        responses=api_responses({200: IntentPageOut}, errors=[404]),
        summary="A vault's ExecutionIntents, newest first",
    )
    def get(self, request: Request, vault_id: str) -> Response:
        vault = _vault_or_404(request, vault_id)
        intents = vault.intents.select_related("vault", "policy").order_by("-nonce")[:100]
        return Response({"data": [intent_json(i) for i in intents]})
