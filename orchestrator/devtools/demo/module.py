"""The demo's third vault: held by a Safe owned by the demo approvers' development wallets, with
the policy module enabled, so Flow A runs its automated rebalances through the module: one
executeIntent per rebalance, signed by the operator key, sent by a key that only pays gas,
checked on chain against the policy the owners committed.

Installing the module is a Safe transaction like any other of the owners': here two of the
demo approvers sign it with their development wallets (as they could in the admin), and the
workers execute it as soon as they start. The vault runs Flow A once it has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from approvals.policy_commits import module_install_propose
from approvals.safe_owners import safe_tx_sign
from approvals.safe_proposals import signing_payload
from approvals.wallets import dev_wallet_key, wallet_of
from orchestrator.devtools.demo.vaults import demo_policy
from relayer.keys import key_manager
from relayer.rpc import web3_for
from vaults import module as vpm
from vaults.models import OracleKey, SafeTransaction, SafeTxPurpose, SafeTxStatus, Vault
from vaults.services.bootstrap import chain_bootstrap

MODULE_VAULT_ID = "vault-eth-003"
THRESHOLD = 2


@dataclass(frozen=True)
class DemoModule:
    vault: Vault
    module: str  # the module's address (enabled, or being installed)
    state: str  # "installed", or what its installation waits for


def _install_row(vault: Vault) -> SafeTransaction | None:
    return (
        SafeTransaction.objects.filter(
            vault=vault,
            purpose=SafeTxPurpose.POLICY,
            plan__install=True,
            status__in=(SafeTxStatus.SIGNING, SafeTxStatus.SENDING),
        )
        .order_by("-created_at")
        .first()
    )


def _dev_sign(row: SafeTransaction, user: Any) -> None:
    """What the admin's "sign with my development wallet" does, for `user`."""
    key = dev_wallet_key(user)
    owner = wallet_of(user)
    if key is None or owner is None or row.signatures.filter(owner=owner).exists():
        return
    typed = signing_payload(row)["typedData"]
    types = {k: v for k, v in typed["types"].items() if k != "EIP712Domain"}
    signature = key_manager().sign_typed_data(key=key, domain=typed["domain"], types=types, message=typed["message"])
    safe_tx_sign(row=row, signature=signature, submitted_by=user, from_wallet_of=user)


def demo_module_setup(*, template: Vault, approvers: list[Any], proposer: Any, oracle_name: str) -> DemoModule:
    """Creates the vault (reused on a rerun) and its policy, deploys its module and has two
    approvers sign its installation, unless it is installed or being installed. The approvers
    have development wallets already (demo_safe_setup gives them)."""
    chain = template.chain
    owners = tuple(wallet_of(user) or "" for user in approvers)
    vault = chain_bootstrap(
        chain=chain, vault_id=MODULE_VAULT_ID, safe_owners=owners, safe_threshold=THRESHOLD, say=lambda _: None
    )
    # Automated: the module's committed policy is the guard. No module yet: active at once,
    # committed to the module by its installation.
    policy = demo_policy(vault, oracles=list(OracleKey.objects.filter(name=oracle_name)), approval_threshold=10**30)
    if vault.module_address:
        return DemoModule(vault, vault.module_address, "installed")
    row = _install_row(vault)
    if row is None:
        w3 = web3_for(chain.rpc_url)
        module = vpm.module_deploy_dev(
            w3, deployer=w3.eth.accounts[0], safe=vault.safe_address, operator=vault.operator.address
        )
        row = module_install_propose(vault=vault, module_address=module, policy=policy, proposed_by=proposer)
    for user in approvers[:THRESHOLD]:
        _dev_sign(row, user)
    row.refresh_from_db()
    return DemoModule(
        vault, row.plan["module"], f"installation at Safe nonce {row.nonce} {row.get_status_display().lower()}"
    )
