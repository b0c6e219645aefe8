"""The relayer end to end: requests relayed by real workers to a real anvil, through
PostgreSQL and Redis, including crashes, a node that is down, stuck transactions and reorgs.
(What needs no worker is tested module by module: test_requests.py, test_batches.py, ...)"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.db.models import Count
from web3 import Web3

from orchestrator.engine.models import WorkflowRun
from orchestrator.engine.services import workflow_replay, workflow_sweep
from relayer.keys import key_manager
from relayer.models import Broadcast, BroadcastKind, Chain, RelayTransaction, SigningKey, TxPhase
from relayer.services.monitor import nonce_gaps_fill
from relayer.services.requests import RelayConflict, relay_request
from tests.conftest import AnvilFactory, Workers, free_port, wait_until
from tests.factories import WorkflowRunFactory
from tests.support.relays import (
    RECEIVER,
    RELAY_ENV,
    batched,
    deploy_gate,
    deploy_reverter,
    fund,
    funded_signer,
    make_chain,
    nonce_on_chain,
    rpc,
    settled,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.relayer]


def send(
    signer: SigningKey,
    chain: Chain,
    *,
    key: str | None = None,
    value: int = 1000,
    to: str = RECEIVER,
    data: str = "0x",
    requester_run_id: Any = None,
) -> RelayTransaction:
    return relay_request(
        signer=signer,
        chain=chain,
        to=to,
        value=value,
        data=data,
        idempotency_key=key or uuid.uuid4().hex,
        requested_by=("test", "1"),
        requester_run_id=requester_run_id,
    )


def test_a_relay_is_simulated_signed_sent_and_confirmed(workers: Workers, anvil: str) -> None:
    workers.start(extra_env=RELAY_ENV)
    chain = make_chain(anvil)
    signer = funded_signer(anvil)
    before = Web3(Web3.HTTPProvider(anvil)).eth.get_balance(RECEIVER)
    asker = WorkflowRunFactory.create()
    tx = settled(send(signer, chain, value=4242, requester_run_id=asker.pk).id)
    assert (tx.nonce, tx.receipt_status, tx.mined_hash) == (0, 1, tx.tx_hash)
    asker.refresh_from_db()
    assert asker.transaction_id == tx.mined_hash  # the status read's transactionId
    assert tx.block_number and tx.block_hash and tx.gas_used == 21000 and tx.confirmed_at
    assert Web3(Web3.HTTPProvider(anvil)).eth.get_balance(RECEIVER) == before + 4242
    assert list(tx.broadcasts.values_list("kind", flat=True)) == [BroadcastKind.ORIGINAL]
    run = WorkflowRun.objects.get(pk=tx.workflow_run_id)
    assert (run.kind, run.phase, run.input["size"]) == ("relay.batch", "completed", 1)
    assert run.outputs["confirm"] == {"confirmed": 1, "reverted": 0}
    assert run.correlation_id == tx.correlation_id  # a batch of one carries its request's id


def test_one_idempotency_key_twice_gives_one_transaction(workers: Workers, anvil: str) -> None:
    workers.start(extra_env=RELAY_ENV)
    chain = make_chain(anvil)
    signer = funded_signer(anvil)
    first = send(signer, chain, key="pay-7")
    second = send(signer, chain, key="pay-7")
    assert first.id == second.id
    settled(first.id)
    assert RelayTransaction.objects.filter(idempotency_key="pay-7").count() == 1
    assert nonce_on_chain(anvil, signer.address) == 1
    with pytest.raises(RelayConflict):
        send(signer, chain, key="pay-7", value=1)


def test_200_concurrent_requests_from_4_worker_processes_use_nonces_0_to_199(workers: Workers, anvil: str) -> None:
    workers.start(concurrency=2, extra_env=RELAY_ENV)
    workers.start(concurrency=2, extra_env=RELAY_ENV)
    chain = make_chain(anvil)
    signer = funded_signer(anvil, eth=100)
    ids = [send(signer, chain).id for _ in range(200)]
    wait_until(
        lambda: RelayTransaction.objects.filter(pk__in=ids, phase=TxPhase.COMPLETED).count() == 200,
        timeout=180,
        interval=0.5,
        message="200 relays to complete",
    )
    nonces = sorted(RelayTransaction.objects.filter(pk__in=ids).values_list("nonce", flat=True))
    assert nonces == list(range(200))
    assert nonce_on_chain(anvil, signer.address) == 200
    assert not RelayTransaction.objects.filter(pk__in=ids).exclude(receipt_status=1).exists()


def test_requests_of_several_signers_share_batches_and_each_signer_gets_nonces_0_to_n(
    workers: Workers, anvil: str
) -> None:
    workers.start(concurrency=2, extra_env=RELAY_ENV)
    chain = make_chain(anvil)
    signers = [funded_signer(anvil) for _ in range(3)]
    ids = [send(signers[i % 3], chain).id for i in range(60)]
    wait_until(
        lambda: RelayTransaction.objects.filter(pk__in=ids, phase=TxPhase.COMPLETED).count() == 60,
        timeout=120,
        interval=0.5,
        message="60 relays to complete",
    )
    for signer in signers:
        nonces = RelayTransaction.objects.filter(pk__in=ids, signer=signer).values_list("nonce", flat=True)
        assert sorted(nonces) == list(range(20))
        assert nonce_on_chain(anvil, signer.address) == 20
    rows = RelayTransaction.objects.filter(pk__in=ids)
    batches = rows.values("workflow_run").annotate(n=Count("signer", distinct=True))
    assert max(b["n"] for b in batches) >= 2  # one batch, one round trip per step, for several signers
    assert len(batches) < 60


def test_a_signer_that_cannot_pay_is_split_off_and_the_others_are_not_held_up(workers: Workers, anvil: str) -> None:
    workers.start(extra_env=RELAY_ENV)
    chain = make_chain(anvil)
    rich = funded_signer(anvil)
    from relayer.keys import key_manager

    poor = key_manager().create_key(purpose="relayer")
    with transaction.atomic():  # one lane kick after commit: both requests in one batch
        waiting = send(poor, chain)
        paid = send(rich, chain)
    done = settled(paid.id)
    stuck = RelayTransaction.objects.get(pk=waiting.id)
    assert stuck.phase in (TxPhase.PENDING, TxPhase.SUBMITTING)  # split off at simulate or at broadcast
    split = WorkflowRun.objects.get(pk=stuck.workflow_run_id)
    assert split.pk != done.workflow_run_id and "insufficient funds" in split.input["split"]
    wait_until(lambda: "insufficient funds" in WorkflowRun.objects.get(pk=split.pk).error, message="a retry")

    w3 = Web3(Web3.HTTPProvider(anvil))
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": poor.address, "value": 10**18})
    )
    assert settled(waiting.id, timeout=30).nonce == 0


@pytest.mark.parametrize(
    "point",
    ["relay.sign_before_commit", "relay.before_broadcast", "relay.after_broadcast", "relay.after_receipt"],
)
def test_a_worker_killed_at_each_step_gives_exactly_one_transaction(
    workers: Workers, anvil: str, tmp_path: Path, point: str
) -> None:
    worker = workers.start(extra_env={**RELAY_ENV, "FAILPOINTS": point, "FAILPOINTS_DIR": str(tmp_path)})
    chain = make_chain(anvil)
    signer = funded_signer(anvil)
    tx = send(signer, chain)
    wait_until(lambda: (tmp_path / point).exists(), timeout=30, message=f"the worker to die at {point}")
    assert worker.alive  # the pool process died with SIGKILL; the worker replaced it
    done = settled(tx.id, sweep=True, timeout=60)
    assert nonce_on_chain(anvil, signer.address) == 1
    assert done.nonce == 0 and done.receipt_status == 1
    assert Broadcast.objects.filter(transaction=done).count() == 1


@pytest.mark.parametrize("point", ["relay.simulate", "relay.before_broadcast", "relay.after_receipt"])
def test_a_worker_killed_holding_a_relay_step_lease_is_taken_over_within_seconds_and_sends_once(
    workers: Workers, anvil: str, tmp_path: Path, point: str
) -> None:
    # A lease (600 s) and a stall rule (an hour) far longer than the test: the run goes on
    # because the sweep sees its holder's lock gone (docs/engine.md, "Leases and dead workers").
    env = {**RELAY_ENV, "RELAYER_STEP_LEASE_SECONDS": "600", "FAILPOINTS": point, "FAILPOINTS_DIR": str(tmp_path)}
    workers.start(extra_env=env)
    chain = make_chain(anvil)
    signer = funded_signer(anvil)
    tx = send(signer, chain)
    wait_until(lambda: (tmp_path / point).exists(), timeout=30, message=f"the worker to die at {point}")
    killed = time.monotonic()

    def swept_and_done() -> RelayTransaction | None:
        workflow_sweep(stall_seconds=3600)
        return RelayTransaction.objects.filter(pk=tx.id, phase=TxPhase.COMPLETED).first()

    done = wait_until(swept_and_done, timeout=15, interval=0.5, message="the relay to confirm after the kill")
    assert time.monotonic() - killed < 15
    assert nonce_on_chain(anvil, signer.address) == 1
    assert done.nonce == 0 and done.receipt_status == 1
    assert Broadcast.objects.filter(transaction=done).count() == 1


def test_a_reverting_call_fails_with_its_reason_and_leaves_no_stuck_nonce(workers: Workers, anvil: str) -> None:
    workers.start(extra_env=RELAY_ENV)
    chain = make_chain(anvil)
    signer = funded_signer(anvil)
    reverter = deploy_reverter(anvil, "vault is paused")
    failed = settled(send(signer, chain, to=reverter, value=0, data="0x12345678").id, TxPhase.FAILED)
    assert "simulation reverted" in failed.error and "vault is paused" in failed.error
    assert failed.nonce is None and not failed.broadcasts.exists()
    after = settled(send(signer, chain).id)
    assert after.nonce == 0
    assert nonce_on_chain(anvil, signer.address) == 1


def test_a_request_after_another_is_simulated_on_the_state_it_leaves_and_sent_at_the_next_nonce(
    workers: Workers, anvil: str
) -> None:
    workers.start(extra_env=RELAY_ENV)
    chain = make_chain(anvil)
    signer = funded_signer(anvil)
    gate, closed = deploy_gate(anvil), deploy_gate(anvil)
    with transaction.atomic():  # requested together, so one lane kick sees both
        opening = send(signer, chain, to=gate, value=0)
        passing = relay_request(signer=signer, chain=chain, to=gate, data="0x01", idempotency_key="pass", after=opening)
    first, second = settled(opening.id), settled(passing.id)
    assert first.workflow_run_id == second.workflow_run_id  # one batch, simulated as a sequence
    assert (first.nonce, second.nonce) == (0, 1)
    assert first.block_number is not None and second.block_number is not None
    assert first.block_number <= second.block_number
    assert first.receipt_status == second.receipt_status == 1

    # The same call alone, at a gate nobody opened, reverts in simulation: the sequence mattered.
    alone = settled(send(signer, chain, to=closed, value=0, data="0x01").id, TxPhase.FAILED)
    assert "simulation reverted" in alone.error and alone.nonce is None


def test_a_request_after_one_that_fails_is_never_sent(workers: Workers, anvil: str) -> None:
    workers.start(extra_env=RELAY_ENV)
    chain = make_chain(anvil)
    signer = funded_signer(anvil)
    reverter = deploy_reverter(anvil, "vault is paused")
    with transaction.atomic():
        doomed = send(signer, chain, to=reverter, value=0, data="0x12345678")
        follower = relay_request(signer=signer, chain=chain, to=RECEIVER, value=1, idempotency_key="f", after=doomed)
    assert "vault is paused" in settled(doomed.id, TxPhase.FAILED).error
    failed = settled(follower.id, TxPhase.FAILED)
    assert failed.error == f"not sent: relay {doomed.id}, which it follows, failed"
    assert failed.nonce is None and not failed.broadcasts.exists()
    assert nonce_on_chain(anvil, signer.address) == 0


def not_mining(workers: Workers, anvils: AnvilFactory, **chain_fields: Any) -> tuple[str, Chain, SigningKey]:
    """The workers, an anvil of the test's own that mines only when told to, its chain row
    and a funded signer: for transactions that must stay pending."""
    url = anvils.start()
    workers.start(extra_env=RELAY_ENV)
    chain = make_chain(url, **chain_fields)
    signer = funded_signer(url)
    rpc(url, "evm_setAutomine", False)
    return url, chain, signer


def test_a_stuck_transaction_is_replaced_with_higher_fees_and_confirmed_once(
    workers: Workers, anvils: AnvilFactory
) -> None:
    url, chain, signer = not_mining(workers, anvils, stuck_after=1.0)
    asker = WorkflowRunFactory.create()
    tx = send(signer, chain, requester_run_id=asker.pk)
    wait_until(
        lambda: Broadcast.objects.filter(transaction_id=tx.id, kind=BroadcastKind.REPLACEMENT).exists(),
        timeout=30,
        message="a fee bump",
    )
    # The run that asked shows the transaction being waited for: the replacement, not the original.
    bumped = RelayTransaction.objects.get(pk=tx.pk)
    original_hash = Broadcast.objects.get(transaction_id=tx.id, kind=BroadcastKind.ORIGINAL).tx_hash
    asker.refresh_from_db()
    assert asker.transaction_id in {b.tx_hash for b in bumped.broadcasts.exclude(kind=BroadcastKind.ORIGINAL)}
    assert asker.transaction_id != original_hash
    rpc(url, "evm_mine")
    rpc(url, "evm_setAutomine", True)
    done = settled(tx.id)
    original, replacement = list(done.broadcasts.order_by("id"))[:2]
    assert replacement.max_fee_per_gas >= original.max_fee_per_gas * 9 / 8
    assert replacement.max_priority_fee_per_gas >= original.max_priority_fee_per_gas * 9 / 8
    assert done.mined_hash == done.tx_hash != original.tx_hash
    assert nonce_on_chain(url, signer.address) == 1
    asker.refresh_from_db()
    assert asker.transaction_id == done.mined_hash


def test_with_the_rpc_down_relays_retry_and_finish_when_it_is_back(workers: Workers, anvils: AnvilFactory) -> None:
    port = free_port()
    workers.start(extra_env=RELAY_ENV)
    chain = make_chain(f"http://127.0.0.1:{port}")
    signer = key_manager().create_key(purpose="relayer")
    tx = send(signer, chain)
    run_id = batched(tx.id)
    wait_until(
        lambda: WorkflowRun.objects.get(pk=run_id).steps.filter(status="retry").count() >= 2,
        timeout=30,
        message="failed attempts while the RPC is down",
    )
    assert "RPC unavailable" in WorkflowRun.objects.get(pk=run_id).error
    url = anvils.start(port=port)
    fund(url, signer.address, 10**18)
    done = settled(tx.id, timeout=60)
    assert done.receipt_status == 1 and nonce_on_chain(url, signer.address) == 1


def test_a_reorg_that_drops_the_receipt_is_followed_to_a_confirmation(workers: Workers, anvils: AnvilFactory) -> None:
    url = anvils.start()
    workers.start(extra_env=RELAY_ENV)
    chain = make_chain(url, confirmations=3)
    signer = funded_signer(url)
    snapshot = rpc(url, "evm_snapshot")
    tx = send(signer, chain)
    seen = wait_until(
        lambda: RelayTransaction.objects.filter(pk=tx.id).exclude(block_hash="").first(),
        timeout=30,
        message="the receipt to be seen",
    )
    assert seen.phase == TxPhase.CONFIRMING  # 1 block deep, 3 needed
    rpc(url, "evm_revert", snapshot)  # the block that held it is gone
    wait_until(
        lambda: (
            RelayTransaction.objects.filter(pk=tx.id, block_hash="").exists()
            or RelayTransaction.objects.exclude(block_hash=seen.block_hash).filter(pk=tx.id).exists()
        ),
        timeout=30,
        message="the relayer to notice the reorg",
    )
    wait_until(
        lambda: (
            rpc(url, "anvil_mine", "0x1") is None
            and RelayTransaction.objects.filter(pk=tx.id, phase=TxPhase.COMPLETED).exists()
        ),
        timeout=60,
        interval=0.5,
        message="confirmation after the reorg",
    )
    done = RelayTransaction.objects.get(pk=tx.id)
    w3 = Web3(Web3.HTTPProvider(url))
    assert w3.eth.get_block(done.block_number)["hash"].hex().removeprefix("0x") == done.block_hash.removeprefix("0x")
    assert nonce_on_chain(url, signer.address) == 1


def test_a_failed_request_holding_a_nonce_is_filled_with_a_zero_value_self_transfer(
    workers: Workers, anvils: AnvilFactory
) -> None:
    url, chain, signer = not_mining(workers, anvils, stuck_after=0.5, max_bumps=0)
    stuck = settled(send(signer, chain).id, TxPhase.FAILED, timeout=30)
    assert stuck.nonce == 0 and "fee bumps" in stuck.error
    later = send(signer, chain)  # nonce 1: would wait forever behind nonce 0
    assert nonce_gaps_fill().filled == 1
    rpc(url, "evm_setAutomine", True)
    rpc(url, "evm_mine")
    assert settled(later.id).nonce == 1
    wait_until(
        lambda: nonce_gaps_fill() and RelayTransaction.objects.filter(pk=stuck.id).exclude(mined_hash="").exists(),
        timeout=20,
        message="the filler to be seen mined",
    )
    filler = Broadcast.objects.get(transaction_id=stuck.id, kind=BroadcastKind.FILLER)
    mined = Web3(Web3.HTTPProvider(url)).eth.get_transaction(filler.tx_hash)
    assert mined["to"] == signer.address and mined["value"] == 0 and mined["nonce"] == 0
    assert RelayTransaction.objects.get(pk=stuck.id).mined_hash == filler.tx_hash


def test_a_relay_that_exhausts_its_retries_is_dead_lettered_and_replays_to_completion(
    workers: Workers, anvils: AnvilFactory
) -> None:
    port = free_port()
    workers.start(extra_env={**RELAY_ENV, "RELAYER_MAX_ATTEMPTS": "2"})
    chain = make_chain(f"http://127.0.0.1:{port}")
    signer = key_manager().create_key(purpose="relayer")
    tx = send(signer, chain)
    dead = settled(tx.id, TxPhase.DEAD_LETTER, timeout=30)
    assert "RPC unavailable" in dead.error

    url = anvils.start(port=port)
    fund(url, signer.address, 10**18)
    workflow_replay(run_id=dead.workflow_run_id, actor="test")
    done = settled(tx.id)
    assert done.error == "" and done.receipt_status == 1
    assert nonce_on_chain(url, signer.address) == 1
