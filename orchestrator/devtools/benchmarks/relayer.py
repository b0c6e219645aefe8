"""`bench relayer`: transactions per second through the whole relayer path (request, simulate,
sign with a serialized nonce, broadcast, confirm), from one signer and from ten, against a
bare web3.py loop that signs and sends the same transactions with local nonces (the floor).

Everything runs against one anvil started here (a block every 20 ms), in one run. With --repeat N the
cases run N rounds, bare loop and relayer in turn (bare, relayer, bare+receipt for one signer,
then for ten), so a swing in the machine's speed (other processes on its two cores) hits the
bare loop and the relayer alike; the ratios are then each round's, summed up by their median
and their worst. Each case runs on the chain as the warm-up left it (an anvil snapshot taken
then, reverted to after each case): anvil slows down as its chain grows (949 tx/s for its first
500 raw transactions, 247 for its 3,501st to 4,000th), so without it the case that ran first
met a younger, faster chain."""

from __future__ import annotations

import cProfile
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from eth_account import Account
from hexbytes import HexBytes
from web3 import Web3
from web3.types import RPCEndpoint

from orchestrator.devtools import processes
from orchestrator.devtools.benchmarks import common
from orchestrator.devtools.benchmarks.relayer_cpu import KINDS, cpu_by_kind, print_profiles, profiled
from relayer.keys import key_manager
from relayer.models import Broadcast, BroadcastKind, Chain, RelayTransaction, SigningKey, TxPhase
from relayer.profiling import ENV as PROFILE_ENV
from relayer.services.requests import relay_request

SINK = "0x000000000000000000000000000000000000bEEF"


