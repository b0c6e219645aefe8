"""Committing a VaultPolicy version to the vault's policy module, and installing the module: Safe
transactions the Safe's owners sign, like an owner change.

Only the Safe can change what its module allows (every setter is `onlySafe`), so activating a
draft of a vault with a module does not activate it: `policy_commit_propose` makes a Safe
transaction of the Safe's calls to the module (commitPolicy with the policy's hash and allowed
pairs, setSpendingLimit), with its rejection at the same nonce. Owners sign either
(`safe_tx_sign`), and at the threshold the `safe.execute` workflow sends it. When it executes,
`policy_commit_settle` makes the draft the active policy and records the hash committed on
chain. `module_install_propose` does the same with enableModule first, and the vault names its
module only once that executed: Flow A never runs through a module the Safe has not enabled.

What is read from the chain (the Safe's owners and nonce, MultiSendCallOnly, the module) is read
before the transaction that records the Safe transaction: no RPC waits inside it
(docs/flow-b.md#committing-a-policy-to-the-module)."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from orchestrator.infra.errors import DomainError
from relayer.rpc import TRANSPORT_ERRORS, as_address, web3_for
from vaults import safe as safe_lib
from vaults.models import PolicyStatus, SafeTransaction, SafeTxPurpose, SafeTxStatus, Vault, VaultPolicy
from vaults.module.contract import ModuleError, enable_module_call, module_enabled, module_state, set_validator_call
from vaults.services.module_policy import policy_commit_calls, policy_hash
from vaults.services.policies import PolicyFrozen, on_policy_commit, policy_activate, policy_commit_open
from vaults.services.safe_accounts import (
    OPEN,
    SafeUnreachable,
    safe_tx_create,
    safe_txs_void_below,
    vault_safe_state,
)

logger = logging.getLogger("approvals")


class PolicyCommitInvalid(DomainError, ValueError):
    """No Safe or no module, a module of another Safe or operator, an install already under way."""

    code = "invalid_policy_commit"
    http_status = 422


def _words(policy: VaultPolicy) -> str:
    """The version, its whitelist and its spending limit, as the owners read them before signing."""
    whitelist = ", ".join(sorted(p.name for p in policy.whitelist.all())) or "nothing"
    if policy.spending_limit is None:
        limit = "no spending limit"
    else:
        limit = (
            f"at most {int(policy.spending_limit)} base units of the asset per "
            f"{policy.spending_period_seconds} s through the module"
        )
    return f"policy v{policy.version}: whitelist {whitelist}; {limit}"


def _plan(policy: VaultPolicy, proposed_by: Any) -> dict[str, Any]:
    return {
        "policy": policy.pk,
        "version": policy.version,
        "policyHash": "0x" + policy_hash(policy).hex(),
        "proposer": proposed_by.get_username() if proposed_by is not None else None,
    }


def _chain_reads(vault: Vault) -> tuple[safe_lib.SafeState, str]:
    """The Safe's state and MultiSendCallOnly, read before any database transaction."""
    state = vault_safe_state(vault)
    try:
        multi_send = safe_lib.safe_contracts(web3_for(vault.chain.rpc_url)).multi_send_call_only
    except TRANSPORT_ERRORS as exc:
        raise SafeUnreachable(f"chain {vault.chain.chain_id} did not answer") from exc
    return state, multi_send


