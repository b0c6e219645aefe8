"""VaultPolicyModule on a real anvil with the real Safe (v1.4.1): the owners enable it and commit a
policy by Safe transactions; an operator-signed intent runs as one module call; every refusal
reverts on chain with its named custom error and leaves balances, allowances and the nonce as
they were."""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError

from relayer.keys import key_manager
from relayer.models import KeyPurpose
from relayer.rpc import as_address
from vaults import module as vpm
from vaults import onchain
from vaults import safe as safe_lib

OWNER_KEYS = ["0x" + f"{0x0DD500 + i:064x}" for i in range(3)]
OWNERS = [Account.from_key(k) for k in OWNER_KEYS]
OPERATOR = Account.from_key("0x" + f"{0x0BE7A7:064x}")
FORGER = Account.from_key("0x" + f"{0xF0F0F0:064x}")
POLICY_HASH = bytes.fromhex("aa" * 32)
MINTED = 10**9
DAY = 86_400


@dataclasses.dataclass
class World:
    w3: Web3
    chain_id: int
    deployer: str
    relayer: str  # an unlocked node account that is neither owner nor operator
    contracts: safe_lib.SafeContracts
    asset: str
    vault: str  # a ProtocolVault over the asset
    other_vault: str  # another one, outside every policy here


@dataclasses.dataclass
class Vault:
    world: World
    safe: str
    module: str

    @property
    def w3(self) -> Web3:
        return self.world.w3

    def owners_execute(self, calls: list[safe_lib.Call]) -> None:
        """The calls as one Safe transaction signed by two of the three owners, relayed."""
        w3, world = self.w3, self.world
        tx = safe_lib.multisend_tx(
            safe=self.safe,
            chain_id=world.chain_id,
            multi_send=world.contracts.multi_send_call_only,
            calls=calls,
            nonce=safe_lib.safe_state(w3, self.safe).nonce,
        )
        signatures = {}
        for owner in OWNERS[:2]:
            typed = json.loads(json.dumps(tx.typed_data()))
            signatures[owner.address] = (
                "0x" + bytes(Account.sign_typed_data(owner.key, full_message=typed).signature).hex()
            )
        data = safe_lib.exec_transaction_calldata(tx, signatures)
        tx_hash = w3.eth.send_transaction({"from": world.relayer, "to": as_address(self.safe), "data": data})
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        assert safe_lib.safe_execution_succeeded(receipt, safe=self.safe, safe_tx_hash=tx.hash())

    def intent(self, calls: list[safe_lib.Call], **changes: Any) -> vpm.ModuleIntent:
        state = vpm.module_state(self.w3, self.module)
        fields = {
            "module": self.module,
            "chain_id": self.world.chain_id,
            "calls": calls,
            "nonce": state.nonce,
            "deadline": int(self.w3.eth.get_block("latest")["timestamp"]) + 600,
            "policy_hash": state.policy_hash,
        }
        return vpm.ModuleIntent(**{**fields, **changes})

    def submit(self, intent: vpm.ModuleIntent, signature: str, *, gas: int | None = None) -> Any:
        """Sent by the relayer key; with `gas`, sent without estimating (so a revert is mined)."""
        tx: dict[str, Any] = {
            "from": self.world.relayer,
            "to": as_address(self.module),
            "data": vpm.execute_intent_calldata(intent, signature),
        }
        if gas is not None:
            tx["gas"] = gas
        return self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_transaction(tx), timeout=30)

    def snapshot(self) -> tuple[Any, ...]:
        """Everything an intent here could change: positions, allowances and the module's nonce."""
        w3, world = self.w3, self.world
        token = w3.eth.contract(address=as_address(world.asset), abi=onchain.compiled()["TestAsset"].abi)
        allowances = tuple(
            token.functions.allowance(as_address(self.safe), as_address(v)).call()
            for v in (world.vault, world.other_vault)
        )
        held = onchain.positions(
            w3=w3, account=self.safe, asset=world.asset, protocols={"a": world.vault, "b": world.other_vault}
        )
        return held, allowances, vpm.module_state(w3, self.module).nonce

    def refused(self, intent: vpm.ModuleIntent, signature: str) -> str:
        """The module's refusal, in words: asked by eth_call, then mined as a reverted transaction
        that changed nothing."""
        before = self.snapshot()
        with pytest.raises(ContractLogicError) as caught:
            self.w3.eth.call(
                {
                    "from": self.world.relayer,
                    "to": as_address(self.module),
                    "data": vpm.execute_intent_calldata(intent, signature),
                }
            )
        words = vpm.module_error(str(caught.value.data))
        assert self.submit(intent, signature, gas=1_000_000)["status"] == 0
        assert self.snapshot() == before
        return words


