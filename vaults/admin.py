"""Admin for vaults: on-chain allocation and active policy at a glance; which API clients may
read each vault (grants); policy versions with a diff; feeds and intents read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from orchestrator.infra.admin_base import ReadOnlyAdmin
from orchestrator.infra.errors import DomainError
from relayer.rpc import web3_for
from vaults.models import (
    ExecutionIntent,
    OracleKey,
    PolicyStatus,
    Protocol,
    SafeTransaction,
    SafeTxPurpose,
    SignedFeed,
    Vault,
    VaultGrant,
    VaultPolicy,
)
from vaults.services.policies import policy_activation_request, policy_commit_open, policy_diff

# Flow A sends actions from a key; a Safe executes only what its owners sign (docs/flow-b.md).
SAFE_FLOW_B_ONLY = (
    "A Safe vault runs Flow B only (rebalances its owners sign) until the on-chain policy module lets "
    "automated rebalances through the Safe."
)


def onchain_allocation(vault: Vault) -> list[tuple[str, str]]:
    from vaults.onchain import positions

    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=vault.chain)}
    held = positions(
        w3=web3_for(vault.chain.rpc_url), account=vault.holder, asset=vault.asset_address, protocols=protocols
    )
    if not held.total:
        return [("idle", "0")]
    rows = [(name, f"{amount * 100 / held.total:.2f}%") for name, amount in sorted(held.by_protocol.items())]
    return [*rows, ("idle", f"{held.idle * 100 / held.total:.2f}%")]


class VaultGrantInline(admin.TabularInline):
    """The API clients that may read this vault (docs/operations.md#api-clients-and-vault-grants)."""

    model = VaultGrant
    fk_name = "vault"
    extra = 0
    fields = ("client", "granted_by", "created_at")
    readonly_fields = ("granted_by", "created_at")
    autocomplete_fields = ("client",)
    verbose_name = "API client grant"
    verbose_name_plural = "API clients that may read this vault"


@admin.register(Vault)
class VaultAdmin(admin.ModelAdmin):
    list_display = (
        "vault_id",
        "name",
        "chain",
        "active_policy",
        "allocation",
        "intent_nonce",
        "last_rebalance_at",
        "auto_rebalance",
        "custody",
    )
    list_filter = ("chain", "auto_rebalance")
    search_fields = ("vault_id", "name")
    filter_horizontal = ("approvers",)
    # The module is named by its installation's Safe transaction once it executes, never typed in:
    # Flow A must not run through a module the Safe has not enabled (docs/flow-b.md).
    readonly_fields = (
        "intent_nonce",
        "last_rebalance_at",
        "created_at",
        "allocation",
        "custody",
        "safe_address",
        "module_address",
    )
    inlines = (VaultGrantInline,)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        # A grant added here records who made it.
        for grant in formset.save(commit=False):
            if isinstance(grant, VaultGrant) and grant.pk is None:
                grant.granted_by = request.user
            grant.save()
        for gone in formset.deleted_objects:
            gone.delete()
        formset.save_m2m()

    def get_form(self, request: HttpRequest, obj: Vault | None = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        if obj is not None and obj.safe_address and not obj.module_address and "auto_rebalance" in form.base_fields:
            field = form.base_fields["auto_rebalance"]
            field.disabled = True
            field.help_text = SAFE_FLOW_B_ONLY
        return form

    @admin.display(description="custody")
    def custody(self, obj: Vault) -> str:
        if not obj.safe_address:
            return f"account key {obj.account.address}"
        if obj.module_address:
            return (
                f"Safe {obj.safe_address}, approvers' wallets as owners; automated rebalances run through its "
                f"policy module {obj.module_address}, within the policy the owners committed on chain."
            )
        return f"Safe {obj.safe_address}, approvers' wallets as owners. {SAFE_FLOW_B_ONLY}"

    @admin.display(description="active policy")
    def active_policy(self, obj: Vault) -> str:
        policy = obj.policies.filter(status=PolicyStatus.ACTIVE).first()
        return f"v{policy.version}" if policy else "none"

    @admin.display(description="on-chain allocation")
    def allocation(self, obj: Vault) -> str:
        try:
            rows = onchain_allocation(obj)
        except Exception as exc:  # the page must render whatever the chain does
            return f"unavailable ({exc.__class__.__name__})"
        return format_html_join(mark_safe("<br>"), "{}: {}", rows)


@admin.register(VaultGrant)
class VaultGrantAdmin(admin.ModelAdmin):
    """Every grant in one list: which API client may read which vault, since when and by whom."""

    list_display = ("client", "vault", "granted_by", "created_at")
    list_filter = ("vault",)
    search_fields = ("client__username", "vault__vault_id")
    autocomplete_fields = ("client", "vault")
    readonly_fields = ("granted_by", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj: VaultGrant | None = None) -> Any:
        # A grant is made or deleted, never moved to another client or vault.
        if obj is not None:
            return ("client", "vault", "granted_by", "created_at")
        return self.readonly_fields

    def save_model(self, request: HttpRequest, obj: VaultGrant, form: Any, change: bool) -> None:
        if obj.pk is None:
            obj.granted_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(VaultPolicy)
class VaultPolicyAdmin(admin.ModelAdmin):
    list_display = (
        "vault",
        "version",
        "status",
        "max_exposure_pct",
        "max_risk_score",
        "approval_threshold",
        "activated_at",
    )
    list_filter = ("status", "vault")
    filter_horizontal = ("whitelist", "oracles")
    actions = ["activate"]
    readonly_fields = ("changes", "on_chain")

    def get_readonly_fields(self, request: HttpRequest, obj: VaultPolicy | None = None) -> Any:
        if obj is not None and (obj.status != PolicyStatus.DRAFT or policy_commit_open(obj) is not None):
            # Immutable once active, and while the owners sign its commit (they sign what it is
            # now): every field is shown, none can change.
            return [f.name for f in VaultPolicy._meta.fields] + ["whitelist", "oracles", "changes", "on_chain"]
        return ["status", "activated_at", "created_by", "committed_hash", "changes", "on_chain"]

    def save_model(self, request: HttpRequest, obj: VaultPolicy, form: Any, change: bool) -> None:
        if obj.pk is None:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    @admin.display(description="changes from the previous version")
    def changes(self, obj: VaultPolicy) -> str:
        if obj.pk is None:
            return "-"
        previous = obj.vault.policies.filter(version__lt=obj.version).order_by("-version").first()
        rows = policy_diff(old=previous, new=obj)
        if not rows:
            return "no changes"
        return format_html(
            "<table><tr><th>setting</th><th>v{}</th><th>v{}</th></tr>{}</table>",
            previous.version if previous else "-",
            obj.version,
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="on chain")
    def on_chain(self, obj: VaultPolicy) -> str:
        """Where the policy stands with the vault's module: committed, or its commit's Safe
        transaction (awaiting signatures, failed, rejected)."""
        if obj.committed_hash:
            return f"committed to the module: {obj.committed_hash}"
        row = (
            SafeTransaction.objects.filter(vault_id=obj.vault_id, purpose=SafeTxPurpose.POLICY, plan__policy=obj.pk)
            .order_by("-created_at")
            .first()
        )
        if row is None:
            return "-" if obj.pk is None or not obj.vault.module_address else "not committed"
        link = reverse("admin:vaults_safetransaction_change", args=[row.pk])
        why = f" ({row.error})" if row.error else ""
        return format_html('<a href="{}">Safe nonce {}</a>: {}{}', link, row.nonce, row.get_status_display(), why)

    @admin.action(
        description="Activate the selected draft (retires the active version; on a vault with a "
        "policy module, asks the Safe's owners to commit it)"
    )
    def activate(self, request: HttpRequest, queryset: QuerySet[VaultPolicy]) -> None:
        for policy in queryset:
            try:
                outcome = policy_activation_request(policy=policy, requested_by=request.user)
            except DomainError as exc:
                self.message_user(request, f"{policy.vault} v{policy.version}: {exc.message}", messages.WARNING)
                continue
            if isinstance(outcome, SafeTransaction):
                sign = reverse("admin:vaults_safetransaction_sign", args=[outcome.pk])
                self.message_user(
                    request,
                    format_html(
                        '{} v{} awaits the owners\' signatures: <a href="{}">Safe nonce {}</a>. It becomes active '
                        "when the Safe executes it.",
                        policy.vault,
                        policy.version,
                        sign,
                        outcome.nonce,
                    ),
                    messages.INFO,
                )
            else:
                self.message_user(request, f"{policy.vault} v{policy.version} is now active.", messages.SUCCESS)


@admin.register(Protocol)
class ProtocolAdmin(admin.ModelAdmin):
    list_display = ("name", "address", "chain")
    list_filter = ("chain",)


@admin.register(OracleKey)
class OracleKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "address", "active", "pull_url")
    list_filter = ("active",)


@admin.register(SignedFeed)
class SignedFeedAdmin(ReadOnlyAdmin):
    list_display = ("timestamp", "oracle", "entry_count", "received_at", "digest")
    list_filter = ("oracle",)
    search_fields = ("digest",)

    @admin.display(description="entries")
    def entry_count(self, obj: SignedFeed) -> int:
        return len(obj.entries)


@admin.register(ExecutionIntent)
class ExecutionIntentAdmin(ReadOnlyAdmin):
    list_display = ("vault", "nonce", "status", "action_count", "deadline", "issuer", "policy", "created_at")
    list_filter = ("status", "vault")
    search_fields = ("id", "digest", "proposal_id")

    @admin.display(description="actions")
    def action_count(self, obj: ExecutionIntent) -> int:
        return len(obj.actions)
