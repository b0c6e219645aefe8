"""REST endpoints for rebalance proposals (docs/api.md). The services' refusals are DomainErrors
with their own codes (invalid_proposal, not_an_approver, own_proposal, already_decided,
proposal_closed, not_approved): the API's exception handler answers them."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals.models import Decision, ProposalSource, ProposalStatus, RebalanceProposal
from approvals.safe_proposals import proposal_safe_txs, proposal_sign, signing_payload
from approvals.selectors import is_operator, proposals_visible_to
from approvals.services import proposal_approve, proposal_create, proposal_execution_start, proposal_reject
from orchestrator.infra.errors import DomainError, NotFound
from orchestrator.infra.idempotency import idempotent
from orchestrator.infra.schema import IDEMPOTENCY_KEY, TextField, api_responses, text_path
from orchestrator.infra.validation import SMALLINT_MAX, WholeNumberField, aware_datetime_text
from vaults.api import IntentOut, intent_json
from vaults.models import SafeSignature, SafeTxStatus
from vaults.selectors import vaults_visible_to


def _safe_json(proposal: RebalanceProposal) -> dict[str, Any] | None:
    main, rejection = proposal_safe_txs(proposal)
    if main is None or rejection is None:
        return None
    signatures = [
        {
            "owner": s.owner,
            "decision": Decision.APPROVE if s.safe_tx_id == main.pk else Decision.REJECT,
            "approver": s.signer.get_username() if s.signer else None,
            "signature": s.signature,
            "signedAt": s.created_at.isoformat(),
        }
        for s in SafeSignature.objects.filter(safe_tx__in=[main, rejection]).select_related("signer")
    ]
    return {
        "address": main.vault.safe_address,
        "chainId": main.vault.chain.chain_id,
        "nonce": main.nonce,
        "transaction": signing_payload(main),
        "rejection": signing_payload(rejection),
        "signatures": sorted(signatures, key=lambda s: s["signedAt"]),
    }


def proposal_json(proposal: RebalanceProposal) -> dict[str, Any]:
    return {
        "proposalId": proposal.proposal_id,
        "vaultId": proposal.vault.vault_id,
        "proposer": proposal.proposer.get_username() if proposal.proposer else None,
        "source": proposal.source,
        "approvers": sorted(u.get_username() for u in proposal.approvers.all()),
        "quorumRequired": proposal.quorum_required,
        "proposedAllocations": proposal.proposed_allocations,
        "policyVersion": proposal.policy.version,
        "status": proposal.status,
        "expiresAt": proposal.expires_at.isoformat(),
        "approvals": [
            {
                "approver": a.approver.get_username(),
                "decision": a.decision,
                "comment": a.comment,
                "decidedAt": a.decided_at.isoformat(),
            }
            for a in proposal.approvals.select_related("approver").order_by("decided_at")
        ],
        "intent": intent_json(proposal.intent) if proposal.intent is not None else None,
        "executionError": proposal.execution_error or None,
        "createdAt": proposal.created_at.isoformat(),
        "safe": _safe_json(proposal),
    }


@extend_schema_field(OpenApiTypes.DATETIME)
class _TimeText(serializers.CharField):
    """Parsed by the view (aware_datetime_text), which also insists on a zone."""


class ProposalCreateSerializer(serializers.Serializer):
    vaultId = TextField()
    approvers = serializers.ListField(child=TextField(), min_length=1, help_text="Usernames.")
    quorumRequired = WholeNumberField(min_value=1, max_value=SMALLINT_MAX)
    proposedAllocations = serializers.DictField(
        child=TextField(), help_text="Protocol name to percentage (a decimal string); they sum to 100."
    )
    expiresAt = _TimeText(required=False)


class ApprovalOut(serializers.Serializer):
    approver = serializers.CharField()
    decision = serializers.ChoiceField(choices=Decision.values)
    comment = serializers.CharField(allow_blank=True)
    decidedAt = serializers.DateTimeField()


class SafeCallOut(serializers.Serializer):
    to = serializers.CharField()
    value = serializers.CharField(help_text="Wei, as a decimal string.")
    data = serializers.CharField(help_text="Calldata, 0x-hex.")  # type: ignore[assignment]  # a declared field


class SafeTxOut(serializers.Serializer):
    safeTxHash = serializers.CharField(help_text="The EIP-712 hash an owner signs.")
    nonce = serializers.IntegerField()
    typedData = serializers.JSONField(help_text="The full EIP-712 typed data, as eth_signTypedData_v4 takes it.")
    calls = SafeCallOut(many=True, help_text="What it does: the MultiSend's calls, in order.")
    status = serializers.ChoiceField(choices=SafeTxStatus.values)


class SafeSignatureOut(serializers.Serializer):
    owner = serializers.CharField()
    decision = serializers.ChoiceField(choices=Decision.values)
    approver = serializers.CharField(allow_null=True, help_text="The user who registered the owner's wallet.")
    signature = serializers.CharField()
    signedAt = serializers.DateTimeField()


class SafeProposalOut(serializers.Serializer):
    address = serializers.CharField(help_text="The vault's Safe.")
    chainId = serializers.IntegerField()
    nonce = serializers.IntegerField(help_text="The Safe nonce both transactions use.")
    transaction = SafeTxOut(help_text="The rebalance: sign its safeTxHash to approve.")
    rejection = SafeTxOut(help_text="A transaction that does nothing at the same nonce: sign it to reject.")
    signatures = SafeSignatureOut(many=True)


class ProposalOut(serializers.Serializer):
    proposalId = serializers.CharField()
    vaultId = serializers.CharField()
    proposer = serializers.CharField(allow_null=True)
    source = serializers.ChoiceField(choices=ProposalSource.values)  # type: ignore[assignment]  # a declared field
    approvers = serializers.ListField(child=serializers.CharField())
    quorumRequired = serializers.IntegerField()
    proposedAllocations = serializers.DictField(child=serializers.CharField())
    policyVersion = serializers.IntegerField()
    status = serializers.ChoiceField(choices=ProposalStatus.values)
    expiresAt = serializers.DateTimeField()
    approvals = ApprovalOut(many=True)
    intent = IntentOut(allow_null=True)
    executionError = serializers.CharField(allow_null=True)
    createdAt = serializers.DateTimeField()
    safe = SafeProposalOut(allow_null=True, help_text="Set when the vault is held by a Safe.")


class SignatureIn(serializers.Serializer):
    signature = TextField(help_text="65 bytes r, s, v as 0x-hex: an EIP-712 signature of the safeTxHash.")
    decision = serializers.ChoiceField(
        choices=Decision.values, help_text="approve signs the transaction, reject its rejection."
    )


class ExecutionStartedOut(serializers.Serializer):
    proposalId = serializers.CharField()
    workflowId = serializers.UUIDField()
    phase = serializers.CharField(help_text="The run's phase now.")


class DecisionSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000)


def _visible(request: Request, proposal_id: str) -> RebalanceProposal:
    proposal = proposals_visible_to(user=request.user).filter(proposal_id=proposal_id).first()
    if proposal is None:
        raise NotFound("No proposal with that id.")
    return proposal


class ProposalListView(APIView):
    @extend_schema(
        request=ProposalCreateSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses=api_responses(
            {201: ProposalOut},
            errors=[403, 422],
            body=True,
            idempotent=True,
            codes={
                400: "an unknown vault or approvers, a bad expiry (`fields` says which)",
                403: "not an operator",
                422: "`invalid_proposal`",
            },
        ),
        summary="Propose a rebalance (operators)",
    )
    @idempotent
    def post(self, request: Request) -> Response:
        if not is_operator(request.user):
            raise DomainError("Only operators can propose rebalances.", code="permission_denied", http_status=403)
        body = ProposalCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        # A vault the client may not read is as unknown as one that does not exist.
        vault = vaults_visible_to(user=request.user).filter(vault_id=data["vaultId"]).first()
        if vault is None:
            raise DomainError("No vault with that id.", code="invalid", fields={"vaultId": "Unknown vault."})
        users = list(get_user_model().objects.filter(username__in=data["approvers"]))
        missing = set(data["approvers"]) - {u.get_username() for u in users}
        if missing:
            raise DomainError("Unknown approvers.", code="invalid", fields={"approvers": f"Unknown: {sorted(missing)}"})
        expires = aware_datetime_text(data["expiresAt"]) if data.get("expiresAt") else None
        if data.get("expiresAt") and expires is None:
            raise DomainError("Bad expiry.", code="invalid", fields={"expiresAt": "An RFC 3339 time with a zone."})
        proposal = proposal_create(
            vault=vault,
            allocation=data["proposedAllocations"],
            proposer=request.user,
            approvers=users,
            quorum=data["quorumRequired"],
            expires_at=expires,
        )
        return Response(proposal_json(proposal), status=status.HTTP_201_CREATED)


class ProposalDetailView(APIView):
    @extend_schema(
        parameters=[text_path("proposal_id")],
        responses=api_responses({200: ProposalOut}, errors=[404]),
        summary="A proposal with its decisions",
    )
    def get(self, request: Request, proposal_id: str) -> Response:
        return Response(proposal_json(_visible(request, proposal_id)))


class _DecisionView(APIView):
    decide = staticmethod(proposal_approve)

    @extend_schema(
        request=DecisionSerializer,
        parameters=[text_path("proposal_id")],
        responses=api_responses(
            {200: ProposalOut},
            errors=[403, 404, 409],
            body=True,
            codes={403: "`not_an_approver`, `own_proposal`", 409: "`already_decided`, `proposal_closed`"},
        ),
        summary="Decide on a proposal (a designated approver)",
    )
    def post(self, request: Request, proposal_id: str) -> Response:
        proposal = _visible(request, proposal_id)
        body = DecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        proposal = self.decide(proposal=proposal, approver=request.user, comment=body.validated_data.get("comment", ""))
        return Response(proposal_json(proposal))


class ProposalApproveView(_DecisionView):
    decide = staticmethod(proposal_approve)


class ProposalRejectView(_DecisionView):
    decide = staticmethod(proposal_reject)


class ProposalSignatureView(APIView):
    @extend_schema(
        request=SignatureIn,
        parameters=[text_path("proposal_id")],
        responses=api_responses(
            {200: ProposalOut},
            errors=[403, 404, 409, 503],
            body=True,
            codes={
                400: "`invalid_signature` (not 65 bytes, high s, bad v)",
                403: "`not_a_safe_owner` (it recovers to no current owner), `own_proposal`",
                409: "`already_decided`, `proposal_closed`, `safe_tx_void`, `signature_required` (not a Safe vault)",
                503: "`chain_unavailable`",
            },
        ),
        summary="Post an owner's signature of a Safe vault's proposal (approve or reject)",
    )
    def post(self, request: Request, proposal_id: str) -> Response:
        proposal = _visible(request, proposal_id)
        body = SignatureIn(data=request.data)
        body.is_valid(raise_exception=True)
        proposal = proposal_sign(
            proposal=proposal,
            signature=body.validated_data["signature"],
            decision=body.validated_data["decision"],
            submitted_by=request.user,
        )
        return Response(proposal_json(proposal))


class ProposalExecuteView(APIView):
    @extend_schema(
        request=None,
        parameters=[text_path("proposal_id")],
        responses=api_responses(
            {202: ExecutionStartedOut},
            errors=[403, 404, 409],
            codes={403: "not an operator or a designated approver", 409: "`not_approved`"},
        ),
        summary="Execute an approved proposal (starts once; repeats return the same run)",
    )
    def post(self, request: Request, proposal_id: str) -> Response:
        proposal = _visible(request, proposal_id)
        if not (is_operator(request.user) or proposal.approvers.filter(username=request.user.get_username()).exists()):
            raise DomainError(
                "Only operators and approvers can execute a proposal.", code="permission_denied", http_status=403
            )
        run = proposal_execution_start(proposal=proposal, started_by=request.user)
        return Response(
            {"proposalId": proposal.proposal_id, "workflowId": str(run.id), "phase": run.phase},
            status=status.HTTP_202_ACCEPTED,
        )