def approve(token: str, spender: str, amount: int) -> safe_lib.Call:
    return safe_lib.Call(to=as_address(token), value=0, data=onchain.approve_calldata(spender, amount))


def deposit(vault: str, amount: int, receiver: str) -> safe_lib.Call:
    return safe_lib.Call(to=as_address(vault), value=0, data=onchain.deposit_calldata(amount, receiver))


@pytest.fixture(scope="module")
def world(anvil: str) -> World:
    w3 = Web3(Web3.HTTPProvider(anvil))
    deployer, relayer = w3.eth.accounts[0], w3.eth.accounts[1]
    contracts = safe_lib.safe_contracts(w3, deployer=deployer)
    asset = onchain.deploy_asset(w3=w3, deployer=deployer)
    vault = onchain.deploy_protocol_vault(w3=w3, deployer=deployer, asset=asset, name="Aave tUSD", symbol="aTUSD")
    other = onchain.deploy_protocol_vault(w3=w3, deployer=deployer, asset=asset, name="Other", symbol="oTUSD")
    return World(w3, w3.eth.chain_id, deployer, relayer, contracts, asset, vault, other)


def vault_with_module(world: World, *, operator: str = OPERATOR.address) -> Vault:
    """A new 2-of-3 Safe holding MINTED of the asset, with its own module enabled and a policy of
    (asset, approve) and (vault, deposit) committed, all by the owners' Safe transactions."""
    w3 = world.w3
    safe = safe_lib.safe_deploy_dev(
        w3,
        deployer=world.deployer,
        owners=[o.address for o in OWNERS],
        threshold=2,
        salt_nonce=secrets.randbits(64),  # the module's anvil is shared: a Safe of our own
    )
    onchain.fund_vault_account(w3=w3, asset=world.asset, account_address=safe, assets=MINTED, eth=0)
    module = vpm.module_deploy_dev(w3, deployer=world.deployer, safe=safe, operator=operator)
    vault = Vault(world, safe, module)
    policy = [
        vpm.AllowedCall(to=world.asset, selector=onchain.APPROVE),
        vpm.AllowedCall(to=world.vault, selector=onchain.DEPOSIT),
    ]
    vault.owners_execute(
        [
            vpm.enable_module_call(safe=safe, module=module),
            vpm.commit_policy_call(module=module, policy_hash=POLICY_HASH, allowed=policy),
        ]
    )
    return vault


# --- Without a chain -------------------------------------------------------------------------


def test_module_error_names_each_rule_in_words() -> None:
    def encoded(signature: str, types: list[str], args: list[Any]) -> str:
        from eth_utils import keccak

        return "0x" + (keccak(text=signature)[:4] + abi_encode(types, args)).hex()

    wrong = encoded("WrongNonce(uint256,uint256)", ["uint256", "uint256"], [3, 2])
    assert vpm.module_error(wrong) == (
        "WrongNonce: the intent's nonce is not the module's next one (replayed or out of order) (expected=3, given=2)"
    )
    assert vpm.module_error(f"('execution reverted', '{wrong}')").startswith("WrongNonce:")  # as web3 words it
    assert vpm.module_error(encoded("NotSafe()", [], [])) == f"NotSafe: {vpm.MODULE_ERRORS['NotSafe']}"
    inner = encoded("Error(string)", ["string"], ["boom"])
    failed = encoded("CallFailed(uint256,bytes)", ["uint256", "bytes"], [1, bytes.fromhex(inner[2:])])
    assert vpm.module_error(failed).endswith("(call 1: boom)")
    assert vpm.module_revert(failed) == vpm.ModuleRevert("CallFailed", {"index": 1, "reason": bytes.fromhex(inner[2:])})
    assert vpm.module_error("nonce too low") == "nonce too low"
    declared = {i["name"] for i in vpm.module_abi() if i["type"] == "error"}
    # Every error the contract declares has its words, but OpenZeppelin's ShortStrings ones (the
    # EIP-712 name, only in the constructor).
    assert declared - set(vpm.MODULE_ERRORS) == {"InvalidShortString", "StringTooLong"}
    assert set(vpm.MODULE_ERRORS) <= declared


def test_the_module_has_no_way_to_ask_for_a_delegatecall() -> None:
    """The operation is not part of any call the module takes: it passes CALL (0) itself."""
    execute = next(i for i in vpm.module_abi() if i.get("name") == "executeIntent")
    assert [i["name"] for i in execute["inputs"]] == ["calls", "nonce_", "deadline", "signature"]
    assert [c["name"] for c in execute["inputs"][0]["components"]] == ["to", "value", "data"]
    source = (onchain.CONTRACTS_DIR / "VaultPolicyModule.sol").read_text()
    assert source.count("IAvatar.Operation.") == 1 and "IAvatar.Operation.Call" in source


