"""`bench flow-a`'s gas section: what a rebalance costs through the vault's policy module
(vaults/contracts/VaultPolicyModule.sol), per action, against the same calls sent plainly and
through the Safe's own execTransaction.

On the bench's anvil, before its workers start (the reverts here would undo what they send): a
2-of-3 Safe of fresh owner keys, its module with a fresh operator key, enabled and given a
policy by the owners' Safe transaction as a real policy has it (vaults/services/module_policy:
approve on the asset with the spender bound to a policy target, deposit with the receiver bound
to the Safe, withdraw with receiver and owner bound to the Safe, on three protocol vaults). The
Safe is funded and then puts part of its funds in each protocol through one module intent, so
the module's nonce, like the Safe's, is past its first (and dearest) write.

An action is one protocol's move: a withdrawal (one call) or a deposit (approve the exact
amount, then deposit: two calls). Each case is sent three ways, each from the same state
(anvil snapshot, reverted after):
- module: one executeIntent, signed by the operator and sent by a relayer account that is
  neither owner nor operator (it only pays gas);
- plain: each call its own transaction from the Safe's address as a plain account (impersonated:
  the same funds and the same calldata), gas summed; and again with max allowances standing,
  set beforehand and not counted (the approvals left out), as Flow A's vault account has them;
- Safe: one execTransaction of a MultiSend of the calls, signed by two owners, sent by the relayer."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.management.base import CommandError
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3

from orchestrator.devtools.benchmarks import anvil_gas, common
from relayer.rpc import as_address
from vaults import module as vpm
from vaults import onchain
from vaults import safe as safe_lib

UNIT = 10**6  # the TestAsset has 6 decimals
FUNDS = 1_000_000 * UNIT
POSITION = 200_000 * UNIT  # put in each protocol at the start; the rest stays idle
MOVE = 50_000 * UNIT
POLICY_HASH = keccak(text="bench flow-a: module gas")
TYPICAL = "withdraw A, B; deposit C"  # a rebalance of three protocols, as flow-b's proposals are


@dataclass(frozen=True)
class Bed:
    """The Safe with its module and policy, on the chain `w3` talks to."""

    w3: Web3
    chain_id: int
    relayer: str  # an unlocked node account, neither owner nor operator
    multi_send: str
    asset: str
    protocols: dict[str, str]  # A, B, C -> protocol vault
    safe: str
    module: str
    owners: list[LocalAccount]
    operator: LocalAccount

    def withdraw(self, name: str, amount: int = MOVE) -> list[safe_lib.Call]:
        data = onchain.withdraw_calldata(amount, self.safe, self.safe)
        return [safe_lib.Call(to=self.protocols[name], value=0, data=data)]

    def deposit(self, name: str, amount: int = MOVE) -> list[safe_lib.Call]:
        vault = self.protocols[name]
        return [
            safe_lib.Call(to=as_address(self.asset), value=0, data=onchain.approve_calldata(vault, amount)),
            safe_lib.Call(to=vault, value=0, data=onchain.deposit_calldata(amount, self.safe)),
        ]


def _mined(w3: Web3, tx: dict[str, Any], what: str) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction(tx), timeout=30)  # type: ignore[arg-type]
    if receipt["status"] != 1:
        raise CommandError(f"{what} reverted (tx {receipt['transactionHash'].hex()})")
    return receipt


def via_safe(bed: Bed, calls: list[safe_lib.Call]) -> int:
    """The calls as one execTransaction (a MultiSend) signed by two owners, sent by the relayer;
    its gas used."""
    w3 = bed.w3
    tx = safe_lib.multisend_tx(
        safe=bed.safe,
        chain_id=bed.chain_id,
        multi_send=bed.multi_send,
        calls=calls,
        nonce=safe_lib.safe_state(w3, bed.safe).nonce,
    )
    signatures: dict[str, str] = {
        owner.address: "0x" + bytes(Account.sign_typed_data(owner.key, full_message=tx.typed_data()).signature).hex()
        for owner in bed.owners[:2]
    }
    data = safe_lib.exec_transaction_calldata(tx, signatures)
    receipt = _mined(w3, {"from": bed.relayer, "to": as_address(bed.safe), "data": data}, "execTransaction")
    if not safe_lib.safe_execution_succeeded(receipt, safe=bed.safe, safe_tx_hash=tx.hash()):
        raise CommandError("the Safe logged ExecutionFailure: its calls are not the rebalance measured")
    return int(receipt["gasUsed"])


def via_module(bed: Bed, calls: list[safe_lib.Call]) -> int:
    """The calls as one executeIntent, signed by the operator, sent by the relayer; its gas used."""
    w3 = bed.w3
    state = vpm.module_state(w3, bed.module)
    intent = vpm.ModuleIntent(
        module=bed.module,
        chain_id=bed.chain_id,
        calls=calls,
        nonce=state.nonce,
        deadline=int(w3.eth.get_block("latest")["timestamp"]) + 600,
        policy_hash=state.policy_hash,
    )
    data = vpm.execute_intent_calldata(intent, vpm.intent_sign(intent, bed.operator.key))
    receipt = _mined(w3, {"from": bed.relayer, "to": as_address(bed.module), "data": data}, "executeIntent")
    return int(receipt["gasUsed"])


def setup(w3: Web3) -> Bed:
    """The Safe, its module and policy, funded, with POSITION in each protocol (see the module's
    docstring). Sends from the node's first two accounts (deployer, relayer)."""
    deployer, relayer = list(w3.eth.accounts)[:2]
    contracts = safe_lib.safe_contracts(w3, deployer=deployer)
    asset = onchain.deploy_asset(w3=w3, deployer=deployer)
    protocols: dict[str, str] = {
        name: onchain.deploy_protocol_vault(w3=w3, deployer=deployer, asset=asset, name=f"Bench {name}", symbol=name)
        for name in ("A", "B", "C")
    }
    owners: list[LocalAccount] = [Account.create() for _ in range(3)]
    operator: LocalAccount = Account.create()
    safe = safe_lib.safe_deploy_dev(
        w3,
        deployer=deployer,
        owners=[o.address for o in owners],
        threshold=2,
        salt_nonce=secrets.randbits(64),
        contracts=contracts,
    )
    module = vpm.module_deploy_dev(w3, deployer=deployer, safe=safe, operator=operator.address)
    onchain.fund_vault_account(w3=w3, asset=asset, account_address=safe, assets=FUNDS, eth=0)
    bed = Bed(
        w3, w3.eth.chain_id, relayer, contracts.multi_send_call_only, asset, protocols, safe, module, owners, operator
    )
    # As vaults.services.module_policy.policy_allowed_calls has them for a whitelist of three.
    allowed = [vpm.AllowedCall(to=asset, selector=onchain.APPROVE, target_words=(0,))]
    for vault in protocols.values():
        allowed.append(vpm.AllowedCall(to=vault, selector=onchain.DEPOSIT, safe_words=(1,)))
        allowed.append(vpm.AllowedCall(to=vault, selector=onchain.WITHDRAW, safe_words=(1, 2)))
    via_safe(
        bed,
        [
            vpm.enable_module_call(safe=safe, module=module),
            vpm.commit_policy_call(module=module, policy_hash=POLICY_HASH, allowed=allowed),
            # A policy without a spending limit commits its removal (module_policy.policy_commit_calls).
            vpm.set_spending_limit_call(module=module, token=asset, amount=0, period_seconds=0),
        ],
    )
    via_module(bed, [c for name in protocols for c in bed.deposit(name, POSITION)])
    return bed


