"""Changing a Safe vault's approvers or quorum: a Safe transaction the current owners sign, like
a proposal's.

The Safe's owners are the approvers' wallets and its threshold the quorum, so neither changes in
the database: `owner_change_propose` makes a Safe transaction of the Safe's calls to itself
(add, remove, change threshold, in one transaction) with its rejection at the same nonce;
owners sign either with `safe_tx_sign`, and at the threshold the `safe.execute` workflow sends
it. Once it executes, `vault_approvers_sync` reads the owners back into the vault's approvers."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from approvals.errors import AlreadyDecided, ProposalInvalid
from approvals.policy_commits import policy_commit_closed
from approvals.safe_proposals import NotYourWallet, safe_execution_start
from approvals.wallets import users_by_wallet, wallet_of
from orchestrator.infra.errors import Conflict
from vaults import safe as safe_lib
from vaults.models import SafeTransaction, SafeTxPurpose, SafeTxStatus, Vault
from vaults.services.safe_accounts import (
    SafeTxVoid,
    safe_signature_add,
    safe_tx_create,
    signature_owner,
    signatures_counting,
    vault_safe_state,
)

logger = logging.getLogger("approvals")


class SafeTxClosed(Conflict):
    """The Safe transaction is no longer collecting signatures."""

    code = "safe_tx_closed"


def owner_change_propose(
    *, vault: Vault, approvers: list[Any], threshold: int, proposer: Any = None
) -> SafeTransaction:
    """A Safe transaction that makes `approvers`' registered wallets the Safe's owners and
    `threshold` its threshold. Raises ProposalInvalid (no Safe, a wallet missing, a threshold out
    of range, nothing to change)."""
    if not vault.safe_address:
        raise ProposalInvalid(f"{vault.vault_id} is not held by a Safe: edit its approvers in the vault's page")
    missing = [u.get_username() for u in approvers if wallet_of(u) is None]
    if missing:
        raise ProposalInvalid(f"{', '.join(missing)} registered no wallet: each approver registers one first")
    if not 1 <= threshold <= len(approvers):
        raise ProposalInvalid(f"the quorum {threshold} must be between 1 and {len(approvers)} (the approvers)")
    wanted = [str(wallet_of(u)) for u in approvers]
    state = vault_safe_state(vault)
    if sorted(wanted) == sorted(state.owners) and threshold == state.threshold:
        raise ProposalInvalid("the Safe has these owners and this threshold already")
    names = sorted(u.get_username() for u in approvers)
    return safe_tx_create(
        vault=vault,
        purpose=SafeTxPurpose.OWNERS,
        calls=safe_lib.owner_change_calls(
            safe=vault.safe_address, owners_now=list(map(str, state.owners)), owners_wanted=wanted, threshold=threshold
        ),
        summary=f"approvers {', '.join(names)}, quorum {threshold} of {len(names)}",
        plan={
            "owners": wanted,
            "approvers": names,
            "threshold": threshold,
            "proposer": proposer.get_username() if proposer is not None else None,
        },
    )


def safe_tx_sign(
    *, row: SafeTransaction, signature: str, submitted_by: Any = None, from_wallet_of: Any = None
) -> SafeTransaction:
    """An owner's signature of a Safe transaction that is not a proposal's (an owner change or
    its rejection), under the row's lock; at the threshold the transaction is sent. Raises the
    Safe checks' errors, NotYourWallet, AlreadyDecided, SafeTxClosed."""
    state = vault_safe_state(row.vault)  # before the row lock: no RPC waits inside the transaction
    try:
        with transaction.atomic():
            locked = SafeTransaction.objects.select_for_update().select_related("vault__chain").get(pk=row.pk)
            if locked.proposal_id:
                raise SafeTxClosed(f"sign {locked.proposal_id} from its proposal")
            if locked.status != SafeTxStatus.SIGNING:
                raise SafeTxClosed(f"Safe nonce {locked.nonce} is {locked.get_status_display().lower()}")
            owner = signature_owner(locked, signature)
            signer = users_by_wallet([owner]).get(owner)
            if from_wallet_of is not None and (signer is None or signer.pk != from_wallet_of.pk):
                raise NotYourWallet(f"this signature is from {owner}, not from your registered wallet")
            other = _other_side(locked)
            if other is not None and other.signatures.filter(owner=owner).exists():
                raise AlreadyDecided(f"{owner} already signed the other side of Safe nonce {locked.nonce}")
            safe_signature_add(row=locked, signature=signature, state=state, submitted_by=submitted_by, signer=signer)
            if len(signatures_counting(locked, state)) >= state.threshold:
                safe_execution_start(row=locked, started_by=submitted_by)
    except SafeTxVoid as exc:
        # Marked void after the refusal rolled the transaction back (inside it, the mark would
        # be rolled back with it), and only if it still collects signatures.
        SafeTransaction.objects.filter(pk=row.pk, status=SafeTxStatus.SIGNING).update(
            status=SafeTxStatus.VOID, error=exc.message[:2000]
        )
        policy_commit_closed(row)
        raise
    logger.info("%s signs Safe nonce %s of %s (%s)", owner, locked.nonce, locked.vault.vault_id, locked.purpose)
    return locked


def _other_side(row: SafeTransaction) -> SafeTransaction | None:
    if row.rejects_id is not None:
        return SafeTransaction.objects.get(pk=row.rejects_id)
    return SafeTransaction.objects.filter(rejects=row).first()


def vault_approvers_sync(vault: Vault) -> list[str]:
    """The vault's approvers and quorum, read back from its Safe: the users whose registered
    wallets own it, and its threshold. Returns their usernames."""
    state = vault_safe_state(vault)
    users = list(users_by_wallet(state.owners).values())
    vault.approvers.set(users)
    Vault.objects.filter(pk=vault.pk).update(approval_quorum=state.threshold)
    return sorted(u.get_username() for u in users)