# --- On anvil --------------------------------------------------------------------------------


def test_the_owners_enable_the_module_and_commit_its_policy(world: World) -> None:
    vault = vault_with_module(world)
    assert vpm.module_enabled(world.w3, safe=vault.safe, module=vault.module)
    state = vpm.module_state(world.w3, vault.module)
    assert (state.safe, state.operator, state.nonce, state.policy_hash) == (
        vault.safe,
        OPERATOR.address,
        0,
        POLICY_HASH,
    )
    assert state.allowed == [
        vpm.AllowedCall(world.asset, onchain.APPROVE),
        vpm.AllowedCall(world.vault, onchain.DEPOSIT),
    ]
    # A new commit replaces the set: the old pairs are gone.
    replaced = [vpm.AllowedCall(world.other_vault, onchain.DEPOSIT)]
    vault.owners_execute([vpm.commit_policy_call(module=vault.module, policy_hash=b"\x01" * 32, allowed=replaced)])
    state = vpm.module_state(world.w3, vault.module)
    assert (state.policy_hash, state.allowed) == (b"\x01" * 32, replaced)
    on_chain: Any = world.w3.eth.contract(address=as_address(vault.module), abi=vpm.module_abi())
    assert not on_chain.functions.isAllowed(world.vault, onchain.DEPOSIT).call()


def test_an_operator_signed_intent_runs_as_one_module_call(world: World) -> None:
    vault = vault_with_module(world)
    amount = 250_000_000
    intent = vault.intent([approve(world.asset, world.vault, amount), deposit(world.vault, amount, vault.safe)])
    on_chain: Any = world.w3.eth.contract(address=as_address(vault.module), abi=vpm.module_abi())
    calls = [(c.to, c.value, bytes.fromhex(c.data[2:])) for c in intent.calls]
    assert bytes(on_chain.functions.intentDigest(calls, intent.nonce, intent.deadline).call()) == intent.digest()

    receipt = vault.submit(intent, vpm.intent_sign(intent, OPERATOR.key))
    assert receipt["status"] == 1
    print(f"\nexecuteIntent (approve + deposit) gas used: {receipt['gasUsed']}")
    assert receipt["gasUsed"] < 250_000
    held, allowances, nonce = vault.snapshot()
    assert held.idle == MINTED - amount and held.by_protocol == {"a": amount, "b": 0}
    assert (allowances, nonce) == ((0, 0), 1)


@pytest.mark.django_db
def test_an_intent_signed_by_the_key_manager_runs(world: World) -> None:
    key = key_manager().create_key(purpose=KeyPurpose.OPERATOR, label="policy module test")
    vault = vault_with_module(world, operator=key.address)
    intent = vault.intent([approve(world.asset, world.vault, 5), deposit(world.vault, 5, vault.safe)])
    signature = vpm.intent_sign_with_key(intent, key=key)
    assert vault.submit(intent, signature)["status"] == 1
    assert vault.snapshot()[0].by_protocol["a"] == 5


def test_forged_replayed_and_expired_intents_revert_with_their_names(world: World) -> None:
    vault = vault_with_module(world)
    calls = [approve(world.asset, world.vault, 100), deposit(world.vault, 100, vault.safe)]
    intent = vault.intent(calls)
    assert vault.refused(intent, vpm.intent_sign(intent, FORGER.key)).startswith("BadSignature:")
    # Signed by the operator, but under another policy than the committed one.
    stale = dataclasses.replace(intent, policy_hash=b"\x02" * 32)
    assert vault.refused(stale, vpm.intent_sign(stale, OPERATOR.key)).startswith("BadSignature:")
    # Signed over other calls than the ones submitted.
    signature = vpm.intent_sign(intent, OPERATOR.key)
    more = dataclasses.replace(intent, calls=[approve(world.asset, world.vault, 10**8), calls[1]])
    assert vault.refused(more, signature).startswith("BadSignature:")

    assert vault.submit(intent, signature)["status"] == 1
    replayed = vault.refused(intent, signature)
    assert replayed.startswith("WrongNonce:") and replayed.endswith("(expected=1, given=0)")
    ahead = dataclasses.replace(intent, nonce=5)
    assert vault.refused(ahead, vpm.intent_sign(ahead, OPERATOR.key)).startswith("WrongNonce:")

    now = int(world.w3.eth.get_block("latest")["timestamp"])
    expired = vault.intent(calls, deadline=now - 1)
    assert vault.refused(expired, vpm.intent_sign(expired, OPERATOR.key)).startswith(
        f"Expired: {vpm.MODULE_ERRORS['Expired']} (deadline={now - 1}, nowTs="
    )