def cases(bed: Bed) -> list[tuple[str, int, list[safe_lib.Call]]]:
    """(what, actions, calls): one action of each kind, then mixed rebalances of 2 to 4 actions.
    Three protocols never need four moves: that case is there for how the cost grows."""
    w, d = bed.withdraw, bed.deposit
    return [
        ("withdraw A", 1, w("A")),
        ("deposit A", 1, d("A")),
        ("withdraw A; deposit B", 2, w("A") + d("B")),
        (TYPICAL, 3, w("A") + w("B") + d("C")),
        ("withdraw A; deposit B, C", 3, w("A") + d("B") + d("C")),
        ("withdraw A, B, C; deposit A", 4, w("A") + w("B") + w("C") + d("A", 2 * MOVE)),
    ]


def _plain(bed: Bed, calls: list[safe_lib.Call], *, standing: bool) -> int:
    w3, safe = bed.w3, bed.safe
    approves = [c for c in calls if c.data.startswith("0x" + onchain.APPROVE.hex())]
    with anvil_gas.impersonating(w3, safe), anvil_gas.reverted(w3):
        anvil_gas.rpc(w3, "anvil_setBalance", [safe, hex(10**18)])
        if not standing:
            return anvil_gas.send_as(w3, safe, calls)
        # Max allowances to every spender, set beforehand and not counted.
        spenders = {"0x" + c.data[34:74] for c in approves}
        anvil_gas.send_as(
            w3, safe, [safe_lib.Call(to=bed.asset, value=0, data=onchain.approve_calldata(s)) for s in spenders]
        )
        return anvil_gas.send_as(w3, safe, [c for c in calls if c not in approves])


def measure(bed: Bed) -> list[dict[str, Any]]:
    """Each case sent each way from the same state; the chain is left as `setup` left it."""
    rows = []
    for what, actions, calls in cases(bed):
        with anvil_gas.reverted(bed.w3):
            module = via_module(bed, calls)
        with anvil_gas.reverted(bed.w3):
            safe = via_safe(bed, calls)
        plain = _plain(bed, calls, standing=False)
        standing = _plain(bed, calls, standing=True)
        rows.append(
            {
                "rebalance": what,
                "actions": actions,
                "calls": len(calls),
                "module gas": module,
                "plain gas": plain,
                "plain, allowances standing": standing,
                "Safe gas": safe,
                "module / action": round(module / actions),
                "module / plain": f"{module / plain:.3f}",
                "module / Safe": f"{module / safe:.3f}",
            }
        )
    return rows


def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The RESULT keys: the median gas per action over the cases, and the typical case's ratios."""
    typical = next(r for r in rows if r["rebalance"] == TYPICAL)
    return {
        "module_gas_per_action": round(common.median([r["module gas"] / r["actions"] for r in rows])),
        "module_over_plain": f"{typical['module gas'] / typical['plain gas']:.3f}",
        "module_over_plain_standing_allowance": f"{typical['module gas'] / typical['plain, allowances standing']:.3f}",
        "module_over_safe": f"{typical['module gas'] / typical['Safe gas']:.3f}",
        "module_gas_typical": typical["module gas"],
    }


def run(w3: Web3, out: Callable[[str], Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sets up, measures, and returns the table's rows and the RESULT keys (printed by the caller,
    after the latency)."""
    out("gas: a 2-of-3 Safe with its policy module, three protocol vaults; each rebalance from the same state")
    rows = measure(setup(w3))
    return rows, figures(rows)


def report(rows: list[dict[str, Any]], out: Callable[[str], Any]) -> None:
    out("gas per rebalance through the policy module, against the same calls sent plainly and by the Safe:")
    common.table(rows, out)
    out("  an action: a withdrawal (1 call) or a deposit (approve + deposit, 2 calls); plain: one tx per call")
