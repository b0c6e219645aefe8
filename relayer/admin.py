"""Admin for the relayer: transactions by phase, signer and chain; signers; chains.

Key material is never shown: SigningKey's encrypted columns are excluded from every form."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from orchestrator.infra.admin_base import ReadOnlyAdmin
from relayer.models import Broadcast, Chain, NonceCursor, RelayTransaction, SigningKey
from relayer.rpc import TRANSPORT_ERRORS, as_address, web3_for

if TYPE_CHECKING:  # the admin's classes take type arguments only in django-stubs, not at run time
    BroadcastInlineBase = admin.TabularInline[Broadcast, RelayTransaction]
    ChainAdminBase = admin.ModelAdmin[Chain]
    NonceCursorAdminBase = admin.ModelAdmin[NonceCursor]
else:
    BroadcastInlineBase = admin.TabularInline
    ChainAdminBase = NonceCursorAdminBase = admin.ModelAdmin


class BroadcastInline(BroadcastInlineBase):
    model = Broadcast
    extra = 0
    can_delete = False
    fields = (
        "kind",
        "tx_hash",
        "nonce",
        "max_fee_per_gas",
        "max_priority_fee_per_gas",
        "created_at",
        "sent_at",
        "send_error",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: RelayTransaction | None = None) -> bool:
        return False


@admin.register(RelayTransaction)
class RelayTransactionAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "phase",
        "signer_address",
        "chain",
        "nonce",
        "tx_hash",
        "block_number",
        "bumps",
        "short_error",
        "created_at",
    )
    list_filter = ("phase", "chain", "signer__address", "requested_by_kind")
    search_fields = (
        "id",
        "idempotency_key",
        "tx_hash",
        "mined_hash",
        "correlation_id",
        "to",
        "requested_by_id",
    )
    readonly_fields = [f.name for f in RelayTransaction._meta.fields if f.name != "raw_tx"]
    exclude = ("raw_tx",)
    inlines = [BroadcastInline]
    list_select_related = ("signer", "chain")

    @admin.display(description="signer", ordering="signer__address")
    def signer_address(self, obj: RelayTransaction) -> str:
        return obj.signer.address

    @admin.display(description="error")
    def short_error(self, obj: RelayTransaction) -> str:
        return obj.error[:80]


@admin.register(SigningKey)
class SigningKeyAdmin(ReadOnlyAdmin):
    """Signers with their balance and next nonce on each chain (read from the chain live). Keys
    are made only by the key manager (`manage.py keys create`), never here."""

    list_display = ("address", "purpose", "label", "balances", "nonces", "master_key_version", "created_at")
    list_filter = ("purpose", "master_key_version")
    search_fields = ("address", "label")
    fields = ("address", "purpose", "label", "backend", "master_key_version", "created_at", "rotated_at")
    readonly_fields = fields

    @admin.display(description="balance (ETH)")
    def balances(self, obj: SigningKey) -> str:
        parts = []
        for chain in Chain.objects.filter(enabled=True):
            try:
                wei = int(web3_for(chain.rpc_url).eth.get_balance(as_address(obj.address)))
            except TRANSPORT_ERRORS:
                parts.append(f"{chain.name}: ?")
                continue
            low = obj.purpose == "relayer" and wei < settings.RELAYER_LOW_BALANCE_WEI
            parts.append(
                format_html(
                    '<span style="color:{}">{}: {}</span>',
                    "#c62828" if low else "inherit",
                    chain.name,
                    # Formatted here: format_html escapes its arguments to strings first.
                    f"{wei / 10**18:.4f}",
                )
            )
        return format_html("<br>".join(["{}"] * len(parts)), *parts) if parts else "-"

    @admin.display(description="next nonce")
    def nonces(self, obj: SigningKey) -> str:
        return ", ".join(f"{c.chain_id}: {c.next_nonce}" for c in obj.cursors.all()) or "-"


@admin.register(Chain)
class ChainAdmin(ChainAdminBase):
    list_display = (
        "chain_id",
        "name",
        "rpc_url",
        "confirmations",
        "poll_interval",
        "stuck_after",
        "max_fee_cap_wei",
        "enabled",
        "is_development",
    )
    list_editable = ("enabled",)


@admin.register(NonceCursor)
class NonceCursorAdmin(NonceCursorAdminBase):
    list_display = ("signer", "chain", "next_nonce", "updated_at")
    readonly_fields = ("signer", "chain", "next_nonce", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
