"""REST endpoints for approvers' wallets (docs/api.md, "Wallets"): a challenge to sign, the
signed challenge that registers the wallet, and the caller's wallet. The refusals are
approvals/wallets.py's DomainErrors, answered by the API's exception handler."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_field
from eth_utils import is_address, to_checksum_address
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals.models import ApproverWallet, WalletChallenge
from approvals.wallets import wallet_challenge_issue, wallet_get, wallet_register
from orchestrator.automations.schema import MARKER
from orchestrator.infra.errors import NotFound
from orchestrator.infra.schema import (
    ADDRESS_PATTERN,
    NO_NUL_PATTERN,
    SIGNATURE_PATTERN,
    api_responses,
    json_whole_number,
)
from relayer.services.chains import served_chain_ids

BIGINT_MAX = 2**63 - 1
# A challenge is a few hundred characters; anything much longer is not one.
MESSAGE_MAX = 2000


@extend_schema_field({"type": "string", "pattern": ADDRESS_PATTERN})
class _Address(serializers.CharField):
    """Any case in, checksummed out; only a JSON string (a CharField would take 0 as "0")."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str) or not is_address(data):
            raise serializers.ValidationError("Not an address: 0x and 40 hex digits.")
        return str(to_checksum_address(data))


@extend_schema_field({"type": "string", "pattern": SIGNATURE_PATTERN})
class _Signature(serializers.CharField):
    """Checked by the one signature parser in the service; here only a JSON string."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, max_length=200, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


@extend_schema_field({"type": "string", "minLength": 1, "maxLength": MESSAGE_MAX, "pattern": NO_NUL_PATTERN})
class _Message(serializers.CharField):
    """Kept exactly as sent (no trimming): it is compared byte for byte with the one issued."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, max_length=MESSAGE_MAX, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": BIGINT_MAX, MARKER: True})
class _ChainId(serializers.Field):
    """A JSON integer (`3.0` is 3, as OpenAPI 3.1 counts it) naming a chain served here."""

    default_error_messages = {"invalid": "A whole number (a JSON integer) is required."}

    def to_internal_value(self, data: Any) -> int:
        chain_id = json_whole_number(data)
        if chain_id is None or not 1 <= chain_id <= BIGINT_MAX:
            self.fail("invalid")
        served = served_chain_ids()
        if chain_id not in served:
            raise serializers.ValidationError(
                f"Chain {chain_id} is not served here; served chains: {', '.join(map(str, served)) or 'none'}."
            )
        return int(chain_id)

    def to_representation(self, value: Any) -> int:
        return int(value)


class ChallengeRequest(serializers.Serializer):
    address = _Address(help_text="The wallet to register; any case.")
    chainId = _ChainId(required=False, help_text="A chain served here. Default: the chain this deployment runs on.")


class ChallengeOut(serializers.Serializer):
    message = serializers.CharField(help_text="The EIP-4361 text to sign with personal_sign, exactly as given.")
    nonce = serializers.CharField()
    expiresAt = serializers.DateTimeField()


class RegisterRequest(serializers.Serializer):
    message = _Message(help_text="The challenge's message, exactly as issued.")
    signature = _Signature(help_text="The wallet's personal_sign (EIP-191) signature of the message.")


class WalletOut(serializers.Serializer):
    address = serializers.CharField(help_text="Checksummed.")
    provenAt = serializers.DateTimeField()
    development = serializers.BooleanField(help_text="A key the server holds (development chains only).")


def wallet_json(wallet: ApproverWallet) -> dict[str, Any]:
    return {"address": wallet.address, "provenAt": wallet.proven_at.isoformat(), "development": wallet.development}


def challenge_json(challenge: WalletChallenge) -> dict[str, Any]:
    return {"message": challenge.message, "nonce": challenge.nonce, "expiresAt": challenge.expires_at.isoformat()}


class WalletChallengeView(APIView):
    @extend_schema(
        request=ChallengeRequest,
        responses=api_responses(
            {201: ChallengeOut},
            body=True,
            codes={400: "an address that is none, a chain not served (`fields` says which)"},
        ),
        summary="A Sign-In with Ethereum message to register a wallet with",
    )
    def post(self, request: Request) -> Response:
        body = ChallengeRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        challenge = wallet_challenge_issue(
            user=request.user,
            address=data["address"],
            domain=request.get_host(),
            uri=request.build_absolute_uri("/"),
            chain_id=data.get("chainId", settings.CHAIN_ID),
        )
        return Response(challenge_json(challenge), status=status.HTTP_201_CREATED)


class WalletListView(APIView):
    @extend_schema(
        request=RegisterRequest,
        responses=api_responses(
            {201: WalletOut},
            errors=[409],
            body=True,
            codes={
                401: "`invalid_challenge` (the message was not issued to you, or was used, or expired: ask for a "
                "new one), `invalid_signature` (not 65 canonical bytes), `wallet_signature_mismatch` (another signer)",
                409: "`wallet_taken`: another user registered the address",
            },
        ),
        summary="Register the wallet that signed a challenge (replaces yours)",
    )
    def post(self, request: Request) -> Response:
        body = RegisterRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        wallet = wallet_register(user=request.user, message=data["message"], signature=data["signature"])
        return Response(wallet_json(wallet), status=status.HTTP_201_CREATED)


class WalletMeView(APIView):
    @extend_schema(
        request=None,
        responses=api_responses({200: WalletOut}, errors=[404], codes={404: "no wallet registered yet"}),
        summary="Your registered wallet",
    )
    def get(self, request: Request) -> Response:
        wallet = wallet_get(request.user)
        if wallet is None:
            raise NotFound("You have no registered wallet: POST /v1/wallets/challenge, sign it, POST /v1/wallets.")
        return Response(wallet_json(wallet))
