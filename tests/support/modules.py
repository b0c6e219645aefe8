"""A Safe vault with its VaultPolicyModule installed, for tests of Flow A through the module: the
module deployed for the vault's Safe with the vault's operator key, and the owners' wallets
signing one Safe transaction that enables it and commits the vault's active policy."""

from __future__ import annotations

from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from orchestrator.devtools.benchmarks.module_vaults import owners_execute as dev_owners_execute
from relayer.models import Chain
from relayer.rpc import web3_for
from tests.support.safes import SafeSetup, safe_vault
from vaults import module as vpm
from vaults import safe as safe_lib
from vaults.models import Vault, VaultPolicy
from vaults.services.module_policy import policy_commit_calls, policy_hash


def owners_execute(w3: Web3, vault: Vault, wallets: list[LocalAccount], calls: list[safe_lib.Call]) -> Any:
    """`calls` as one Safe transaction of the vault's Safe, signed by `wallets` and sent from an
    unlocked node account, bypassing the orchestrator (a test's shortcut for the owners)."""
    return dev_owners_execute(w3, vault.safe_address, wallets, calls)


def policy_commit_direct(setup: SafeSetup, policy: VaultPolicy) -> None:
    """Commits `policy` to the vault's module by the owners' Safe transaction, and records it."""
    w3 = web3_for(setup.vault.chain.rpc_url)
    owners_execute(w3, setup.vault, list(setup.wallets.values())[:2], policy_commit_calls(policy))
    VaultPolicy.objects.filter(pk=policy.pk).update(committed_hash="0x" + policy_hash(policy).hex())


def module_vault(chain: Chain, *, approval_threshold: int = 10**30, **options: Any) -> SafeSetup:
    """safe_vault(chain, **options) with a module deployed, enabled and holding the active
    policy; Flow A on (auto_rebalance), and approval needed only above `approval_threshold`
    (set on the policy before it is committed). The module's operator is the vault's operator key."""
    setup = safe_vault(chain, **options)
    VaultPolicy.objects.filter(pk=setup.policy.pk).update(approval_threshold=approval_threshold)
    vault = setup.vault
    w3 = web3_for(chain.rpc_url)
    module = vpm.module_deploy_dev(
        w3, deployer=w3.eth.accounts[0], safe=vault.safe_address, operator=vault.operator.address
    )
    Vault.objects.filter(pk=vault.pk).update(module_address=module, auto_rebalance=True)
    vault.refresh_from_db()
    setup.policy.refresh_from_db()
    calls = [vpm.enable_module_call(safe=vault.safe_address, module=module), *policy_commit_calls(setup.policy)]
    owners_execute(w3, vault, list(setup.wallets.values())[:2], calls)
    VaultPolicy.objects.filter(pk=setup.policy.pk).update(committed_hash="0x" + policy_hash(setup.policy).hex())
    setup.policy.refresh_from_db()
    assert vpm.module_state(w3, module).policy_hash == policy_hash(setup.policy)
    return setup
