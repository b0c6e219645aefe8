"""Vault policies: drafts are edited, activation freezes them, one is active per vault."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from orchestrator.infra.errors import DomainError
from vaults.models import POLICY_RULES, PolicyStatus, Vault, VaultPolicy

COMPARED = POLICY_RULES


class PolicyFrozen(DomainError):
    """An active or retired policy cannot change; make a new version instead."""

    code = "policy_frozen"
    http_status = 409


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
