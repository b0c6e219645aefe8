"""Signing keys (encrypted at rest), chains, nonce cursors and relayed transactions."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal, overload

from django.db import models
from django.db.models import Q
from django.db.models.expressions import Combinable
from django.db.models.fields import NOT_PROVIDED

from orchestrator.infra.ids import uuid7

# What a wei column accepts (ints, as the relayer computes them, or Decimals) and gives back.
WeiIn = int | Decimal | str | Combinable


@overload
def wei_field(
    *, null: Literal[False] = False, blank: bool = False, default: int | type[NOT_PROVIDED] = ..., help_text: str = ""
) -> models.DecimalField[WeiIn, Decimal]: ...
@overload
def wei_field(
    *, null: Literal[True], blank: bool = False, default: int | type[NOT_PROVIDED] = ..., help_text: str = ""
) -> models.DecimalField[WeiIn | None, Decimal | None]: ...
def wei_field(
    *, null: bool = False, blank: bool = False, default: int | type[NOT_PROVIDED] = NOT_PROVIDED, help_text: str = ""
) -> models.DecimalField[WeiIn, Decimal] | models.DecimalField[WeiIn | None, Decimal | None]:
    """An amount of wei: any uint256 fits in 78 decimal digits."""
    return models.DecimalField(
        max_digits=78, decimal_places=0, null=null, blank=blank, default=default, help_text=help_text
    )


class KeyPurpose(models.TextChoices):
    RELAYER = "relayer", "Relayer"
    EXECUTOR = "executor", "Executor"
    OPERATOR = "operator", "Operator"
    ORACLE = "oracle", "Oracle"
    APPROVER = "approver", "Approver (development wallet)"
    VALIDATOR = "validator", "Validator (countersigns automation requests for Safe modules)"


class SigningKey(models.Model):
    """A private key, only ever stored encrypted (AES-256-GCM under a versioned master key).

    The address and purpose are bound into the ciphertext as associated data, so a
    ciphertext copied onto another row does not decrypt."""

    address = models.CharField(max_length=42, unique=True)
    purpose = models.CharField(max_length=12, choices=KeyPurpose.choices, db_index=True)
    label = models.CharField(max_length=200, blank=True)
    backend = models.CharField(max_length=20, default="local")
    master_key_version = models.PositiveIntegerField()
    nonce = models.BinaryField(max_length=12, editable=False)
    ciphertext = models.BinaryField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["purpose", "address"]

    def __str__(self) -> str:
        return f"{self.purpose} {self.address}"

    def __repr__(self) -> str:  # never the key material, even by accident in a debugger
        return f"<SigningKey {self.purpose} {self.address}>"


# Anvil's default chain id: always a development chain, whatever its row says.
ANVIL_CHAIN_ID = 31337


class Chain(models.Model):
    chain_id = models.PositiveBigIntegerField(primary_key=True)
    name = models.CharField(max_length=100)
    rpc_url = models.CharField(max_length=500)
    confirmations = models.PositiveIntegerField(default=1, help_text="Blocks on top of the receipt's block.")
    poll_interval = models.FloatField(default=2.0, help_text="Seconds between receipt checks.")
    max_fee_cap_wei = wei_field(default=500 * 10**9, help_text="maxFeePerGas never exceeds this.")
    priority_fee_wei = wei_field(default=10**9, help_text="Default tip when history has none.")
    stuck_after = models.FloatField(default=30.0, help_text="Seconds unmined before a fee bump.")
    max_bumps = models.PositiveIntegerField(default=5)
    log_range_cap = models.PositiveIntegerField(default=2000, help_text="Most blocks per eth_getLogs.")
    enabled = models.BooleanField(default=True)
    is_development = models.BooleanField(
        default=False,
        help_text="Relayer keys created for this chain are funded from the node's prefunded dev account; "
        "never set on a real chain. Chain 31337 (anvil) counts as development either way.",
    )

    class Meta:
        ordering = ["chain_id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.chain_id})"

    @property
    def counts_as_development(self) -> bool:
        return self.is_development or self.chain_id == ANVIL_CHAIN_ID


class NonceCursor(models.Model):
    """The next nonce of one signer on one chain. Locked (SELECT ... FOR UPDATE) in the same
    transaction that assigns a nonce and stores the signed transaction."""

    signer = models.ForeignKey(SigningKey, on_delete=models.PROTECT, related_name="cursors")
    chain = models.ForeignKey(Chain, on_delete=models.PROTECT, related_name="cursors")
    next_nonce = models.PositiveBigIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["signer", "chain"], name="one_cursor_per_signer_chain")]

    def __str__(self) -> str:
        return f"{self.signer.address}@{self.chain_id}: {self.next_nonce}"


class TxPhase(models.TextChoices):
    PENDING = "pending", "Pending"
    SUBMITTING = "submitting", "Submitting"
    CONFIRMING = "confirming", "Confirming"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    DEAD_LETTER = "dead-letter", "Dead letter"


class RelayTransaction(models.Model):
    # Time-ordered: a request's key, and each new version of its row, land near the newest ones
    # in the primary-key index (orchestrator/infra/ids.py).
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    # Unique by a constraint in Meta, as the other indexes below: every index is written on every
    # update of a row (a relay is updated six times), so those no query uses are left out.
    idempotency_key = models.CharField(max_length=255)
    signer = models.ForeignKey(SigningKey, on_delete=models.PROTECT, related_name="transactions")
    # Lookups by chain use one_request_per_nonce, which starts with it.
    chain = models.ForeignKey(Chain, on_delete=models.PROTECT, related_name="transactions", db_index=False)
    to = models.CharField(max_length=42)
    value = wei_field(default=0)
    data = models.TextField(default="0x", blank=True)
    gas_limit = models.PositiveBigIntegerField(null=True, blank=True)
    max_fee_per_gas = wei_field(null=True, blank=True)
    max_priority_fee_per_gas = wei_field(null=True, blank=True)
    nonce = models.PositiveBigIntegerField(null=True, blank=True)
    phase = models.CharField(max_length=12, choices=TxPhase.choices, default=TxPhase.PENDING)
    # The transaction currently expected to mine (the latest broadcast); every one is in attempts.
    tx_hash = models.CharField(max_length=66, blank=True)
    raw_tx = models.TextField(blank=True)
    bumps = models.PositiveIntegerField(default=0)
    last_broadcast_at = models.DateTimeField(null=True, blank=True)
    block_number = models.PositiveBigIntegerField(null=True, blank=True)
    block_hash = models.CharField(max_length=66, blank=True)
    receipt_status = models.PositiveSmallIntegerField(null=True, blank=True)
    gas_used = models.PositiveBigIntegerField(null=True, blank=True)
    mined_hash = models.CharField(max_length=66, blank=True, help_text="Which broadcast hash mined.")
    error = models.TextField(blank=True)
    # Never signed after this (an intent's deadline): a late request fails instead of sending.
    not_after = models.DateTimeField(null=True, blank=True)
    correlation_id = models.CharField(max_length=64)
    # What asked for it: a kind ("intent", "automation", ...) and that object's id.
    requested_by_kind = models.CharField(max_length=50, blank=True)
    requested_by_id = models.CharField(max_length=100, blank=True)
    workflow_run = models.ForeignKey(
        "orchestrator.WorkflowRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The run that asked for it (a rebalance, an execution, a firing's run), whose status read
    # shows this transaction's hash as its transaction id. `workflow_run` is the relay batch.
    requester_run = models.ForeignKey(
        "orchestrator.WorkflowRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    # A request that only makes sense on the state another one leaves (a deposit of the funds a
    # withdrawal frees): same signer, the next nonce, simulated after it, failed if it fails.
    after = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="followers", db_index=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # Plain btrees, without the varchar_pattern_ops twin a db_index CharField gets (for LIKE
        # 'x%', which no query here makes).
        # No index refers to phase, not even in a condition. A request changes phase four
        # times; with phase indexed, each of those writes added an entry to every index, and
        # the index on phase alone, estimated selective, was ANDed with a batch's workflow_run
        # index and read its dead entries (307,809 on the bench database, 6 ms a query).
        # Without it, the writes that change no indexed column (priced, sent, finished) are
        # heap-only (HOT) updates, given room on the page (fillfactor 70, migration 0011).
        indexes = [
            # The monitor fills the nonces of failed requests that never mined: a failed
            # request has an error, a completed one none.
            models.Index(
                fields=["chain", "signer", "nonce"],
                condition=~Q(error="") & Q(nonce__isnull=False),
                name="relay_nonce_gap_idx",
            ),
            models.Index(fields=["tx_hash"], name="relay_tx_hash_idx"),
            models.Index(fields=["correlation_id"], name="relay_correlation_idx"),
            models.Index(fields=["requested_by_kind", "requested_by_id"], name="relay_requested_by_idx"),
            # Most requests ask for no run's notice and follow no other request: their empty
            # keys are left out of these two (and out of the writes to them).
            models.Index(
                fields=["requester_run"], condition=Q(requester_run__isnull=False), name="relay_requester_run_idx"
            ),
            models.Index(fields=["after"], condition=Q(after__isnull=False), name="relay_after_idx"),
            # A lane kick looks for its chain's requests that no batch has taken yet.
            models.Index(
                fields=["chain", "created_at"],
                condition=Q(workflow_run__isnull=True),
                name="relay_unbatched_idx",
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="relay_idempotency_key_unique"),
            # Two requests never hold the same nonce for one signer on one chain.
            models.UniqueConstraint(
                fields=["chain", "signer", "nonce"],
                condition=Q(nonce__isnull=False),
                name="one_request_per_nonce",
            ),
        ]

    def __str__(self) -> str:
        return f"relay {self.id} ({self.phase})"


class BroadcastKind(models.TextChoices):
    ORIGINAL = "original", "Original"
    REPLACEMENT = "replacement", "Fee bump"
    FILLER = "filler", "Nonce filler (zero-value self-transfer)"


class Broadcast(models.Model):
    """Every signed transaction ever sent for a request, stored before it is sent."""

    transaction = models.ForeignKey(RelayTransaction, on_delete=models.CASCADE, related_name="broadcasts")
    kind = models.CharField(max_length=12, choices=BroadcastKind.choices)
    # Unique by a constraint in Meta: a unique CharField also gets a varchar_pattern_ops twin
    # (for LIKE 'x%', which no query here makes), written with every row.
    tx_hash = models.CharField(max_length=66)
    raw_tx = models.TextField()
    nonce = models.PositiveBigIntegerField()
    max_fee_per_gas = wei_field()
    max_priority_fee_per_gas = wei_field()
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    send_error = models.TextField(blank=True)

    class Meta:
        ordering = ["transaction", "id"]
        indexes = [
            # A broadcast sends first what other batches signed and have not sent
            # (relayer/services/sending.py, unsent_before): the few rows not sent yet.
            models.Index(fields=["nonce"], condition=Q(sent_at__isnull=True), name="broadcast_unsent_idx"),
        ]
        constraints = [models.UniqueConstraint(fields=["tx_hash"], name="broadcast_tx_hash_unique")]

    def __str__(self) -> str:
        return f"{self.kind} {self.tx_hash}"
