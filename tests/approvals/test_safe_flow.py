"""Flow B on a Safe vault, on anvil with Safe v1.4.1's published bytecode and real workers: a
proposal is one Safe transaction, approving is an owner's signature of its hash, the quorum is
the Safe's threshold, and the relayer's key only pays gas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from eth_account import Account
from rest_framework.test import APIClient
from web3 import Web3

from approvals.models import Approval, ProposalStatus, RebalanceProposal
from approvals.safe_proposals import proposal_safe_txs, proposal_sign
from approvals.services import SignatureRequired, proposal_approve, proposal_create
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import workflow_sweep
from relayer.keys import key_manager
from relayer.models import RelayTransaction, SigningKey
from tests.conftest import AnvilFactory, Workers, wait_until
from tests.support.flows import ENTRIES, signed_feed
from tests.support.relays import RELAY_ENV, make_chain
from tests.support.safes import KEYS, SafeSetup, exec_call, safe_vault, sign_safe_tx
from vaults import onchain
from vaults import safe as safe_lib
from vaults.models import Protocol, SafeTxStatus
from vaults.services.feeds import feed_accept

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.flow]

SAFE_ENV = {**RELAY_ENV, "FLOW_SETTLE_POLL_SECONDS": "1"}
TARGET = {"Aave USDC": "40", "Compound USDC": "0", "Morpho USDC": "60"}


@pytest.fixture
def setup(anvils: AnvilFactory) -> SafeSetup:
    chain = make_chain(anvils.start(), poll_interval=0.1)
    made = safe_vault(chain)
    feed_accept(payload=signed_feed(made.oracle, ENTRIES))
    return made


def w3_of(setup: SafeSetup) -> Web3:
    return Web3(Web3.HTTPProvider(setup.vault.chain.rpc_url))


def propose(setup: SafeSetup, **overrides: Any) -> RebalanceProposal:
    operator = get_user_model().objects.filter(username="operator").first() or get_user_model().objects.create_user(
        "operator", is_staff=True
    )
    return proposal_create(vault=setup.vault, allocation=overrides.pop("allocation", TARGET), proposer=operator)


def held(setup: SafeSetup) -> dict[str, int]:
    protocols = {p.name: p.address for p in Protocol.objects.filter(chain=setup.vault.chain)}
    found = onchain.positions(
        w3=w3_of(setup), account=setup.vault.safe_address, asset=setup.vault.asset_address, protocols=protocols
    )
    return {**found.by_protocol, "idle": found.idle}


def safe_execs(setup: SafeSetup) -> list[RelayTransaction]:
    return list(RelayTransaction.objects.filter(to=setup.vault.safe_address))


def revert_reason(w3: Web3, call: dict[str, Any]) -> str:
    try:
        w3.eth.call(call)
    except Exception as exc:  # web3 raises ContractLogicError with the revert string
        return safe_lib.safe_revert_reason(str(exc))
    return "no revert"


def test_a_proposal_of_a_safe_vault_is_one_safe_transaction_owned_by_the_safe_owners(setup: SafeSetup) -> None:
    proposal = propose(setup)
    main, rejection = proposal_safe_txs(proposal)
    assert main is not None and rejection is not None
    state = safe_lib.safe_state(w3_of(setup), setup.vault.safe_address)
    assert sorted(state.owners) == sorted(w.address for w in setup.wallets.values()) and state.threshold == 2
    assert proposal.quorum_required == 2
    assert sorted(u.username for u in proposal.approvers.all()) == ["alice", "bob", "carol"]
    assert main.nonce == rejection.nonce == state.nonce
    tx = safe_lib.SafeTx.from_json(main.tx)
    assert tx.operation == 1  # one DELEGATECALL to MultiSendCallOnly: every call or none
    kinds = [a["kind"] for a in main.plan["actions"]]
    assert "deposit" in kinds
    on_chain_hash = (
        w3_of(setup)
        .eth.contract(address=Web3.to_checksum_address(setup.vault.safe_address), abi=safe_lib.safe_abi())
        .functions.getTransactionHash(
            tx.to,
            tx.value,
            bytes.fromhex(tx.data[2:]),
            tx.operation,
            0,
            0,
            0,
            safe_lib.ZERO_ADDRESS,
            safe_lib.ZERO_ADDRESS,
            tx.nonce,
        )
        .call()
    )
    assert "0x" + on_chain_hash.hex().removeprefix("0x") == main.safe_tx_hash
    with pytest.raises(SignatureRequired):
        proposal_approve(proposal=proposal, approver=setup.users["alice"])


def test_two_owners_sign_and_one_exec_transaction_moves_the_funds_as_proposed(
    setup: SafeSetup, workers: Workers
) -> None:
    workers.start(extra_env=SAFE_ENV)
    proposal = propose(setup)
    main, _ = proposal_safe_txs(proposal)
    assert main is not None
    before = held(setup)
    proposal_sign(proposal=proposal, signature=sign_safe_tx(setup.wallets["alice"], main), decision="approve")
    assert not safe_execs(setup)  # one short: nothing is sent
    api = APIClient()
    api.force_authenticate(setup.users["bob"])
    answer = api.post(
        f"/v1/proposals/{proposal.proposal_id}/signatures",
        {"signature": sign_safe_tx(setup.wallets["bob"], main), "decision": "approve"},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    assert answer.json()["status"] == "approved"
    assert {s["approver"] for s in answer.json()["safe"]["signatures"]} == {"alice", "bob"}
    done = wait_until(
        lambda: RebalanceProposal.objects.filter(pk=proposal.pk, status=ProposalStatus.EXECUTED).first(),
        timeout=90,
        message="the proposal to execute",
    )
    assert done.status == ProposalStatus.EXECUTED
    execs = safe_execs(setup)
    assert len(execs) == 1 and execs[0].signer_id == setup.vault.account_id
    after = held(setup)
    total = sum(before.values())
    assert sum(after.values()) == total
    assert after["Morpho USDC"] == total * 60 // 100 and after["Aave USDC"] == total * 40 // 100
    main.refresh_from_db()
    assert main.status == SafeTxStatus.EXECUTED
    assert set(Approval.objects.filter(proposal=proposal).values_list("approver__username", flat=True)) == {
        "alice",
        "bob",
    }


def test_one_signature_short_sends_nothing_and_a_forced_send_reverts_gs020(setup: SafeSetup) -> None:
    proposal = propose(setup)
    main, _ = proposal_safe_txs(proposal)
    assert main is not None
    signature = sign_safe_tx(setup.wallets["alice"], main)
    proposal_sign(proposal=proposal, signature=signature, decision="approve")
    assert RebalanceProposal.objects.get(pk=proposal.pk).status == ProposalStatus.PENDING
    assert not safe_execs(setup)
    w3 = w3_of(setup)
    forced = exec_call(w3, main, {setup.wallets["alice"].address: signature}, sender=w3.eth.accounts[0])
    assert revert_reason(w3, forced).startswith("GS020")


def test_refused_signatures_non_owner_other_nonce_replayed_or_malleated(setup: SafeSetup) -> None:
    first = propose(setup)
    second = propose(setup, allocation={"Aave USDC": "50", "Compound USDC": "0", "Morpho USDC": "50"})
    main, _ = proposal_safe_txs(first)
    other, _ = proposal_safe_txs(second)
    assert main is not None and other is not None and other.nonce == main.nonce + 1
    api = APIClient()
    api.force_authenticate(setup.users["alice"])

    def post(proposal: RebalanceProposal, signature: str) -> Any:
        return api.post(
            f"/v1/proposals/{proposal.proposal_id}/signatures",
            {"signature": signature, "decision": "approve"},
            format="json",
        )

    stranger = Account.from_key(KEYS["dave"])
    refused = post(first, sign_safe_tx(stranger, main))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_a_safe_owner"
    replayed = post(first, sign_safe_tx(setup.wallets["alice"], other))  # the other proposal's, at nonce + 1
    assert replayed.status_code == 403 and replayed.json()["error"]["code"] == "not_a_safe_owner"
    good = sign_safe_tx(setup.wallets["alice"], main)
    raw = bytes.fromhex(good[2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(raw[32:64], "big")
    malleated = "0x" + (raw[:32] + (n - s).to_bytes(32, "big") + bytes([55 - raw[64]])).hex()
    bad = post(first, malleated)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_signature"
    assert not main.signatures.exists()
    # The Safe refuses the same on chain: a non-owner's signature with an owner's (GS026).
    w3 = w3_of(setup)
    forced = exec_call(
        w3,
        main,
        {stranger.address: sign_safe_tx(stranger, main), setup.wallets["alice"].address: good},
        sender=w3.eth.accounts[0],
    )
    assert revert_reason(w3, forced).startswith("GS026")
    # Replayed from the other proposal (another nonce): recovers to nobody the Safe knows.
    bob = setup.wallets["bob"]
    replay = {
        setup.wallets["alice"].address: sign_safe_tx(setup.wallets["alice"], other),
        bob.address: sign_safe_tx(bob, main),
    }
    assert revert_reason(w3, exec_call(w3, main, replay, sender=w3.eth.accounts[0])).startswith("GS026")
    # The EVM's ecrecover takes a high-s twin: on chain it is the same owner's signature again,
    # a vote they gave, never one they did not. The server refuses it so each owner's signature
    # is stored in one form.
    assert safe_lib.signature_owner(safe_lib.SafeTx.from_json(main.tx), good) == setup.wallets["alice"].address


def test_no_key_the_orchestrator_holds_can_execute_a_safe_transaction(setup: SafeSetup) -> None:
    proposal = propose(setup)
    main, _ = proposal_safe_txs(proposal)
    assert main is not None
    w3 = w3_of(setup)
    held_keys = list(SigningKey.objects.all())
    assert held_keys  # the vault's gas key and operator key at least
    owners = set(safe_lib.safe_state(w3, setup.vault.safe_address).owners)
    assert not owners & {k.address for k in held_keys}
    for key in held_keys:
        typed = safe_lib.SafeTx.from_json(main.tx).typed_data()
        types = {k: v for k, v in typed["types"].items() if k != "EIP712Domain"}
        signature = key_manager().sign_typed_data(
            key=key, domain=typed["domain"], types=types, message=typed["message"]
        )
        alone = exec_call(w3, main, {key.address: signature}, sender=setup.vault.account.address)
        assert revert_reason(w3, alone).startswith(("GS020", "GS026")), key.purpose
        # Even with one real owner's signature, a held key does not make the second.
        pair = {key.address: signature, setup.wallets["alice"].address: sign_safe_tx(setup.wallets["alice"], main)}
        assert revert_reason(w3, exec_call(w3, main, pair, sender=setup.vault.account.address)).startswith("GS026")


def test_a_signed_rejection_makes_the_proposal_impossible_on_chain(setup: SafeSetup, workers: Workers) -> None:
    workers.start(extra_env=SAFE_ENV)
    proposal = propose(setup)
    main, rejection = proposal_safe_txs(proposal)
    assert main is not None and rejection is not None
    approvals = {name: sign_safe_tx(setup.wallets[name], main) for name in ("alice", "bob")}
    for name in ("alice", "carol"):
        proposal_sign(proposal=proposal, signature=sign_safe_tx(setup.wallets[name], rejection), decision="reject")
    assert RebalanceProposal.objects.get(pk=proposal.pk).status == ProposalStatus.REJECTED
    wait_until(
        lambda: type(rejection).objects.filter(pk=rejection.pk, status=SafeTxStatus.EXECUTED).exists(),
        timeout=90,
        message="the rejection to execute on chain",
    )
    w3 = w3_of(setup)
    assert safe_lib.safe_state(w3, setup.vault.safe_address).nonce == main.nonce + 1
    main.refresh_from_db()
    assert main.status == SafeTxStatus.VOID
    # Two owners' signatures of the rebalance no longer execute: the nonce is used (GS026).
    forced = exec_call(w3, main, {setup.wallets[n].address: s for n, s in approvals.items()}, sender=w3.eth.accounts[0])
    assert revert_reason(w3, forced).startswith("GS026")


def test_owners_changed_between_the_signatures_and_the_execution_the_proposal_says_so(
    setup: SafeSetup, workers: Workers
) -> None:
    """An owner change queued at nonce N, a rebalance at N + 1 signed by alice and bob; the
    owner change executes first and removes bob: the rebalance's check finds one signature of
    a current owner where two are needed, and the proposal says why."""
    from vaults.models import SafeTxPurpose
    from vaults.services.safe_accounts import safe_tx_create

    workers.start(extra_env=SAFE_ENV)
    w3 = w3_of(setup)
    state = safe_lib.safe_state(w3, setup.vault.safe_address)
    change = safe_tx_create(
        vault=setup.vault,
        purpose=SafeTxPurpose.OWNERS,
        calls=safe_lib.owner_change_calls(
            safe=setup.vault.safe_address,
            owners_now=state.owners,
            owners_wanted=[setup.wallets["alice"].address, setup.wallets["carol"].address],
            threshold=2,
        ),
        summary="remove bob",
    )
    proposal = propose(setup)
    main, _ = proposal_safe_txs(proposal)
    assert main is not None and main.nonce == change.nonce + 1
    for name in ("alice", "bob"):
        proposal_sign(proposal=proposal, signature=sign_safe_tx(setup.wallets[name], main), decision="approve")
    run = wait_until(
        lambda: WorkflowRun.objects.filter(idempotency_key=f"safe-exec:{main.pk}", phase=Phase.CONFIRMING).first(),
        timeout=30,
        message="the execution to wait for the earlier nonce",
    )
    change_sigs = {setup.wallets[n].address: sign_safe_tx(setup.wallets[n], change) for n in ("alice", "carol")}
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction(exec_call(w3, change, change_sigs, sender=w3.eth.accounts[0]))
    )
    blocked = wait_until(
        lambda: WorkflowRun.objects.filter(pk=run.pk, phase=Phase.BLOCKED).first(),
        timeout=60,
        message="the execution to stop on the owner change",
    )
    assert "owners or threshold changed" in blocked.error and setup.wallets["bob"].address in blocked.error
    assert "owners or threshold changed" in RebalanceProposal.objects.get(pk=proposal.pk).execution_error
    assert not safe_execs(setup)


@pytest.mark.parametrize("point", ["safe.after_request", "relay.after_broadcast"])
def test_a_worker_killed_between_quorum_and_confirmation_sends_one_exec_transaction(
    setup: SafeSetup, workers: Workers, tmp_path: Path, point: str
) -> None:
    workers.start(extra_env={**SAFE_ENV, "FAILPOINTS": point, "FAILPOINTS_DIR": str(tmp_path)})
    proposal = propose(setup)
    main, _ = proposal_safe_txs(proposal)
    assert main is not None
    for name in ("alice", "bob"):
        proposal_sign(proposal=proposal, signature=sign_safe_tx(setup.wallets[name], main), decision="approve")
    wait_until(lambda: (tmp_path / point).exists(), timeout=60, message=f"the worker to die at {point}")

    def executed() -> bool:
        workflow_sweep(stall_seconds=0)  # beat's sweep, which reclaims what the dead process held
        return RebalanceProposal.objects.filter(pk=proposal.pk, status=ProposalStatus.EXECUTED).exists()

    wait_until(executed, timeout=120, interval=0.3, message="the proposal to execute after the crash")
    assert len(safe_execs(setup)) == 1
    w3 = w3_of(setup)
    assert w3.eth.get_transaction_count(setup.vault.account.address) == 1
    assert safe_lib.safe_state(w3, setup.vault.safe_address).nonce == main.nonce + 1


def test_an_expired_proposal_frees_its_safe_nonce_for_the_next_one(setup: SafeSetup) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from approvals.errors import ProposalClosed
    from approvals.services import proposals_expire

    first = propose(setup)
    queued = propose(setup, allocation={"Aave USDC": "50", "Compound USDC": "0", "Morpho USDC": "50"})
    main, rejection = proposal_safe_txs(first)
    behind, _ = proposal_safe_txs(queued)
    assert main is not None and rejection is not None and behind is not None
    assert behind.nonce == main.nonce + 1
    RebalanceProposal.objects.filter(pk=first.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert proposals_expire() == 1
    main.refresh_from_db()
    rejection.refresh_from_db()
    assert main.status == rejection.status == SafeTxStatus.VOID
    with pytest.raises(ProposalClosed):
        proposal_sign(proposal=first, signature=sign_safe_tx(setup.wallets["alice"], main), decision="approve")
    # The next proposal takes the freed nonce, so the one queued behind it can still execute.
    refill = propose(setup, allocation={"Aave USDC": "30", "Compound USDC": "10", "Morpho USDC": "60"})
    again, _ = proposal_safe_txs(refill)
    assert again is not None and again.nonce == main.nonce


def test_a_signature_after_the_owners_used_the_nonce_elsewhere_closes_the_proposal_for_good(
    setup: SafeSetup,
) -> None:
    """The refusal is an error, and the closing it implies is committed all the same."""
    from approvals.errors import ProposalClosed
    from tests.support.modules import owners_execute

    proposal = propose(setup)
    main, rejection = proposal_safe_txs(proposal)
    assert main is not None and rejection is not None
    # The owners spend the nonce on something else, outside the orchestrator.
    approve_nothing = safe_lib.Call(
        to=setup.vault.asset_address, value=0, data=onchain.approve_calldata(setup.vault.asset_address, 0)
    )
    owners_execute(w3_of(setup), setup.vault, [setup.wallets["alice"], setup.wallets["bob"]], [approve_nothing])
    with pytest.raises(ProposalClosed, match="is cancelled"):
        proposal_sign(proposal=proposal, signature=sign_safe_tx(setup.wallets["carol"], main), decision="approve")
    proposal.refresh_from_db()
    main.refresh_from_db()
    rejection.refresh_from_db()
    assert proposal.status == ProposalStatus.CANCELLED and "was used by another transaction" in proposal.execution_error
    assert main.status == rejection.status == SafeTxStatus.VOID
    assert not main.signatures.exists()
