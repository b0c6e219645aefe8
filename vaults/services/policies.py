"""Vault policies: drafts are edited, activation freezes them, one is active per vault.

On a vault with a policy module the policy is also on chain, and only the Safe's owners change
it there: `policy_activation_request` then hands the draft to the registered committer (a Safe
transaction the owners sign, approvals/policy_commits.py), and the draft becomes active when
that transaction executes (docs/flow-b.md#committing-a-policy-to-the-module)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from orchestrator.infra.errors import Conflict, DomainError
from vaults.models import POLICY_RULES, PolicyStatus, SafeTransaction, SafeTxPurpose, Vault, VaultPolicy
from vaults.services.safe_accounts import OPEN

COMPARED = POLICY_RULES


class PolicyFrozen(DomainError):
    """An active or retired policy cannot change; make a new version instead."""

    code = "policy_frozen"
    http_status = 409


class PolicyCommitUnavailable(Conflict):
    """The vault has a policy module, and no app commits policies to modules."""

    code = "policy_commit_unavailable"


@dataclass(frozen=True)
class PolicySnapshot:
    """The values of one policy version that a rebalance decision rests on: the row it points
    at, the version the intent signs, the value above which approvers decide and the intent's
    time to live. Versions are immutable once active, so a snapshot taken once (Flow A journals
    it in verify) stands for the row without reading it again."""

    pk: int
    vault_id: int
    version: int
    approval_threshold: Decimal
    intent_ttl_seconds: int

    @classmethod
    def of(cls, policy: VaultPolicy) -> PolicySnapshot:
        return cls(
            pk=policy.pk,
            vault_id=policy.vault_id,
            version=policy.version,
            approval_threshold=policy.approval_threshold,
            intent_ttl_seconds=policy.intent_ttl_seconds,
        )


def policy_activate(*, policy: VaultPolicy) -> VaultPolicy:
    """Makes a draft the vault's active policy and retires the one before it, atomically (the
    database allows one active policy per vault). Raises PolicyFrozen unless it is a draft."""
    with transaction.atomic():
        Vault.objects.select_for_update().get(pk=policy.vault_id)  # serializes activations per vault
        locked = VaultPolicy.objects.select_for_update().get(pk=policy.pk)
        if locked.status != PolicyStatus.DRAFT:
            raise PolicyFrozen(f"policy v{locked.version} is {locked.status}; only drafts can be activated")
        VaultPolicy.objects.filter(vault_id=locked.vault_id, status=PolicyStatus.ACTIVE).update(
            status=PolicyStatus.RETIRED
        )
        locked.status = PolicyStatus.ACTIVE
        locked.activated_at = timezone.now()
        locked.save(update_fields=["status", "activated_at"])
    return locked


# Who commits a draft to a vault's module (with who asked): registered by the app that runs the
# Safe's transactions (approvals), so vaults names nothing of approvals.
PolicyCommitter = Callable[[VaultPolicy, Any], SafeTransaction]
_committer: PolicyCommitter | None = None


def on_policy_commit(committer: PolicyCommitter) -> PolicyCommitter:
    """Registers who turns the activation of a module vault's draft into a Safe transaction
    (a decorator; the last one wins)."""
    global _committer
    _committer = committer
    return committer


def policy_activation_request(*, policy: VaultPolicy, requested_by: Any = None) -> VaultPolicy | SafeTransaction:
    """Activating a draft, wherever it is asked for. Without a policy module: active now (the
    policy returned). With one: the Safe transaction that commits it to the module, which the
    Safe's owners sign; the draft stays a draft until it executes. Raises PolicyFrozen, and
    the committer's refusals."""
    vault = Vault.objects.get(pk=policy.vault_id)
    if not vault.module_address:
        return policy_activate(policy=policy)
    if _committer is None:
        raise PolicyCommitUnavailable(f"{vault.vault_id} has a policy module, and nothing here commits policies to it")
    return _committer(policy, requested_by)


def policy_commit_open(policy: VaultPolicy) -> SafeTransaction | None:
    """The Safe transaction still collecting signatures (or being sent) that commits `policy` to
    the vault's module: while there is one, the draft is what the owners sign and cannot change."""
    return (
        SafeTransaction.objects.filter(
            vault_id=policy.vault_id, purpose=SafeTxPurpose.POLICY, status__in=OPEN, plan__policy=policy.pk
        )
        .order_by("nonce")
        .first()
    )


def policy_draft(*, vault: Vault, based_on: VaultPolicy | None = None, **values: Any) -> VaultPolicy:
    """A new draft version: a copy of `based_on` (or the active policy) with `values` applied.
    `whitelist` and `oracles` take iterables of Protocol / OracleKey."""
    base = based_on or vault.policies.filter(status=PolicyStatus.ACTIVE).first()
    whitelist = values.pop("whitelist", None)
    oracles = values.pop("oracles", None)
    with transaction.atomic():
        Vault.objects.select_for_update().get(pk=vault.pk)
        version = (vault.policies.aggregate(m=Max("version"))["m"] or 0) + 1
        fields = {f: getattr(base, f) for f in COMPARED} if base else {}
        fields.update(values)
        draft = VaultPolicy.objects.create(vault=vault, version=version, status=PolicyStatus.DRAFT, **fields)
        draft.whitelist.set(whitelist if whitelist is not None else (base.whitelist.all() if base else []))
        draft.oracles.set(oracles if oracles is not None else (base.oracles.all() if base else []))
    return draft


def policy_diff(*, old: VaultPolicy | None, new: VaultPolicy) -> list[tuple[str, str, str]]:
    """(field, before, after) for each setting that differs between two versions."""
    if old is None:
        return [(f, "", str(getattr(new, f))) for f in COMPARED]
    changes = [(f, str(getattr(old, f)), str(getattr(new, f))) for f in COMPARED if getattr(old, f) != getattr(new, f)]
    for name, manager in (("whitelist", "whitelist"), ("oracles", "oracles")):
        before = sorted(str(x) for x in getattr(old, manager).all())
        after = sorted(str(x) for x in getattr(new, manager).all())
        if before != after:
            changes.append((name, ", ".join(before), ", ".join(after)))
    return changes