def policy_commit_propose(*, policy: VaultPolicy, proposed_by: Any = None) -> SafeTransaction:
    """The Safe transaction that commits a draft to the vault's module: its hash, its allowed
    pairs and its spending limit. A draft already waiting for the owners gets the transaction
    it has. Raises PolicyFrozen (not a draft), PolicyCommitInvalid, SafeUnreachable."""
    policy = VaultPolicy.objects.select_related("vault__chain").get(pk=policy.pk)
    vault = policy.vault
    if not vault.safe_address or not vault.module_address:
        raise PolicyCommitInvalid(f"{vault.vault_id} has no policy module: activate v{policy.version} directly")
    if policy.status != PolicyStatus.DRAFT:
        raise PolicyFrozen(f"policy v{policy.version} is {policy.status}; only drafts can be activated")
    state, multi_send = _chain_reads(vault)
    with transaction.atomic():
        Vault.objects.select_for_update().get(pk=vault.pk)  # one commit per draft, even from two clicks
        # A commit whose nonce the Safe has used (owners executed another transaction at it
        # elsewhere) can never execute: void, it no longer stands for the draft.
        safe_txs_void_below(vault=vault, nonce=state.nonce)
        existing = policy_commit_open(policy)
        if existing is not None:
            return existing
        row = safe_tx_create(
            vault=vault,
            purpose=SafeTxPurpose.POLICY,
            calls=policy_commit_calls(policy),
            summary=f"Commit {_words(policy)} to the module {vault.module_address}",
            plan=_plan(policy, proposed_by),
            state=state,
            multi_send=multi_send,
        )
    logger.info("%s: policy v%s awaits the owners at Safe nonce %s", vault.vault_id, policy.version, row.nonce)
    return row


@on_policy_commit
def _commit(policy: VaultPolicy, requested_by: Any) -> SafeTransaction:
    return policy_commit_propose(policy=policy, proposed_by=requested_by)


def module_install_propose(
    *, vault: Vault, module_address: str, policy: VaultPolicy, validator: str | None = None, proposed_by: Any = None
) -> SafeTransaction:
    """The Safe transaction that enables `module_address` on the vault's Safe and commits
    `policy` (a draft, or the active policy) to it, and sets its validator if given. The vault
    names the module only when this executes. Raises PolicyCommitInvalid, PolicyFrozen,
    SafeUnreachable."""
    vault = Vault.objects.select_related("chain", "operator").get(pk=vault.pk)
    policy = VaultPolicy.objects.get(pk=policy.pk)
    if not vault.safe_address:
        raise PolicyCommitInvalid(f"{vault.vault_id} is not held by a Safe: a module runs only through one")
    if vault.module_address:
        raise PolicyCommitInvalid(f"{vault.vault_id} has the module {vault.module_address} already")
    if policy.vault_id != vault.pk:
        raise PolicyCommitInvalid(f"policy v{policy.version} is not {vault.vault_id}'s")
    if policy.status == PolicyStatus.RETIRED:
        raise PolicyFrozen(f"policy v{policy.version} is retired: commit the active policy or a draft")
    module = as_address(module_address)
    w3 = web3_for(vault.chain.rpc_url)
    try:
        seen = module_state(w3, module)
        enabled = module_enabled(w3, safe=vault.safe_address, module=module)
    except ModuleError as exc:
        raise PolicyCommitInvalid(str(exc)) from exc
    except TRANSPORT_ERRORS as exc:
        raise SafeUnreachable(f"chain {vault.chain.chain_id} did not answer reading {module}") from exc
    if seen.safe != as_address(vault.safe_address):
        raise PolicyCommitInvalid(f"the module {module} serves the Safe {seen.safe}, not {vault.safe_address}")
    if seen.operator != as_address(vault.operator.address):
        raise PolicyCommitInvalid(
            f"the module's operator is {seen.operator}, not the vault's operator key {vault.operator.address}"
        )
    if enabled:
        raise PolicyCommitInvalid(f"the Safe has {module} enabled already: only its owners' record is missing")
    state, multi_send = _chain_reads(vault)
    calls = [enable_module_call(safe=vault.safe_address, module=module), *policy_commit_calls(policy, module=module)]
    if validator:
        calls.append(set_validator_call(module=module, validator=validator))
    with transaction.atomic():
        Vault.objects.select_for_update().get(pk=vault.pk)
        if SafeTransaction.objects.filter(
            vault=vault, purpose=SafeTxPurpose.POLICY, status__in=OPEN, plan__install=True
        ).exists():
            raise PolicyCommitInvalid(f"an installation of a module on {vault.vault_id} awaits the owners already")
        row = safe_tx_create(
            vault=vault,
            purpose=SafeTxPurpose.POLICY,
            calls=calls,
            summary=f"Install the policy module {module} and commit {_words(policy)}"
            + (f"; validator {as_address(validator)}" if validator else ""),
            plan={
                **_plan(policy, proposed_by),
                "install": True,
                "module": module,
                "validator": as_address(validator) if validator else None,
            },
            state=state,
            multi_send=multi_send,
        )
    logger.info("%s: installing module %s awaits the owners at Safe nonce %s", vault.vault_id, module, row.nonce)
    return row


