"""Flow A through a vault's policy module: the whole rebalance as one executeIntent.

The positions step reads the module with the positions (`module_seen`: its nonce, operator,
committed policy and the asset's spending limit, at one block time) and journals it. decide
turns the plan's actions into the Safe's calls (`module_calls`: an approve of exactly each
deposit's amount before it; the Safe keeps no standing allowance), checks them off chain
with the module's own rules (`module_refusal`: the same names the contract reverts with), and
intent_emit signs the module's ExecutionIntent with the operator key. The relay step sends
executeIntent from the vault's account key, which only pays the gas: the module runs all of
the calls or none (docs/flow-a.md#through-the-policy-module)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.engine import Blocked, RetryableError
from relayer.rpc import TRANSPORT_ERRORS, as_address, web3_for
from vaults import module as vpm
from vaults import onchain
from vaults.module.checks import intent_refusal
from vaults.safe import Call


@dataclass(frozen=True)
class ModuleSeen:
    """The module as the positions step read it (journaled; field names are the journal's)."""

    module: str
    safe: str
    operator: str
    nonce: int
    policyHash: str
    allowed: list[list[Any]]  # [to, selector 0x-hex, argument rule]
    limit: list[int] | None  # the asset's [amount, spent, period, windowStart], None: no limit
    blockTime: int

    def state(self, *, chain_id: int) -> vpm.ModuleState:
        return vpm.ModuleState(
            module=as_address(self.module),
            chain_id=chain_id,
            safe=as_address(self.safe),
            operator=as_address(self.operator),
            nonce=self.nonce,
            policy_hash=bytes.fromhex(self.policyHash.removeprefix("0x")),
            allowed=[
                vpm.AllowedCall.of_rule(to, bytes.fromhex(sel.removeprefix("0x")), rule)
                for to, sel, rule in self.allowed
            ],
        )

    def limits(self, asset: str) -> dict[str, vpm.Limit]:
        return {as_address(asset): vpm.Limit(*self.limit)} if self.limit else {}


def module_seen(*, rpc_url: str, module: str, asset: str) -> ModuleSeen:
    """Reads the module's state, the asset's limit and the block time. Raises RetryableError
    when the chain cannot be reached."""
    try:
        found = vpm.module_snapshot(web3_for(rpc_url), module, tokens=(asset,))
    except TRANSPORT_ERRORS as exc:
        raise RetryableError(f"chain at {rpc_url} unreachable reading the module {module}") from exc
    except vpm.ModuleError as exc:
        raise Blocked(f"the vault's policy module cannot be read: {exc}") from exc
    state, limit = found.state, found.limits.get(as_address(asset))
    block_time = found.block_time
    return ModuleSeen(
        module=as_address(module),
        safe=state.safe,
        operator=state.operator,
        nonce=state.nonce,
        policyHash="0x" + state.policy_hash.hex(),
        allowed=[[a.to, "0x" + a.selector.hex(), a.arg_rule] for a in state.allowed],
        limit=None if limit is None else [limit.amount, limit.spent, limit.period, limit.window_start],
        blockTime=block_time,
    )


def module_calls(*, actions: list[dict[str, Any]], asset: str) -> list[Call]:
    """The Safe's calls for a plan's actions, in order: each deposit preceded by an approve of
    exactly its amount."""
    calls: list[Call] = []
    for action in actions:
        if action["kind"] == "deposit":
            calls.append(
                Call(
                    to=as_address(asset),
                    value=0,
                    data=onchain.approve_calldata(action["address"], int(action["amount"])),
                )
            )
        calls.append(Call(to=as_address(action["address"]), value=0, data=action["calldata"]))
    return calls


def module_intent(*, seen: ModuleSeen, chain_id: int, calls: list[Call], deadline: int) -> vpm.ModuleIntent:
    """The module's ExecutionIntent for `calls`, at the module's next nonce, under the policy it holds."""
    return vpm.ModuleIntent(
        module=seen.module,
        chain_id=chain_id,
        calls=calls,
        nonce=seen.nonce,
        deadline=deadline,
        policy_hash=bytes.fromhex(seen.policyHash.removeprefix("0x")),
    )


def module_refusal(
    *, seen: ModuleSeen, intent: vpm.ModuleIntent, operator: str, asset: str, committed_hash: str, version: int
) -> str | None:
    """Why the module would refuse this intent signed by `operator`, in the words of the rule
    it would revert with; or, when the module would take it but holds another policy than the
    active version's, why we refuse it (PolicyNotCommitted, our rule alone: the owners have not
    committed the version the plan was made under). None when it may be sent."""
    refused = intent_refusal(
        seen.state(chain_id=intent.chain_id),
        intent,
        signer=as_address(operator),
        now=seen.blockTime,
        limits=seen.limits(asset),
    )
    if refused is not None:
        return vpm.module_error_of(refused)
    if committed_hash.lower() != seen.policyHash.lower():
        return (
            f"PolicyNotCommitted: the module holds policy {seen.policyHash}, not v{version}'s "
            f"({committed_hash or 'never committed'}); the Safe's owners must commit v{version} first"
        )
    return None


def module_intent_json(intent: vpm.ModuleIntent) -> dict[str, Any]:
    """What ExecutionIntent.module_intent stores: everything needed to send it again."""
    return {
        "module": intent.module,
        "nonce": intent.nonce,
        "deadline": intent.deadline,
        "policyHash": "0x" + intent.policy_hash.hex(),
        "calls": [{"to": c.to, "value": str(c.value), "data": c.data} for c in intent.calls],
    }


def module_intent_of(stored: dict[str, Any], *, chain_id: int) -> vpm.ModuleIntent:
    return vpm.ModuleIntent(
        module=stored["module"],
        chain_id=chain_id,
        calls=[Call(to=c["to"], value=int(c["value"]), data=c["data"]) for c in stored["calls"]],
        nonce=int(stored["nonce"]),
        deadline=int(stored["deadline"]),
        policy_hash=bytes.fromhex(stored["policyHash"].removeprefix("0x")),
    )
