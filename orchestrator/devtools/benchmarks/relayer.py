"""`bench relayer`: transactions per second through the whole relayer path (request, simulate,
sign with a serialized nonce, broadcast, confirm), from one signer and from ten, against a
bare web3.py loop that signs and sends the same transactions with local nonces (the floor).

Everything runs against one anvil started here (automine), in one run."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from eth_account import Account
from hexbytes import HexBytes
from web3 import Web3

from orchestrator.devtools import processes
from orchestrator.devtools.benchmarks import common
from relayer.keys import key_manager
from relayer.models import Chain, RelayTransaction, SigningKey, TxPhase
from relayer.services.requests import relay_request

SINK = "0x000000000000000000000000000000000000bEEF"


def _fund(w3: Web3, addresses: list[str]) -> None:
    funder = w3.eth.accounts[0]
    hashes = [w3.eth.send_transaction({"from": funder, "to": a, "value": w3.to_wei(100, "ether")}) for a in addresses]
    for h in hashes:
        w3.eth.wait_for_transaction_receipt(h, timeout=30)


def bare_loop(w3: Web3, *, signers: int, count: int, wait_each: bool = False) -> float:
    """Signs and sends `count` transfers round-robin from fresh local accounts with local
    nonces, then waits for the last receipt of each (or, with wait_each, for every receipt
    before the next send). Returns transactions per second."""
    accounts = [Account.create() for _ in range(signers)]
    _fund(w3, [a.address for a in accounts])
    fees = w3.eth.fee_history(1, "latest", [50])
    max_fee = 2 * int(fees["baseFeePerGas"][-1]) + 10**9
    nonces = dict.fromkeys(range(signers), 0)
    last: dict[int, HexBytes] = {}
    started = time.perf_counter()
    for i in range(count):
        who = i % signers
        signed = accounts[who].sign_transaction(
            {
                "type": 2,
                "chainId": w3.eth.chain_id,
                "nonce": nonces[who],
                "to": SINK,
                "value": 1,
                "gas": 21000,
                "maxFeePerGas": max_fee,
                "maxPriorityFeePerGas": 10**9,
            }
        )
        nonces[who] += 1
        last[who] = w3.eth.send_raw_transaction(signed.raw_transaction)
        if wait_each:
            w3.eth.wait_for_transaction_receipt(last[who], timeout=30, poll_latency=0.01)
    for tx_hash in last.values():
        w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
    return count / (time.perf_counter() - started)


def relayer_path(chain: Chain, w3: Web3, *, signers: int, count: int) -> float:
    """Requests `count` relays round-robin over fresh relayer keys and waits until all are
    confirmed. Returns transactions per second, from the first request to the last confirmation."""
    keys = [key_manager().create_key(purpose="relayer", label="bench") for _ in range(signers)]
    _fund(w3, [k.address for k in keys])
    started = time.perf_counter()
    ids = [
        relay_request(
            signer=keys[i % signers],
            chain=chain,
            to=SINK,
            value=1,
            idempotency_key=f"bench-{uuid.uuid4().hex}",
            requested_by=("bench", str(i)),
        ).id
        for i in range(count)
    ]

    def done() -> bool:
        return RelayTransaction.objects.filter(pk__in=ids, phase=TxPhase.COMPLETED).count() == count

    def broken() -> int:
        return RelayTransaction.objects.filter(pk__in=ids, phase__in=[TxPhase.FAILED, TxPhase.DEAD_LETTER]).count()

    common.wait_until(lambda: done() or broken() > 0, timeout=600, what="relays to confirm")
    if broken():
        raise RuntimeError(f"{broken()} relays failed; see the admin")
    elapsed = time.perf_counter() - started
    SigningKey.objects.filter(pk__in=[k.pk for k in keys]).update(label="bench (used)")
    return count / elapsed


def run(*, count: int, concurrency: int, out: Callable[[str], Any]) -> None:
    common.require_real_services()
    port = common.free_port()
    node = processes.anvil(port=port, log_path=Path(settings.VAR_DIR) / "log" / f"bench-anvil-{port}.log")
    node.start().wait_ready(timeout=30)
    url = f"http://127.0.0.1:{port}"
    w3 = Web3(Web3.HTTPProvider(url))
    chain, _ = Chain.objects.update_or_create(
        chain_id=w3.eth.chain_id,
        defaults={
            "name": "bench-anvil",
            "rpc_url": url,
            "confirmations": 1,
            "poll_interval": 0.1,
            "stuck_after": 30,
        },
    )
    out(f"bench relayer: {count} transfers per case on anvil (automine) at {url}")
    out(f"relayer: one worker on all queues, prefork concurrency={concurrency}, confirmation depth 1")
    rows = []
    try:
        with common.worker(name="relayer", concurrency=concurrency):
            relayer_path(chain, w3, signers=1, count=20)  # warm up imports, connections, caches
            for signers in (1, 10):
                bare = bare_loop(w3, signers=signers, count=count)
                out(f"  bare loop, fire and forget, {signers} signer(s): {bare:.1f} tx/s")
                waited = bare_loop(w3, signers=signers, count=count, wait_each=True)
                out(f"  bare loop, waiting for each receipt, {signers} signer(s): {waited:.1f} tx/s")
                relayed = relayer_path(chain, w3, signers=signers, count=count)
                out(f"  relayer, confirmed, {signers} signer(s): {relayed:.1f} tx/s")
                rows.append(
                    {
                        "signers": signers,
                        "bare tx/s": bare,
                        "bare+receipt tx/s": waited,
                        "relayer tx/s": relayed,
                        "ratio": relayed / bare,
                        "ratio vs bare+receipt": relayed / waited,
                    }
                )
    finally:
        node.stop()
    out("")
    common.table(rows, out)
    out("")
    out("target: relayer >= 0.5 x the bare loop for 1 and for 10 signers")
    out("ratio: against the fire-and-forget loop (the floor); the relayer also waits for every receipt,")
    out("so 'ratio vs bare+receipt' compares it with a loop that does the same.")
    out(
        common.result_line(
            "relayer",
            {
                "one_signer_ratio": rows[0]["ratio"],
                "ten_signers_ratio": rows[1]["ratio"],
                "ten_signers_tx_per_s": rows[1]["relayer tx/s"],
                "one_signer_tx_per_s": rows[0]["relayer tx/s"],
                "bare_one_signer_tx_per_s": rows[0]["bare tx/s"],
                "bare_ten_signers_tx_per_s": rows[1]["bare tx/s"],
                "one_signer_ratio_vs_receipt_loop": rows[0]["ratio vs bare+receipt"],
                "ten_signers_ratio_vs_receipt_loop": rows[1]["ratio vs bare+receipt"],
            },
        )
    )
