"""Vaults, their versioned policies, oracle keys, signed feeds, execution intents and the relays
that carry an intent's actions."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


def percent_field(**kwargs: Any) -> models.DecimalField:
    return models.DecimalField(
        max_digits=7, decimal_places=4, validators=[MinValueValidator(0), MaxValueValidator(100)], **kwargs
    )


def amount_field(**kwargs: Any) -> models.DecimalField:
    """Token amounts in base units (uint256)."""
    return models.DecimalField(max_digits=78, decimal_places=0, **kwargs)


class OracleKey(models.Model):
    """An oracle agent allowed to sign market feeds, optionally polled at `pull_url`."""

    address = models.CharField(max_length=42, unique=True)
    name = models.CharField(max_length=100)
    active = models.BooleanField(default=True)
    pull_url = models.URLField(blank=True, help_text="Fetched on schedule (pull mode); empty for push only.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"


class Vault(models.Model):
    vault_id = models.CharField(max_length=64, unique=True, help_text='Like "vault-eth-001".')
    name = models.CharField(max_length=200, blank=True)
    chain = models.ForeignKey("relayer.Chain", on_delete=models.PROTECT, related_name="vaults")
    # Without a Safe, the account holds the funds and intents are sent from it. With one, the
    # Safe holds them and this key only pays the gas of the Safe's transactions: it is no owner,
    # so it can move nothing (docs/flow-b.md#safe-vaults).
    account = models.ForeignKey(
        "relayer.SigningKey",
        on_delete=models.PROTECT,
        related_name="vaults_held",
        help_text="Holds the funds; for a Safe vault, only pays the gas of the Safe's transactions.",
    )
    safe_address = models.CharField(
        max_length=42,
        blank=True,
        help_text="The Safe account that holds the funds; its owners are the approvers' wallets and its "
        "threshold the quorum. Empty: the account key holds them.",
    )
    module_address = models.CharField(
        max_length=42,
        blank=True,
        help_text="The VaultPolicyModule enabled on the Safe: Flow A's intents run through it, within the "
        "policy the owners committed on chain. Empty: a Safe vault rebalances by proposals only.",
    )
    operator = models.ForeignKey(
        "relayer.SigningKey",
        on_delete=models.PROTECT,
        related_name="vaults_operated",
        help_text="Signs the vault's ExecutionIntents.",
    )
    asset_address = models.CharField(max_length=42, help_text="The ERC-20 the vault allocates.")
    strategy = models.CharField(max_length=50, default="risk-adjusted-yield")
    auto_rebalance = models.BooleanField(default=True, help_text="Flow A runs for this vault.")
    intent_nonce = models.PositiveBigIntegerField(default=0, help_text="Nonce of the last intent issued.")
    last_rebalance_at = models.DateTimeField(null=True, blank=True)
    # Who decides the rebalances Flow A sends to approval (Flow B), and how many must agree.
    approvers = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="approver_of_vaults")
    approval_quorum = models.PositiveSmallIntegerField(default=2)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["vault_id"]

    def __str__(self) -> str:
        return self.vault_id

    @property
    def holder(self) -> str:
        """The address that holds the funds: the Safe, else the account key."""
        return self.safe_address or self.account.address


class VaultGrant(models.Model):
    """An API client's right to read a vault: the vault, its policy, intents and proposals, the
    runs about it and the feeds its policies trust (docs/api.md#access). Staff need none."""

    client = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="vault_grants")
    vault = models.ForeignKey(Vault, on_delete=models.CASCADE, related_name="grants")
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["vault", "client"]
        constraints = [models.UniqueConstraint(fields=["client", "vault"], name="vault_grant_once")]

    def __str__(self) -> str:
        return f"{self.client} may read {self.vault}"


class Protocol(models.Model):
    """A place the vault can allocate to: here an ERC-4626 vault on the same chain."""

    name = models.CharField(max_length=100, help_text='Like "Aave USDC"; the name feeds use.')
    address = models.CharField(max_length=42)
    chain = models.ForeignKey("relayer.Chain", on_delete=models.PROTECT, related_name="protocols")

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["chain", "name"], name="protocol_name_per_chain")]

    def __str__(self) -> str:
        return self.name


class PolicyStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"


