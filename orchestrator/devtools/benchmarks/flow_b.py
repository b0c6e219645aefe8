"""`bench flow-b`: a Safe vault's proposals, from the last owner signature posted to the
execution confirmed on chain, and the gas of one execTransaction against the same rebalance
sent as plain calls.

One vault held by a 2-of-3 Safe on an anvil started here; proposals alternate between two
allocations, each signed by two owners (eth-account keys, as a wallet signs), one at a time: a
Safe executes its nonces in order. The baseline for gas, in the same run: before the workers
start, the first proposal's calls are sent one by one from the Safe's address (impersonated on
anvil, so they act exactly as the Safe's calls do) on a snapshot that is then reverted."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_typing import HexStr
from web3 import Web3

from approvals.models import ProposalStatus, RebalanceProposal
from approvals.safe_proposals import proposal_safe_txs, proposal_sign
from approvals.services import proposal_create
from approvals.wallets import wallet_challenge_issue, wallet_register
from orchestrator.devtools import processes
from orchestrator.devtools.benchmarks import common
from relayer.models import Chain, RelayTransaction
from vaults import safe as safe_lib
from vaults.models import OracleKey, Protocol, SafeTransaction
from vaults.services.bootstrap import DEFAULT_PROTOCOLS, chain_bootstrap
from vaults.services.feeds import feed_accept
from vaults.services.policies import policy_activate, policy_draft

TARGETS = (
    {"Aave USDC": "40", "Compound USDC": "0", "Morpho USDC": "60"},
    {"Aave USDC": "0", "Compound USDC": "60", "Morpho USDC": "40"},
)
ENTRIES = [
    {"protocol": "Aave USDC", "apy": "0.05", "tvl": "1000000", "risk": 1},
    {"protocol": "Compound USDC", "apy": "0.04", "tvl": "2000000", "risk": 1},
    {"protocol": "Morpho USDC", "apy": "0.03", "tvl": "500000", "risk": 0},
]


def _owners(run: str) -> tuple[list[Any], list[Any]]:
    users, keys = [], []
    for i in range(3):
        user = get_user_model().objects.create_user(f"bench-{run}-owner{i}", is_staff=True)
        key = Account.create()
        challenge = wallet_challenge_issue(
            user=user, address=key.address, domain="bench.local", uri="http://bench.local/", chain_id=31337
        )
        signed = key.sign_message(encode_defunct(text=challenge.message)).signature.hex()
        wallet_register(user=user, message=challenge.message, signature="0x" + signed.removeprefix("0x"))
        users.append(user)
        keys.append(key)
    return users, keys


def _signature(key: Any, row: SafeTransaction) -> str:
    typed = safe_lib.SafeTx.from_json(row.tx).typed_data()
    return "0x" + Account.sign_typed_data(key.key, full_message=typed).signature.hex().removeprefix("0x")


def _executed(pk: int) -> bool:
    return RebalanceProposal.objects.filter(pk=pk, status=ProposalStatus.EXECUTED).exists()


def _plain_gas(w3: Web3, row: SafeTransaction) -> tuple[int, int]:
    """Gas of the row's calls sent one by one from the Safe's address (impersonated), on a
    snapshot that is reverted: (with the approvals, without them as an EOA with standing
    allowances sends them)."""
    safe = row.vault.safe_address
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    w3.provider.make_request("anvil_impersonateAccount", [safe])  # type: ignore[arg-type]
    w3.provider.make_request("anvil_setBalance", [safe, hex(10**18)])  # type: ignore[arg-type]
    total = without_approvals = 0
    try:
        for call in safe_lib.calls_of(safe_lib.SafeTx.from_json(row.tx)):
            sent = w3.eth.send_transaction({"from": safe, "to": call.to, "data": call.data})  # type: ignore[typeddict-item]
            gas = int(w3.eth.wait_for_transaction_receipt(sent)["gasUsed"])
            total += gas
            if not call.data.startswith("0x095ea7b3"):  # approve(address,uint256)
                without_approvals += gas
    finally:
        w3.provider.make_request("anvil_stopImpersonatingAccount", [safe])  # type: ignore[arg-type]
        w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
    return total, without_approvals


def run(*, proposals: int, concurrency: int, out: Callable[[str], Any]) -> None:
    common.require_real_services()
    logging.getLogger("approvals").setLevel(logging.WARNING)
    port = common.free_port()
    node = processes.anvil(port=port, log_path=Path(settings.VAR_DIR) / "log" / f"bench-anvil-{port}.log")
    node.start().wait_ready(timeout=30)
    url = f"http://127.0.0.1:{port}"
    chain, _ = Chain.objects.update_or_create(
        chain_id=31337, defaults={"name": "bench-anvil", "rpc_url": url, "confirmations": 1, "poll_interval": 0.2}
    )
    w3 = Web3(Web3.HTTPProvider(url))
    run_id = uuid.uuid4().hex[:6]
    out(f"bench flow-b: {proposals} proposals on a 2-of-3 Safe on anvil at {url}")
    latencies: list[float] = []
    gas: list[int] = []
    try:
        _, keys = _owners(run_id)
        vault = chain_bootstrap(
            chain=chain,
            vault_id=f"bench-safe-{run_id}",
            protocols=DEFAULT_PROTOCOLS,
            assets=10**12,
            say=lambda _: None,
            safe_owners=tuple(k.address for k in keys),
            safe_threshold=2,
        )
        oracle = Account.create()
        oracle_key = OracleKey.objects.create(address=oracle.address, name=f"bench oracle {run_id}")
        policy_activate(
            policy=policy_draft(
                vault=vault,
                max_exposure_pct=Decimal(60),
                max_risk_score=5,
                min_interval_seconds=0,
                max_feed_age_seconds=3600,
                max_turnover_pct=Decimal(100),
                approval_threshold=0,
                whitelist=Protocol.objects.filter(chain=chain, name__in=DEFAULT_PROTOCOLS),
                oracles=[oracle_key],
            )
        )
        feed_accept(payload=_feed(oracle))
        operator = get_user_model().objects.create_user(f"bench-{run_id}-operator", is_staff=True)
        first = proposal_create(vault=vault, allocation=TARGETS[0], proposer=operator)
        main, _ = proposal_safe_txs(first)
        assert main is not None
        plain_total, plain_calls = _plain_gas(w3, main)
        with (
            common.worker(name="flow-b", concurrency=concurrency, queues="workflows"),
            common.worker(name="flow-b-relay", concurrency=concurrency, queues="relay,triggers"),
        ):
            for i in range(proposals):
                proposal = (
                    first if i == 0 else proposal_create(vault=vault, allocation=TARGETS[i % 2], proposer=operator)
                )
                row, _ = proposal_safe_txs(proposal)
                assert row is not None
                proposal_sign(proposal=proposal, signature=_signature(keys[0], row), decision="approve")
                last = _signature(keys[1], row)
                started = time.time()
                proposal_sign(proposal=proposal, signature=last, decision="approve")
                common.wait_until(partial(_executed, proposal.pk), timeout=60, what=f"proposal {i} to execute")
                latencies.append((time.time() - started) * 1000)
                relay = RelayTransaction.objects.get(safe_tx=row.pk)
                gas.append(int(w3.eth.get_transaction_receipt(HexStr(relay.mined_hash))["gasUsed"]))
                if (i + 1) % 20 == 0:
                    out(f"  {i + 1}/{proposals}: p50 so far {common.percentile(latencies, 50):.0f} ms")
    finally:
        node.stop()
    safe_gas = sum(gas) / len(gas)
    rows = [
        {
            "path": "last signature -> execTransaction confirmed",
            "n": len(latencies),
            "p50 ms": common.percentile(latencies, 50),
            "p99 ms": common.percentile(latencies, 99),
            "max ms": max(latencies),
        },
    ]
    out("")
    common.table(rows, out)
    out("")
    common.table(
        [
            {"rebalance sent as": "one execTransaction (Safe, MultiSend, approvals inside)", "gas": round(safe_gas)},
            {"rebalance sent as": "plain calls from one address, with the same approvals", "gas": plain_total},
            {"rebalance sent as": "plain calls, standing allowances (as Flow A sends them)", "gas": plain_calls},
        ],
        out,
    )
    out(
        common.result_line(
            "flow-b",
            {
                "p50_ms": rows[0]["p50 ms"],
                "p99_ms": rows[0]["p99 ms"],
                "proposals": len(latencies),
                "safe_gas": round(safe_gas),
                "plain_gas": plain_total,
                "plain_gas_standing_allowance": plain_calls,
                "safe_over_plain": round(safe_gas / plain_total, 3),
            },
        )
    )


def _feed(oracle: Any) -> dict[str, Any]:
    from django.utils import timezone
    from eth_account.messages import encode_typed_data

    from vaults.services.feeds import FEED_DOMAIN, FEED_TYPES

    now = timezone.now()
    message = {"oracle": oracle.address, "timestamp": int(now.timestamp()), "entries": ENTRIES}
    signed = oracle.sign_message(
        encode_typed_data(domain_data=FEED_DOMAIN, message_types=FEED_TYPES, message_data=message)
    )
    return {
        "oracle": oracle.address,
        "timestamp": now.isoformat(),
        "entries": ENTRIES,
        "signature": "0x" + signed.signature.hex().removeprefix("0x"),
    }
