"""What a VaultPolicy version means to the vault's policy module: the hash it commits, the
(target, selector, argument rule) pairs it allows, the spending limit, and the Safe's calls
that commit them (owners sign them as a Safe transaction, like any other of the Safe's).

The pairs follow from the whitelist: for each whitelisted protocol on the vault's chain,
deposit(assets, receiver) with the receiver bound to the Safe; for every protocol of the chain
(whitelisted or not, so funds can leave one a new version drops), withdraw(assets, receiver,
owner) with both bound to the Safe; and approve(spender, amount) on the vault's asset with the
spender bound to one of the policy's targets (a protocol vault pulls an allowance only when the
Safe itself deposits). Without the argument rules, allowing
"deposit on protocol X" would allow depositing for anybody, and "approve on the asset"
approving anybody: the operator key could then move the funds out.

The hash is keccak256 of the policy's canonical JSON (sorted keys, no spaces): what the
operator's and the validator's signatures are bound to on chain."""

from __future__ import annotations

import json
from typing import Any

from eth_utils import keccak

from relayer.rpc import as_address
from vaults import onchain
from vaults.models import Protocol, VaultPolicy
from vaults.module import AllowedCall, commit_policy_call, set_spending_limit_call
from vaults.safe import Call
from vaults.services.compliance import PolicyRules


def policy_document(policy: VaultPolicy) -> dict[str, Any]:
    """The policy as its hash covers it: the vault, the chain, the version, every rule, the
    whitelisted protocols' addresses on this chain and the spending limit."""
    vault = policy.vault
    protocols = sorted(as_address(p.address) for p in policy.whitelist.all() if p.chain_id == vault.chain_id)
    exits = sorted(as_address(p.address) for p in Protocol.objects.filter(chain_id=vault.chain_id))
    return {
        "vault": vault.vault_id,
        "chainId": vault.chain.chain_id,
        "version": policy.version,
        "asset": as_address(vault.asset_address),
        "rules": PolicyRules.of(policy).as_json(),
        "approvalThreshold": str(policy.approval_threshold),
        "intentTtlSeconds": policy.intent_ttl_seconds,
        "protocols": protocols,
        "exits": exits,
        "spendingLimit": None if policy.spending_limit is None else str(int(policy.spending_limit)),
        "spendingPeriodSeconds": policy.spending_period_seconds,
    }


def policy_hash(policy: VaultPolicy) -> bytes:
    """keccak256 of the policy's canonical JSON: 32 bytes."""
    canonical = json.dumps(policy_document(policy), sort_keys=True, separators=(",", ":"))
    return keccak(canonical.encode())


def policy_allowed_calls(policy: VaultPolicy) -> list[AllowedCall]:
    """The pairs (and argument rules) the policy allows through the module, in a fixed order."""
    vault = policy.vault
    allowed = [AllowedCall(to=vault.asset_address, selector=onchain.APPROVE, target_words=(0,))]
    document = policy_document(policy)
    for address in document["protocols"]:
        allowed.append(AllowedCall(to=address, selector=onchain.DEPOSIT, safe_words=(1,)))
    # Withdrawing back to the Safe is allowed from every protocol of the chain, whitelisted or
    # not: a version that drops a protocol must still let the rebalance leave it.
    for address in document["exits"]:
        allowed.append(AllowedCall(to=address, selector=onchain.WITHDRAW, safe_words=(1, 2)))
    return allowed


def policy_commit_calls(policy: VaultPolicy, *, module: str | None = None) -> list[Call]:
    """The Safe's calls that commit `policy` to the vault's module: commitPolicy, and the
    spending limit on the vault's asset (set, or removed when the policy has none). `module`:
    a module being installed, which the vault does not name until its installation executes."""
    vault = policy.vault
    module = module or vault.module_address
    if not module:
        raise ValueError(f"{vault.vault_id} has no policy module")
    limit = policy.spending_limit
    return [
        commit_policy_call(module=module, policy_hash=policy_hash(policy), allowed=policy_allowed_calls(policy)),
        set_spending_limit_call(
            module=module,
            token=vault.asset_address,
            amount=0 if limit is None else int(limit),
            period_seconds=0 if limit is None else policy.spending_period_seconds,
        ),
    ]
