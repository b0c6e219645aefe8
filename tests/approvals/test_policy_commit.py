"""Activating a policy version on a vault with a policy module: a Safe transaction the owners
sign, which commits the policy's hash, allowed pairs and spending limit to the module; the draft
becomes active only when it executes. Installing the module the same way. On anvil with the
real Safe and module, real workers, signatures as wallets make them."""

from __future__ import annotations

import io
import time
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from eth_account import Account
from web3 import Web3

from approvals.policy_commits import policy_commit_propose, policy_commit_settle
from approvals.safe_owners import safe_tx_sign
from orchestrator.engine.models import WorkflowRun
from relayer.models import Chain
from tests.conftest import AnvilFactory, Workers, wait_until
from tests.support.modules import module_vault, owners_execute
from tests.support.relays import RELAY_ENV, make_chain
from tests.support.safes import SafeSetup, safe_vault, sign_safe_tx
from vaults import onchain
from vaults import safe as safe_lib
from vaults.models import PolicyStatus, Protocol, SafeTransaction, SafeTxPurpose, SafeTxStatus, Vault, VaultPolicy
from vaults.module.contract import module_enabled, module_limit, module_state
from vaults.services.module_policy import policy_allowed_calls, policy_commit_calls, policy_hash
from vaults.services.policies import policy_activation_request, policy_draft
from vaults.services.safe_accounts import SafeTxVoid

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.flow]

ENV = {**RELAY_ENV, "FLOW_SETTLE_POLL_SECONDS": "1"}
LIMIT = 5 * 10**11


@pytest.fixture
def chain(anvils: AnvilFactory) -> Chain:
    return make_chain(anvils.start(), poll_interval=0.1)


def w3_of(vault: Vault) -> Web3:
    return Web3(Web3.HTTPProvider(vault.chain.rpc_url))


def admin_browser() -> Client:
    browser = Client()
    browser.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "-"))
    return browser


def draft_v2(setup: SafeSetup) -> VaultPolicy:
    """A stricter version: two of the three protocols, a spending limit per hour."""
    return policy_draft(
        vault=setup.vault,
        whitelist=Protocol.objects.filter(chain=setup.vault.chain, name__in=["Aave USDC", "Morpho USDC"]),
        spending_limit=Decimal(LIMIT),
        spending_period_seconds=3600,
    )


def executed(row: SafeTransaction) -> None:
    wait_until(
        lambda: SafeTransaction.objects.filter(pk=row.pk, status=SafeTxStatus.EXECUTED).exists(),
        timeout=90,
        message=f"Safe nonce {row.nonce} to execute",
    )


