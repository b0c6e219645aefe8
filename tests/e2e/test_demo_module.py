"""The demo's vault with a policy module (orchestrator/devtools/demo/module.py) on a real anvil
with real workers, as `up` makes it: two approvers' development wallets sign the module's
installation, the workers execute it, and the next feed's rebalance runs as one executeIntent
through the module; a rerun installs nothing twice."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from eth_account import Account
from web3 import Web3

from approvals.wallets import dev_wallet_enable
from orchestrator.devtools.demo.module import MODULE_VAULT_ID, demo_module_setup
from orchestrator.devtools.demo.vaults import DEMO_ORACLE_NAME
from relayer.models import RelayTransaction
from tests.conftest import AnvilFactory, Workers, wait_until
from tests.e2e.test_demo_safe import approvers
from tests.support.flows import ENTRIES, signed_feed
from tests.support.relays import RELAY_ENV, make_chain
from vaults import module as vpm
from vaults.models import ExecutionIntent, IntentStatus, OracleKey, SafeTransaction, Vault
from vaults.services.bootstrap import chain_bootstrap
from vaults.services.feeds import feed_accept
from vaults.services.module_policy import policy_hash

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.flow]


def test_the_demo_module_vault_rebalances_through_its_module(anvils: AnvilFactory, workers: Workers) -> None:
    chain = make_chain(anvils.start(), poll_interval=0.1)
    template = chain_bootstrap(chain=chain, vault_id="vault-eth-001", say=lambda _: None)
    oracle = Account.create()
    OracleKey.objects.create(address=oracle.address, name=DEMO_ORACLE_NAME)
    admin = get_user_model().objects.create_superuser("admin", password="x")
    users = approvers()
    for user in users:
        dev_wallet_enable(user=user, chain=chain)
    workers.start(extra_env={**RELAY_ENV, "FLOW_SETTLE_POLL_SECONDS": "1"})

    demo = demo_module_setup(template=template, approvers=users, proposer=admin, oracle_name=DEMO_ORACLE_NAME)
    assert demo.vault.vault_id == MODULE_VAULT_ID and demo.state.startswith("installation at Safe nonce 0")

    vault = wait_until(
        lambda: Vault.objects.filter(vault_id=MODULE_VAULT_ID).exclude(module_address="").first(),
        timeout=60,
        message="the owners' installation of the module to execute",
    )
    assert vault.module_address == demo.module and vault.auto_rebalance
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    assert vpm.module_enabled(w3, safe=vault.safe_address, module=vault.module_address)
    policy = vault.policies.get(status="active")
    assert policy.committed_hash == "0x" + policy_hash(policy).hex()
    assert vpm.module_state(w3, vault.module_address).policy_hash == policy_hash(policy)

    feed_accept(payload=signed_feed(oracle, ENTRIES))
    intent = wait_until(
        lambda: ExecutionIntent.objects.filter(vault=vault, status=IntentStatus.EXECUTED).first(),
        timeout=60,
        message="the automated rebalance through the module",
    )
    assert intent.module_intent is not None
    (sent,) = RelayTransaction.objects.filter(signer=vault.account, to=vault.module_address)
    assert sent.phase == "completed"

    rows = SafeTransaction.objects.filter(vault=vault).count()
    again = demo_module_setup(template=template, approvers=users, proposer=admin, oracle_name=DEMO_ORACLE_NAME)
    assert (again.vault.pk, again.module, again.state) == (vault.pk, vault.module_address, "installed")
    assert SafeTransaction.objects.filter(vault=vault).count() == rows
