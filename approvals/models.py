"""Rebalance proposals decided by designated approvers (Flow B, docs/flow-b.md)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ProposalStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    EXECUTED = "executed", "Executed"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


class ProposalSource(models.TextChoices):
    OPERATOR = "operator", "Operator"
    FLOW_A = "flow-a", "Automated rebalance above the approval value"


class RebalanceProposal(models.Model):
    proposal_id = models.CharField(max_length=64, unique=True, help_text='Like "PROP-2024-001".')
    vault = models.ForeignKey("vaults.Vault", on_delete=models.PROTECT, related_name="proposals")
    proposer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="proposals_made",
    )
    source = models.CharField(max_length=10, choices=ProposalSource.choices, default=ProposalSource.OPERATOR)
    approvers = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="proposals_to_decide")
    quorum_required = models.PositiveSmallIntegerField()
    proposed_allocations = models.JSONField(help_text="Target allocation in %, by protocol name.")
    policy = models.ForeignKey("vaults.VaultPolicy", on_delete=models.PROTECT, related_name="proposals")
    feed = models.ForeignKey("vaults.SignedFeed", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=10, choices=ProposalStatus.choices, default=ProposalStatus.PENDING)
    expires_at = models.DateTimeField()
    intent = models.OneToOneField(
        "vaults.ExecutionIntent", null=True, blank=True, on_delete=models.PROTECT, related_name="proposal"
    )
    execution_error = models.TextField(blank=True, help_text="Why execution stopped, if it did.")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "expires_at"], name="proposal_status_expiry_idx")]

    def __str__(self) -> str:
        return f"{self.proposal_id} ({self.status})"


class Decision(models.TextChoices):
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"


class Approval(models.Model):
    # PROTECT: decisions are audit rows (a database trigger refuses deleting them); deleting a
    # decided proposal is refused here, by name, before any SQL is sent.
    proposal = models.ForeignKey(RebalanceProposal, on_delete=models.PROTECT, related_name="approvals")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approvals")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    comment = models.TextField(blank=True)
    decided_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["proposal", "decided_at"]
        constraints = [
            models.UniqueConstraint(fields=["proposal", "approver"], name="one_decision_per_approver"),
        ]

    def __str__(self) -> str:
        return f"{self.approver} {self.decision}s {self.proposal.proposal_id}"


class ApproverWallet(models.Model):
    """The wallet an approver signs Safe transactions with, proven by a signed EIP-4361 message
    (approvals/wallets.py). One per user, and an address belongs to one user only."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="wallet")
    address = models.CharField(max_length=42, unique=True, help_text="Checksummed (EIP-55).")
    proven_at = models.DateTimeField()
    message = models.TextField(help_text="The EIP-4361 text the wallet signed.")
    signature = models.CharField(max_length=132, help_text="Canonical: low s, v 27/28.")
    development = models.BooleanField(
        default=False, help_text="A key the server holds (development chains only): never real funds."
    )

    class Meta:
        ordering = ["user__username"]

    def __str__(self) -> str:
        return f"{self.address} ({self.user})"


class WalletChallenge(models.Model):
    """An EIP-4361 message issued to a user: signed once, within its expiry, by the address it
    names."""

    nonce = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="wallet_challenges")
    address = models.CharField(max_length=42)
    message = models.TextField()
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-issued_at"]

    def __str__(self) -> str:
        return f"challenge {self.nonce} for {self.address}"