def test_activating_a_draft_of_a_module_vault_asks_the_owners_and_their_signatures_commit_it(
    chain: Chain, workers: Workers
) -> None:
    workers.start(extra_env=ENV)
    setup = module_vault(chain)
    vault, v1, v2 = setup.vault, setup.policy, draft_v2(setup)
    w3 = w3_of(vault)
    browser = admin_browser()
    answer = browser.post(
        "/admin/vaults/vaultpolicy/", {"action": "activate", "_selected_action": [v2.pk]}, follow=True
    )
    row = SafeTransaction.objects.get(purpose=SafeTxPurpose.POLICY, status=SafeTxStatus.SIGNING)
    # While the owners sign it, the draft cannot change: they sign what it is now.
    draft_page = browser.get(f"/admin/vaults/vaultpolicy/{v2.pk}/change/").content.decode()
    assert 'name="max_exposure_pct"' not in draft_page and f"Safe nonce {row.nonce}</a>: Collecting" in draft_page
    page = answer.content.decode()
    assert f"v{v2.version} awaits the owners' signatures" in page
    assert f"/admin/vaults/safetransaction/{row.pk}/sign/" in page
    assert row.plan == {
        "policy": v2.pk,
        "version": 2,
        "policyHash": "0x" + policy_hash(v2).hex(),
        "proposer": "root",
    }
    assert "Aave USDC, Morpho USDC" in row.summary and str(LIMIT) in row.summary
    assert VaultPolicy.objects.get(pk=v2.pk).status == PolicyStatus.DRAFT
    # Asking again (a second click) gets the same transaction, not another nonce.
    assert policy_activation_request(policy=v2) == row
    assert SafeTransaction.objects.filter(purpose=SafeTxPurpose.POLICY).count() == 1

    # One owner's signature is not the threshold: nothing is sent, nothing changes.
    safe_tx_sign(row=row, signature=sign_safe_tx(setup.wallets["alice"], row), from_wallet_of=setup.users["alice"])
    time.sleep(2)
    assert SafeTransaction.objects.get(pk=row.pk).status == SafeTxStatus.SIGNING
    assert not WorkflowRun.objects.filter(idempotency_key=f"safe-exec:{row.pk}").exists()
    assert module_state(w3, vault.module_address).policy_hash == policy_hash(v1)
    assert VaultPolicy.objects.get(pk=v2.pk).status == PolicyStatus.DRAFT

    safe_tx_sign(row=row, signature=sign_safe_tx(setup.wallets["bob"], row), from_wallet_of=setup.users["bob"])
    executed(row)
    seen = module_state(w3, vault.module_address)
    assert seen.policy_hash == policy_hash(v2)
    assert seen.allowed == policy_allowed_calls(v2)
    # Deposits only into v2's whitelist; withdrawals (back to the Safe) from every protocol of the chain.
    deposits = {a.to for a in seen.allowed if a.selector == onchain.DEPOSIT}
    withdrawals = {a.to for a in seen.allowed if a.selector == onchain.WITHDRAW}
    assert deposits == {Web3.to_checksum_address(p.address) for p in v2.whitelist.all()}
    assert withdrawals == {Web3.to_checksum_address(p.address) for p in Protocol.objects.filter(chain=vault.chain)}
    assert {a.to for a in seen.allowed if a.selector == onchain.APPROVE} == {vault.asset_address}
    limit = module_limit(w3, module=vault.module_address, token=vault.asset_address)
    assert limit is not None and (limit.amount, limit.period) == (LIMIT, 3600)
    v2.refresh_from_db()
    assert v2.status == PolicyStatus.ACTIVE and v2.committed_hash == "0x" + policy_hash(v2).hex()
    assert VaultPolicy.objects.get(pk=v1.pk).status == PolicyStatus.RETIRED
    assert SafeTransaction.objects.get(rejects=row).status == SafeTxStatus.VOID

    # Settling again changes nothing.
    assert policy_commit_settle(SafeTransaction.objects.get(pk=row.pk)) == "v2 was settled before"
    again = VaultPolicy.objects.get(pk=v2.pk)
    assert (again.status, again.activated_at, again.committed_hash) == (v2.status, v2.activated_at, v2.committed_hash)
    assert Vault.objects.get(pk=vault.pk).module_address == vault.module_address


def test_a_rejected_commit_leaves_the_draft_a_draft_and_says_why(chain: Chain, workers: Workers) -> None:
    workers.start(extra_env=ENV)
    setup = module_vault(chain)
    vault, v1, v2 = setup.vault, setup.policy, draft_v2(setup)
    row = policy_activation_request(policy=v2)
    assert isinstance(row, SafeTransaction) and row.purpose == SafeTxPurpose.POLICY
    rejection = SafeTransaction.objects.get(rejects=row)
    for name in ("alice", "carol"):
        safe_tx_sign(row=rejection, signature=sign_safe_tx(setup.wallets[name], rejection))
    executed(rejection)
    wait_until(
        lambda: "v2 stays a draft" in SafeTransaction.objects.get(pk=row.pk).error,
        timeout=30,
        message="the rejected commit to say so",
    )
    row.refresh_from_db()
    assert row.status == SafeTxStatus.VOID and f"nonce {row.nonce} executed" in row.error
    assert VaultPolicy.objects.get(pk=v2.pk).status == PolicyStatus.DRAFT
    assert VaultPolicy.objects.get(pk=v1.pk).status == PolicyStatus.ACTIVE
    assert module_state(w3_of(vault), vault.module_address).policy_hash == policy_hash(v1)
    # The draft can be proposed again, at the next nonce.
    again = policy_activation_request(policy=v2)
    assert isinstance(again, SafeTransaction) and again.pk != row.pk and again.nonce == row.nonce + 1


