"""REST endpoints for feeds, vaults and intents (docs/api.md). Refusals are DomainErrors: the
API's exception handler answers them. A client sees the vaults it was granted
(`vaults_visible_to`); any other vault is 404, as an unknown one is."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orchestrator.engine.models import WorkflowRun
from orchestrator.infra.errors import NotFound
from orchestrator.infra.idempotency import idempotent
from vaults.models import ExecutionIntent, PolicyStatus, Vault, VaultPolicy
from vaults.selectors import vaults_visible_to
from vaults.services.feeds import FEED_DOMAIN, FEED_TYPES, feed_accept
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
        "oracles": sorted(policy.oracles.values_list("address", flat=True)),
        "activatedAt": policy.activated_at.isoformat() if policy.activated_at else None,
    }


def vault_json(vault: Vault, *, with_policy: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vaultId": vault.vault_id,
        "name": vault.name,
        "chainId": vault.chain_id,
        "account": vault.account.address,
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
        "status": intent.status,
        "error": intent.error or None,
        "createdAt": intent.created_at.isoformat(),
        "executedAt": intent.executed_at.isoformat() if intent.executed_at else None,
    }


class FeedEntrySerializer(serializers.Serializer):
    protocol = serializers.CharField()
    apy = serializers.CharField(help_text='Decimal string, e.g. "0.051".')
    tvl = serializers.CharField(help_text="Decimal string.")
    risk = serializers.IntegerField(min_value=0, max_value=255)


class FeedSerializer(serializers.Serializer):
    oracle = serializers.CharField()
    timestamp = serializers.DateTimeField()
    entries = FeedEntrySerializer(many=True)
    signature = serializers.CharField()


class FeedView(APIView):
    @extend_schema(
        request=FeedSerializer,
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
                    "oracle": "0x...",
                    "timestamp": "2026-11-23T12:00:00Z",
                    "entries": [{"protocol": "Aave USDC", "apy": "0.051", "tvl": "1250000", "risk": 2}],
                    "signature": "0x...",
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
    @extend_schema(summary="Vaults")
    def get(self, request: Request) -> Response:
        vaults = vaults_visible_to(user=request.user)
        return Response({"data": [vault_json(v, with_policy=False) for v in vaults]})


class VaultDetailView(APIView):
    @extend_schema(summary="A vault with its active policy")
    def get(self, request: Request, vault_id: str) -> Response:
        return Response(vault_json(_vault_or_404(request, vault_id), with_policy=True))


class VaultIntentsView(APIView):
    @extend_schema(summary="A vault's ExecutionIntents, newest first")
    def get(self, request: Request, vault_id: str) -> Response:
        vault = _vault_or_404(request, vault_id)
        intents = vault.intents.select_related("vault", "policy").order_by("-nonce")[:100]
        return Response({"data": [intent_json(i) for i in intents]})