class VaultPolicy(models.Model):
    """One version of a vault's policy. Immutable once activated; one active per vault."""

    vault = models.ForeignKey(Vault, on_delete=models.CASCADE, related_name="policies")
    version = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=PolicyStatus.choices, default=PolicyStatus.DRAFT)
    max_exposure_pct = percent_field(help_text="Largest share of the vault in one position, in %.")
    whitelist = models.ManyToManyField(Protocol, related_name="policies", blank=True)
    max_risk_score = models.PositiveSmallIntegerField(help_text="Protocols riskier than this get nothing.")
    min_interval_seconds = models.PositiveIntegerField(default=3600, help_text="Between two rebalances.")
    window_start_hour = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(23)])
    window_end_hour = models.PositiveSmallIntegerField(
        default=24,
        validators=[MaxValueValidator(24)],
        help_text="UTC hours [start, end) when rebalances may run.",
    )
    max_feed_age_seconds = models.PositiveIntegerField(default=300)
    max_turnover_pct = percent_field(default=Decimal(100), help_text="Largest share of the vault moved at once.")
    approval_threshold = amount_field(help_text="Value moved (asset base units) above which Flow B decides.")
    intent_ttl_seconds = models.PositiveIntegerField(default=3600, help_text="Intent deadline: feed time + this.")
    spending_limit = amount_field(
        null=True,
        blank=True,
        help_text="On a vault with a policy module: at most this much of the asset (base units) approved or "
        "transferred through the module per period, enforced on chain. Empty: no limit.",
    )
    spending_period_seconds = models.PositiveIntegerField(default=86400, help_text="The spending limit's period.")
    committed_hash = models.CharField(
        max_length=66,
        blank=True,
        help_text="The policy hash committed to the vault's module (keccak256 of its canonical JSON); empty "
        "for a vault without a module.",
    )
    oracles = models.ManyToManyField(OracleKey, related_name="policies", blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["vault", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["vault", "version"], name="policy_version_unique"),
            models.UniqueConstraint(fields=["vault"], condition=Q(status="active"), name="one_active_policy"),
        ]
        verbose_name_plural = "vault policies"

    def __str__(self) -> str:
        return f"{self.vault.vault_id} v{self.version} ({self.status})"


# The settings of a policy version that rules a rebalance (the whitelist and the oracles apart):
# what a new draft copies, what a diff compares, what Flow A reads with the policy.
POLICY_RULES = [
    "max_exposure_pct",
    "max_risk_score",
    "min_interval_seconds",
    "window_start_hour",
    "window_end_hour",
    "max_feed_age_seconds",
    "max_turnover_pct",
    "approval_threshold",
    "intent_ttl_seconds",
    "spending_limit",
    "spending_period_seconds",
]