def test_a_commit_whose_nonce_the_owners_used_elsewhere_is_void_and_the_draft_can_be_proposed_again(
    chain: Chain,
) -> None:
    setup = module_vault(chain)
    vault, v1, v2 = setup.vault, setup.policy, draft_v2(setup)
    row = policy_commit_propose(policy=v2)
    # The owners execute another transaction at that nonce, outside the orchestrator.
    owners_execute(w3_of(vault), vault, [setup.wallets["alice"], setup.wallets["bob"]], policy_commit_calls(v1))
    with pytest.raises(SafeTxVoid):
        safe_tx_sign(row=row, signature=sign_safe_tx(setup.wallets["alice"], row))
    row.refresh_from_db()
    assert row.status == SafeTxStatus.VOID
    assert f"nonce {row.nonce} was used by another transaction" in row.error and "v2 stays a draft" in row.error
    assert VaultPolicy.objects.get(pk=v2.pk).status == PolicyStatus.DRAFT
    again = policy_commit_propose(policy=v2)
    assert again.pk != row.pk and again.nonce == row.nonce + 1 and again.status == SafeTxStatus.SIGNING


def test_the_module_is_installed_by_the_owners_and_the_vault_names_it_only_once_it_executes(
    chain: Chain, workers: Workers
) -> None:
    workers.start(extra_env=ENV)
    setup = safe_vault(chain)
    vault = setup.vault
    # Without a module, activating a draft is immediate, as it always was.
    v2 = draft_v2(setup)
    answer = admin_browser().post(
        "/admin/vaults/vaultpolicy/", {"action": "activate", "_selected_action": [v2.pk]}, follow=True
    )
    assert f"v{v2.version} is now active" in answer.content.decode()
    assert VaultPolicy.objects.get(pk=v2.pk).status == PolicyStatus.ACTIVE
    assert not SafeTransaction.objects.exists()

    validator = Account.create().address
    out = io.StringIO()
    call_command("module", "install", "--vault", vault.vault_id, "--validator", validator, stdout=out)
    row = SafeTransaction.objects.get(purpose=SafeTxPurpose.POLICY)
    module = row.plan["module"]
    assert row.plan["install"] is True and row.plan["policy"] == v2.pk and row.plan["validator"] == validator
    assert f"/admin/vaults/safetransaction/{row.pk}/sign/" in out.getvalue()
    assert Vault.objects.get(pk=vault.pk).module_address == ""
    with pytest.raises(CommandError, match="awaits the owners already"):
        call_command("module", "install", "--vault", vault.vault_id, "--module", module, stdout=io.StringIO())

    safe_tx_sign(row=row, signature=sign_safe_tx(setup.wallets["alice"], row))
    time.sleep(2)
    w3 = w3_of(vault)
    assert Vault.objects.get(pk=vault.pk).module_address == ""
    assert not module_enabled(w3, safe=vault.safe_address, module=module)

    safe_tx_sign(row=row, signature=sign_safe_tx(setup.wallets["carol"], row))
    executed(row)
    assert Vault.objects.get(pk=vault.pk).module_address == module
    assert module_enabled(w3, safe=vault.safe_address, module=module)
    seen = module_state(w3, module)
    assert seen.policy_hash == policy_hash(v2) and seen.validator == validator
    assert seen.allowed == policy_allowed_calls(v2)
    assert VaultPolicy.objects.get(pk=v2.pk).committed_hash == "0x" + policy_hash(v2).hex()
    assert safe_lib.safe_state(w3, vault.safe_address).nonce == row.nonce + 1