def policy_commit_settle(row: SafeTransaction) -> str:
    """What an executed policy transaction leaves in the database, once: the module named by the
    vault (an installation), the draft active, the committed hash recorded. A second call does
    nothing. Database only: the Safe logged ExecutionSuccess (safe_tx_settle). Returns what it
    did, in words."""
    with transaction.atomic():
        vault = Vault.objects.select_for_update().get(pk=row.vault_id)
        locked = SafeTransaction.objects.select_for_update().get(pk=row.pk)
        if locked.purpose != SafeTxPurpose.POLICY or locked.status != SafeTxStatus.EXECUTED:
            return f"nothing: Safe nonce {locked.nonce} is {locked.status}"
        plan = locked.plan
        if plan.get("install") and vault.module_address != plan["module"]:
            # Automated rebalances may now run, through the module and within the committed policy.
            Vault.objects.filter(pk=vault.pk).update(module_address=plan["module"], auto_rebalance=True)
        policy = VaultPolicy.objects.select_for_update().filter(pk=plan.get("policy")).first()
        if policy is None:
            return _note(locked, "its policy no longer exists")
        if policy.committed_hash == plan["policyHash"]:
            return f"v{policy.version} was settled before"
        if "0x" + policy_hash(policy).hex() != plan["policyHash"]:
            # A draft edited after the owners signed: the module holds what they signed.
            return _note(
                locked,
                f"v{policy.version} changed after this was proposed, so it stays a {policy.status}: the module "
                f"holds the hash signed ({plan['policyHash']}); make a new version and activate it",
            )
        if policy.status == PolicyStatus.RETIRED:
            return _note(
                locked,
                f"v{policy.version} was retired before this executed: the module holds its hash, not the active "
                "policy's; activate a new version",
            )
        if policy.status == PolicyStatus.DRAFT:
            policy_activate(policy=policy)
        VaultPolicy.objects.filter(pk=policy.pk).update(committed_hash=plan["policyHash"])
    logger.info("%s: policy v%s committed at Safe nonce %s", vault.vault_id, policy.version, locked.nonce)
    return f"v{policy.version} is active and committed"


def _note(row: SafeTransaction, why: str) -> str:
    SafeTransaction.objects.filter(pk=row.pk).update(error=f"executed, but {why}"[:2000])
    return why


def policy_commit_closed(row: SafeTransaction) -> None:
    """A policy transaction that failed, or that the owners' executed rejection voided, says
    that its draft stays a draft (on the row, after why it closed)."""
    target = row.rejects_id if row.purpose == SafeTxPurpose.REJECTION else row.pk
    if target is None:
        return
    row = SafeTransaction.objects.get(pk=target)  # as settled just now
    if row.purpose != SafeTxPurpose.POLICY or row.status not in (SafeTxStatus.FAILED, SafeTxStatus.VOID):
        return
    version = row.plan.get("version")
    what = f"v{version} is unchanged" if row.plan.get("install") else f"v{version} stays a draft"
    if row.plan.get("install"):
        what = f"the module is not installed and {what}"
    if what not in row.error:
        SafeTransaction.objects.filter(pk=row.pk).update(error=f"{row.error}; {what}"[:2000])
