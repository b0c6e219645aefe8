"""Vaults held by a Safe with the policy module installed, for `bench flow-a`: Flow A's latency
through the module (its positions step reads the module too, its decide checks the calls and
signs the module's intent) measured beside the account vaults'.

The Safe's owners are fresh keys the bench holds; they sign the installation (enableModule and
the policy's commit) as one Safe transaction sent from an unlocked anvil account, the shortcut a
development chain allows. In production the owners sign it in the admin."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from web3 import Web3

from relayer.models import Chain
from relayer.rpc import as_address
from vaults import module as vpm
from vaults import safe as safe_lib
from vaults.models import OracleKey, Protocol, Vault, VaultPolicy
from vaults.services.bootstrap import chain_bootstrap
from vaults.services.module_policy import policy_commit_calls, policy_hash
from vaults.services.policies import policy_activate, policy_draft

THRESHOLD = 2


def owners_execute(w3: Web3, safe: str, owners: list[LocalAccount], calls: list[safe_lib.Call]) -> Any:
    """`calls` as one Safe transaction of `safe`, signed by `owners` (their keys, held here) and
    sent from an unlocked node account: the owners' shortcut a development chain allows, for
    benchmarks and tests. Returns the receipt; raises RuntimeError unless the Safe reported
    ExecutionSuccess."""
    tx = safe_lib.multisend_tx(
        safe=safe,
        chain_id=w3.eth.chain_id,
        multi_send=safe_lib.safe_contracts(w3).multi_send_call_only,
        calls=calls,
        nonce=safe_lib.safe_state(w3, safe).nonce,
    )
    typed = tx.typed_data()
    signatures: dict[str, str] = {
        o.address: "0x" + bytes(Account.sign_typed_data(o.key, full_message=typed).signature).hex() for o in owners
    }
    data = safe_lib.exec_transaction_calldata(tx, signatures)
    sent = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": as_address(safe), "data": HexStr(data)})
    receipt = w3.eth.wait_for_transaction_receipt(sent, timeout=30)
    if not safe_lib.safe_execution_succeeded(receipt, safe=safe, safe_tx_hash=tx.hash()):
        raise RuntimeError(f"the Safe transaction of {safe} at nonce {tx.nonce} did not succeed")
    return receipt


def bench_policy(vault: Vault, *, oracle: LocalAccount, name: str, protocols: list[str]) -> VaultPolicy:
    """The active policy `bench flow-a` gives each of its vaults: every feed of `oracle` leads to
    an intent (no interval, no approval), so the latency measured is Flow A's own."""
    key = OracleKey.objects.create(address=oracle.address, name=name)
    draft = policy_draft(
        vault=vault,
        max_exposure_pct=Decimal(50),
        max_risk_score=5,
        min_interval_seconds=0,
        max_feed_age_seconds=300,
        max_turnover_pct=Decimal(100),
        approval_threshold=10**30,
        whitelist=Protocol.objects.filter(chain_id=vault.chain_id, name__in=protocols),
        oracles=[key],
    )
    return policy_activate(policy=draft)


def module_vaults(
    chain: Chain, *, count: int, run: str, protocols: list[str], out: Callable[[str], Any]
) -> list[tuple[Vault, LocalAccount]]:
    """`count` Safe vaults with their module installed and their policy committed, each with
    its own oracle, as `bench flow-a` makes its account vaults."""
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    made = []
    for i in range(count):
        owners = [Account.create() for _ in range(3)]
        vault = chain_bootstrap(
            chain=chain,
            vault_id=f"bench-{run}-module-{i:03d}",
            protocols=protocols,
            assets=10**12,
            say=lambda _: None,
            safe_owners=tuple(o.address for o in owners),
            safe_threshold=THRESHOLD,
        )
        oracle = Account.create()
        policy = bench_policy(vault, oracle=oracle, name=f"bench oracle {run}-module-{i}", protocols=protocols)
        module = vpm.module_deploy_dev(
            w3, deployer=w3.eth.accounts[0], safe=vault.safe_address, operator=vault.operator.address
        )
        calls = [
            vpm.enable_module_call(safe=vault.safe_address, module=module),
            *policy_commit_calls(policy, module=module),
        ]
        owners_execute(w3, vault.safe_address, owners[:THRESHOLD], calls)
        Vault.objects.filter(pk=vault.pk).update(module_address=module, auto_rebalance=True)
        VaultPolicy.objects.filter(pk=policy.pk).update(committed_hash="0x" + policy_hash(policy).hex())
        vault.refresh_from_db()
        made.append((vault, oracle))
        if (i + 1) % 5 == 0:
            out(f"  {i + 1}/{count} module vaults installed")
    return made