def _fund(w3: Web3, addresses: list[str]) -> None:
    funder = w3.eth.accounts[0]
    hashes = [w3.eth.send_transaction({"from": funder, "to": a, "value": w3.to_wei(10, "ether")}) for a in addresses]
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
    chain_id = w3.eth.chain_id  # once: a loop written for speed does not ask it per transaction
    started = time.perf_counter()
    for i in range(count):
        who = i % signers
        signed = accounts[who].sign_transaction(
            {
                "type": 2,
                "chainId": chain_id,
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


def relayer_path(
    chain: Chain,
    w3: Web3,
    *,
    signers: int,
    count: int,
    profiler: cProfile.Profile | None = None,
    bumps: list[int] | None = None,
) -> float:
    """Requests `count` relays round-robin over fresh relayer keys and waits until all are
    confirmed. Returns transactions per second, from the first request to the last confirmation.
    Then counts them on chain: every key's nonce and the sink's balance must have moved by
    exactly what was requested, or it raises. Appends to `bumps` how many fee bumps it took
    (transactions anvil left unmined)."""
    keys = [key_manager().create_key(purpose="relayer", label="bench") for _ in range(signers)]
    _fund(w3, [k.address for k in keys])
    sink = Web3.to_checksum_address(SINK)
    sink_before = w3.eth.get_balance(sink)
    started = time.perf_counter()
    with profiled(profiler is not None, profiler or cProfile.Profile()):
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

    final = [TxPhase.COMPLETED, TxPhase.FAILED, TxPhase.DEAD_LETTER]

    def last_finished() -> bool:
        # One row by its key every 10 ms, and the count over the case's requests only once the
        # last one is finished: two counts over 1,000 keys every 20 ms took a tenth of a core
        # from what is measured.
        return RelayTransaction.objects.filter(pk=ids[-1], phase__in=final).exists()

    def done() -> bool:
        return RelayTransaction.objects.filter(pk__in=ids, phase=TxPhase.COMPLETED).count() == count

    def broken() -> int:
        return RelayTransaction.objects.filter(pk__in=ids, phase__in=[TxPhase.FAILED, TxPhase.DEAD_LETTER]).count()

    common.wait_until(last_finished, timeout=600, what="the last relay to finish", interval=0.01)
    common.wait_until(lambda: done() or broken() > 0, timeout=600, what="relays to confirm", interval=0.01)
    if broken():
        raise RuntimeError(f"{broken()} relays failed; see the admin")
    elapsed = time.perf_counter() - started
    SigningKey.objects.filter(pk__in=[k.pk for k in keys]).update(label="bench (used)")
    sent = sum(int(w3.eth.get_transaction_count(Web3.to_checksum_address(k.address), "latest")) for k in keys)
    paid = w3.eth.get_balance(sink) - sink_before
    if sent != count or paid != count:
        raise RuntimeError(f"on chain: {sent} transactions from the relayer keys and {paid} wei paid, for {count}")
    if bumps is not None:
        bumps.append(Broadcast.objects.filter(transaction_id__in=ids, kind=BroadcastKind.REPLACEMENT).count())
    return count / elapsed


def _case(
    label: str,
    measure: Callable[[], float],
    out: Callable[[str], Any],
    cpu: dict[str, dict[str, float]],
    count: int,
    chain: SameChain,
) -> float:
    with cpu_by_kind() as used:
        rate = measure()
    chain.reset()
    cpu[label] = {kind: 1000 * seconds / count for kind, seconds in used.items()}
    out(f"  {label}: {rate:.1f} tx/s")
    return rate


class SameChain:
    """Puts anvil back to the snapshot the warm-up left after each case (once everything the
    case sent is confirmed), so every case meets the same chain. The relayer's keys are new in
    every case: no nonce it remembers is undone."""

    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        self.snapshot = self._take()

    def _take(self) -> str:
        return str(self.w3.provider.make_request(RPCEndpoint("evm_snapshot"), [])["result"])

    def reset(self) -> None:
        if not self.w3.provider.make_request(RPCEndpoint("evm_revert"), [self.snapshot]).get("result"):
            raise RuntimeError("anvil refused to revert to the warm-up's snapshot")
        self.snapshot = self._take()  # a snapshot is used up by its revert


def run(*, count: int, concurrency: int, out: Callable[[str], Any], repeat: int = 1, profile: bool = False) -> None:
    common.require_real_services()
    port = common.free_port()
    # A block every 20 ms, not a block per transaction (automine): under automine anvil now and
    # then holds a sender's next nonce in its queue, unmined, until another transaction of that
    # sender arrives (txpool_inspect showed it; foundry-rs/foundry#10122 is alike), and the
    # relayer's fee bump is the next one: in about 1 relayer case in 5 here, 45 to 93 bumps and
    # a second or more lost (30 s with the bench chain's earlier stuck_after). With interval
    # mining none in 12 cases. Both loops run on the same chain; anvil also spends less per
    # transaction without a block each, so the bare loop is faster than under automine.
    node = processes.anvil(
        port=port,
        log_path=Path(settings.VAR_DIR) / "log" / f"bench-anvil-{port}.log",
        extra=["--block-time", "0.02"],
    )
    node.start().wait_ready(timeout=30)
    url = f"http://127.0.0.1:{port}"
    w3 = Web3(Web3.HTTPProvider(url))
    chain, _ = Chain.objects.update_or_create(
        chain_id=w3.eth.chain_id,
        defaults={
            "name": "bench-anvil",
            "rpc_url": url,
            "confirmations": 1,
            # Receipts looked up every 2.5 blocks. At 0.1 s the last batch of a case, broadcast
            # between two blocks, waited 0.1 s for its second look: a twentieth of the case.
            "poll_interval": 0.05,
            # 50 blocks: a transaction not mined by then is stuck (see the anvil above).
            "stuck_after": 1.0,
        },
    )
    profile_dir = Path(tempfile.mkdtemp(prefix="bench-relayer-profile-")) if profile else None
    bench_profile = cProfile.Profile(time.process_time) if profile else None
    out(f"bench relayer: {count} transfers per case on anvil (a block every 20 ms) at {url}, {repeat} round(s)")
    out(f"relayer: one worker on all queues, prefork concurrency={concurrency}, confirmation depth 1")
    rows: list[dict[str, Any]] = []
    cpu: dict[str, dict[str, float]] = {}
    try:
        env = {PROFILE_ENV: str(profile_dir)} if profile_dir else None
        with common.worker(name="relayer", concurrency=concurrency, env=env):
            # Warm up imports, connections and caches: in every pool process (a batch of ten
            # signers spreads over them), and the bare loop's client.
            relayer_path(chain, w3, signers=10, count=100)
            bare_loop(w3, signers=1, count=20)
            same = SameChain(w3)
            for round_no in range(1, repeat + 1):
                for signers in (1, 10):
                    out(f"round {round_no}, {signers} signer(s):")
                    bare = _case(
                        "bare loop, fire and forget",
                        partial(bare_loop, w3, signers=signers, count=count),
                        out,
                        cpu,
                        count,
                        same,
                    )
                    bumped: list[int] = []
                    relayed = _case(
                        "relayer, confirmed",
                        partial(
                            relayer_path, chain, w3, signers=signers, count=count, profiler=bench_profile, bumps=bumped
                        ),
                        out,
                        cpu,
                        count,
                        same,
                    )
                    waited = _case(
                        "bare loop, waiting for each receipt",
                        partial(bare_loop, w3, signers=signers, count=count, wait_each=True),
                        out,
                        cpu,
                        count,
                        same,
                    )
                    out("    CPU ms per transaction: " + _cpu_line(cpu))
                    rows.append(
                        {
                            "round": round_no,
                            "signers": signers,
                            "bare tx/s": bare,
                            "bare+receipt tx/s": waited,
                            "relayer tx/s": relayed,
                            "ratio": relayed / bare,
                            "ratio vs bare+receipt": relayed / waited,
                            "fee bumps": bumped[0],
                        }
                    )
    finally:
        node.stop()
    out("")
    common.table(rows, out)
    out("")
    summary = _summary(rows)
    common.table(summary, out)
    out("")
    out("target: relayer >= 0.9 x the bare fire-and-forget loop for 1 and for 10 signers, in every round")
    out("ratio: against the fire-and-forget loop (the floor); the relayer also waits for every receipt,")
    out("so 'ratio vs bare+receipt' compares it with a loop that does the same.")
    if profile_dir is not None and bench_profile is not None:
        out("")
        print_profiles(profile_dir, bench_profile, out)
    one, ten = summary
    out(
        common.result_line(
            "relayer",
            {
                "one_signer_ratio": one["ratio median"],
                "ten_signers_ratio": ten["ratio median"],
                "ten_signers_tx_per_s": ten["relayer tx/s median"],
                "one_signer_tx_per_s": one["relayer tx/s median"],
                "bare_one_signer_tx_per_s": one["bare tx/s median"],
                "bare_ten_signers_tx_per_s": ten["bare tx/s median"],
                "one_signer_ratio_vs_receipt_loop": one["vs bare+receipt median"],
                "ten_signers_ratio_vs_receipt_loop": ten["vs bare+receipt median"],
                "one_signer_ratio_median": one["ratio median"],
                "one_signer_ratio_worst": one["ratio worst"],
                "ten_signers_ratio_median": ten["ratio median"],
                "ten_signers_ratio_worst": ten["ratio worst"],
                "rounds": repeat,
                "fee_bumps": sum(r["fee bumps"] for r in rows),
            },
        )
    )


def _cpu_line(cpu: dict[str, dict[str, float]]) -> str:
    return "; ".join(
        f"{label.split(',')[0]}{' (receipts)' if 'receipt' in label else ''}: "
        + " ".join(f"{kind} {used[kind]:.1f}" for kind in KINDS)
        for label, used in cpu.items()
    )


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for signers in (1, 10):
        mine = [r for r in rows if r["signers"] == signers]
        out.append(
            {
                "signers": signers,
                "rounds": len(mine),
                "bare tx/s median": statistics.median(r["bare tx/s"] for r in mine),
                "relayer tx/s median": statistics.median(r["relayer tx/s"] for r in mine),
                "ratio median": statistics.median(r["ratio"] for r in mine),
                "ratio worst": min(r["ratio"] for r in mine),
                "vs bare+receipt median": statistics.median(r["ratio vs bare+receipt"] for r in mine),
            }
        )
    return out