class SignedFeed(models.Model):
    """A market feed that passed verification. Refused feeds are stored nowhere."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    oracle = models.ForeignKey(OracleKey, on_delete=models.PROTECT, related_name="feeds")
    timestamp = models.DateTimeField(db_index=True)
    entries = models.JSONField()
    signature = models.CharField(max_length=140)
    digest = models.CharField(max_length=66, unique=True, help_text="EIP-712 hash: a feed is accepted once.")
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-timestamp"]

    def __str__(self) -> str:
        return f"feed {self.timestamp:%Y-%m-%d %H:%M:%S} from {self.oracle.name}"


class IntentStatus(models.TextChoices):
    SIGNED = "signed", "Signed"
    RELAYING = "relaying", "Relaying"
    EXECUTED = "executed", "Executed"
    EXPIRED = "expired", "Expired"
    FAILED = "failed", "Failed"


# Signed or relaying: the intent's transactions may still move the vault's funds.
IN_FLIGHT = (IntentStatus.SIGNED, IntentStatus.RELAYING)


class ExecutionIntent(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    vault = models.ForeignKey(Vault, on_delete=models.PROTECT, related_name="intents")
    nonce = models.PositiveBigIntegerField()
    actions = models.JSONField(help_text="[{kind: deposit|withdraw, protocol, address, amount, calldata}]")
    allocation = models.JSONField(help_text="Target allocation in %, by protocol.")
    deadline = models.DateTimeField()
    issuer = models.CharField(max_length=42, help_text="The operator address that signed it.")
    policy = models.ForeignKey(VaultPolicy, on_delete=models.PROTECT, related_name="intents")
    feed = models.ForeignKey(SignedFeed, null=True, blank=True, on_delete=models.PROTECT, related_name="intents")
    proposal_id = models.CharField(max_length=64, blank=True, help_text="Set when Flow B approved it.")
    digest = models.CharField(max_length=66)
    signature = models.CharField(max_length=140)
    # Through a policy module, what is signed and sent is the module's ExecutionIntent (digest
    # and signature above are then its EIP-712 digest and the operator's signature of it).
    module_intent = models.JSONField(
        null=True,
        blank=True,
        help_text="Sent through the vault's policy module as one transaction: {module, nonce, deadline, "
        "policyHash, calls}. Empty: the actions are sent one by one from the vault's account.",
    )
    status = models.CharField(max_length=10, choices=IntentStatus.choices, default=IntentStatus.SIGNED)
    error = models.TextField(blank=True)
    workflow_run = models.ForeignKey(
        "orchestrator.WorkflowRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    executed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["vault", "-nonce"]
        constraints = [models.UniqueConstraint(fields=["vault", "nonce"], name="intent_nonce_unique")]

    def __str__(self) -> str:
        return f"{self.vault.vault_id} intent #{self.nonce} ({self.status})"


class IntentRelay(models.Model):
    """One of an intent's actions handed to the relayer: which transaction carries it, and its
    place among the intent's actions (0 first). The relayer knows nothing of intents; the link
    lives here."""

    intent = models.ForeignKey(ExecutionIntent, on_delete=models.CASCADE, related_name="relays")
    relay = models.OneToOneField("relayer.RelayTransaction", on_delete=models.CASCADE, related_name="intent_link")
    position = models.PositiveSmallIntegerField(help_text="The action's index in the intent's actions.")

    class Meta:
        ordering = ["intent", "position"]
        constraints = [models.UniqueConstraint(fields=["intent", "position"], name="intent_relay_position_unique")]

    def __str__(self) -> str:
        return f"intent {self.intent_id} action {self.position}: relay {self.relay_id}"


class SafeTxPurpose(models.TextChoices):
    REBALANCE = "rebalance", "Rebalance"
    REJECTION = "rejection", "Rejection (does nothing, uses up the nonce)"
    OWNERS = "owners", "Owners and threshold"
    POLICY = "policy", "Policy committed to the module"


class SafeTxStatus(models.TextChoices):
    SIGNING = "signing", "Collecting signatures"
    SENDING = "sending", "Sending"
    EXECUTED = "executed", "Executed"
    FAILED = "failed", "Failed"
    VOID = "void", "Void: its nonce was used by another transaction"


class SafeTransaction(models.Model):
    """A transaction of a vault's Safe, as its owners sign it: the SafeTx fields (`tx`), its
    EIP-712 hash, and what it is for. A rebalance or owner change gets a rejection at the same
    nonce when it is made, so owners can sign either; whichever executes uses up the nonce and
    the other can never execute."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    vault = models.ForeignKey(Vault, on_delete=models.PROTECT, related_name="safe_transactions")
    purpose = models.CharField(max_length=10, choices=SafeTxPurpose.choices)
    nonce = models.PositiveBigIntegerField(help_text="The Safe nonce it executes at.")
    tx = models.JSONField(help_text="The SafeTx fields (vaults.safe.SafeTx.as_json).")
    # Unique among the live ones only: a rejection at a nonce freed by an expired proposal has
    # the same hash as the one voided with it (both do nothing at that nonce).
    safe_tx_hash = models.CharField(max_length=66, db_index=True)
    rejects = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="rejection", help_text="What it rejects."
    )
    proposal_id = models.CharField(max_length=64, blank=True, db_index=True, help_text="The proposal it executes.")
    summary = models.TextField(help_text="What it does, in words.")
    plan = models.JSONField(default=dict, blank=True, help_text="What it was planned from and should leave.")
    status = models.CharField(max_length=10, choices=SafeTxStatus.choices, default=SafeTxStatus.SIGNING)
    relay = models.OneToOneField(
        "relayer.RelayTransaction", null=True, blank=True, on_delete=models.SET_NULL, related_name="safe_tx"
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    executed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["vault", "nonce", "created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["safe_tx_hash"], condition=~Q(status="void"), name="safe_tx_hash_once_while_live"
            )
        ]

    def __str__(self) -> str:
        return f"{self.vault.vault_id} Safe nonce {self.nonce}: {self.get_purpose_display()} ({self.status})"


class SafeSignature(models.Model):
    """An owner's signature of a Safe transaction's hash, checked when it arrived: it recovered
    to `owner`, an owner of the Safe at that time."""

    safe_tx = models.ForeignKey(SafeTransaction, on_delete=models.PROTECT, related_name="signatures")
    owner = models.CharField(max_length=42)
    signature = models.CharField(max_length=132)
    signer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Whose registered wallet the owner is.",
    )
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["safe_tx", "owner"]
        constraints = [models.UniqueConstraint(fields=["safe_tx", "owner"], name="one_signature_per_owner")]

    def __str__(self) -> str:
        return f"{self.owner} signed {self.safe_tx_id}"