def test_calls_outside_the_policy_revert_with_target_not_allowed(world: World) -> None:
    vault = vault_with_module(world)
    outside = [
        deposit(world.other_vault, 10, vault.safe),  # a target the policy does not name
        safe_lib.Call(world.vault, 0, onchain.withdraw_calldata(1, OWNERS[0].address, vault.safe)),  # its selector
        safe_lib.Call(OWNERS[0].address, 1, "0x"),  # plain ETH: selector 0x00000000
    ]
    for call in outside:
        intent = vault.intent([approve(world.asset, world.vault, 10), call])
        words = vault.refused(intent, vpm.intent_sign(intent, OPERATOR.key))
        assert words.startswith("TargetNotAllowed:") and as_address(call.to).lower() in words.lower()

    # The Safe itself is never a target, even if the owners whitelist it.
    enable = vpm.enable_module_call(safe=vault.safe, module=FORGER.address)
    allowed = [vpm.AllowedCall(vault.safe, bytes.fromhex(enable.data[2:10]))]
    vault.owners_execute([vpm.commit_policy_call(module=vault.module, policy_hash=POLICY_HASH, allowed=allowed)])
    intent = vault.intent([enable])
    assert vault.refused(intent, vpm.intent_sign(intent, OPERATOR.key)).startswith("TargetNotAllowed:")


def test_a_spending_limit_caps_approvals_per_period(world: World) -> None:
    vault = vault_with_module(world)
    vault.owners_execute(
        [vpm.set_spending_limit_call(module=vault.module, token=world.asset, amount=1_000, period_seconds=DAY)]
    )
    first = vault.intent([approve(world.asset, world.vault, 600), deposit(world.vault, 600, vault.safe)])
    assert vault.submit(first, vpm.intent_sign(first, OPERATOR.key))["status"] == 1

    second = vault.intent([approve(world.asset, world.vault, 600), deposit(world.vault, 600, vault.safe)])
    words = vault.refused(second, vpm.intent_sign(second, OPERATOR.key))
    assert words.startswith("SpendingLimitExceeded:") and words.endswith("requested=600, remaining=400)")

    # A new period starts from nothing spent.
    world.w3.provider.make_request("evm_increaseTime", [DAY])
    world.w3.provider.make_request("evm_mine", [])
    third = vault.intent([approve(world.asset, world.vault, 1_000), deposit(world.vault, 1_000, vault.safe)])
    assert vault.submit(third, vpm.intent_sign(third, OPERATOR.key))["status"] == 1
    assert vault.snapshot()[0].by_protocol["a"] == 1_600


def test_the_relayer_key_cannot_change_the_module(world: World) -> None:
    vault = vault_with_module(world)
    w3, relayer = world.w3, world.relayer
    for call in (
        vpm.commit_policy_call(
            module=vault.module, policy_hash=POLICY_HASH, allowed=[vpm.AllowedCall(world.other_vault, onchain.DEPOSIT)]
        ),
        vpm.set_spending_limit_call(module=vault.module, token=world.asset, amount=0, period_seconds=0),
        vpm.set_operator_call(module=vault.module, operator=relayer),
    ):
        before = vpm.module_state(w3, vault.module)
        with pytest.raises(ContractLogicError) as caught:
            w3.eth.call({"from": relayer, "to": as_address(vault.module), "data": call.data})
        assert vpm.module_error(str(caught.value.data)) == f"NotSafe: {vpm.MODULE_ERRORS['NotSafe']}"
        tx_hash = w3.eth.send_transaction(
            {"from": relayer, "to": as_address(vault.module), "data": call.data, "gas": 300_000}
        )
        assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] == 0
        assert vpm.module_state(w3, vault.module) == before


def test_a_batch_whose_last_call_fails_reverts_as_a_whole(world: World) -> None:
    vault = vault_with_module(world)
    # Approves 100, deposits 100, then deposits 1 more than the allowance left (0): the last fails.
    intent = vault.intent(
        [
            approve(world.asset, world.vault, 100),
            deposit(world.vault, 100, vault.safe),
            deposit(world.vault, 1, vault.safe),
        ]
    )
    words = vault.refused(intent, vpm.intent_sign(intent, OPERATOR.key))
    assert words.startswith("CallFailed:") and "(call 2: ERC20InsufficientAllowance" in words
    held, allowances, nonce = vault.snapshot()
    assert (held.idle, held.by_protocol, allowances, nonce) == (MINTED, {"a": 0, "b": 0}, (0, 0), 0)
