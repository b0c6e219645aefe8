"""The Safe (v1.4.1) chain library on a real anvil: the contracts from the npm artifacts at their
CREATE2 addresses, a 2-of-3 Safe at its predicted address, SafeTx hashes and signatures as the
Safe itself checks them, MultiSend execution relayed by a non-owner, rejections, owner changes,
and the GSxxx reverts."""

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

from orchestrator.infra.signatures import SECP256K1_N, MalformedSignature
from relayer.rpc import as_address
from tests.conftest import AnvilFactory
from vaults import onchain
from vaults import safe as safe_lib
from vaults.safe import contracts as contracts_module

OWNER_KEYS = ["0x" + f"{0x5AFE00 + i:064x}" for i in range(4)]
OWNERS = [Account.from_key(k) for k in OWNER_KEYS]  # three owners and one outsider (OWNERS[3])
TRANSFER = bytes.fromhex("a9059cbb")  # transfer(address,uint256)


def transfer_call(token: str, to: str, amount: int) -> safe_lib.Call:
    return safe_lib.Call(
        to=token, value=0, data="0x" + (TRANSFER + abi_encode(["address", "uint256"], [to, amount])).hex()
    )


def sign(account: Any, tx: safe_lib.SafeTx) -> str:
    """As a wallet signs: eth_signTypedData_v4 of the typed data, after a JSON round trip."""
    typed = json.loads(json.dumps(tx.typed_data()))
    return "0x" + bytes(Account.sign_typed_data(account.key, full_message=typed).signature).hex()


def signed_by(tx: safe_lib.SafeTx, *accounts: Any) -> dict[str, str]:
    return {a.address: sign(a, tx) for a in accounts}


def balance(w3: Web3, token: str, holder: str) -> int:
    erc20 = w3.eth.contract(address=as_address(token), abi=onchain.compiled()["TestAsset"].abi)
    return int(erc20.functions.balanceOf(as_address(holder)).call())


def revert_of(w3: Web3, *, sender: str, safe: str, data: str) -> str:
    """The Safe's answer to execTransaction when it reverts, as safe_revert_reason words it."""
    with pytest.raises(ContractLogicError) as caught:
        w3.eth.call({"from": sender, "to": as_address(safe), "data": data})
    from_message = safe_lib.safe_revert_reason(str(caught.value))
    assert safe_lib.safe_revert_reason(str(caught.value.data)) == from_message  # the raw payload says the same
    return from_message


@dataclasses.dataclass
class Chain:
    w3: Web3
    chain_id: int
    deployer: str
    relayer: str  # an unlocked node account that is no owner: it only pays gas
    contracts: safe_lib.SafeContracts
    token: str

    def new_safe(self, owners: list[Any], threshold: int = 2) -> str:
        address = safe_lib.safe_deploy_dev(
            self.w3,
            deployer=self.deployer,
            owners=[o.address for o in owners],
            threshold=threshold,
            salt_nonce=secrets.randbits(64),  # the session's anvil is shared: a Safe of our own
        )
        onchain.fund_vault_account(w3=self.w3, asset=self.token, account_address=address, assets=10**9, eth=0)
        return address

    def execute(self, tx: safe_lib.SafeTx, signatures: dict[str, str]) -> Any:
        data = safe_lib.exec_transaction_calldata(tx, signatures)
        tx_hash = self.w3.eth.send_transaction({"from": self.relayer, "to": as_address(tx.safe), "data": data})
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)


@pytest.fixture(scope="module")
def chain(anvil: str) -> Chain:
    w3 = Web3(Web3.HTTPProvider(anvil))
    deployer, relayer = w3.eth.accounts[0], w3.eth.accounts[1]
    contracts = safe_lib.safe_contracts(w3, deployer=deployer)
    token = onchain.deploy_asset(w3=w3, deployer=deployer)
    return Chain(w3, w3.eth.chain_id, deployer, relayer, contracts, token)


# --- Without a chain -------------------------------------------------------------------------


def test_a_chain_safe_deployments_lists_maps_to_its_canonical_addresses() -> None:
    def listed(file: str) -> dict[str, Any]:
        return json.loads((contracts_module._package("safe-deployments") / "dist/assets/v1.4.1" / file).read_text())

    canonical = safe_lib.canonical_addresses(1)
    assert canonical == safe_lib.SafeContracts(
        singleton=as_address(listed("safe.json")["deployments"]["canonical"]["address"]),
        proxy_factory=as_address(listed("safe_proxy_factory.json")["deployments"]["canonical"]["address"]),
        fallback_handler=as_address(
            listed("compatibility_fallback_handler.json")["deployments"]["canonical"]["address"]
        ),
        multi_send_call_only=as_address(listed("multi_send_call_only.json")["deployments"]["canonical"]["address"]),
    )
    assert canonical.singleton == "0x41675C099F32341bf84BFc5382aF534df5C7461a"  # Safe 1.4.1 on mainnet
    # A chain listed with several deployment types (a list) still gets the canonical one.
    networks = listed("safe.json")["networkAddresses"]
    several = next(int(c) for c, kinds in networks.items() if isinstance(kinds, list) and "canonical" in kinds)
    assert safe_lib.canonical_addresses(several) == canonical
    assert safe_lib.canonical_addresses(31337) is None  # anvil: the CREATE2 addresses instead
    assert safe_lib.development_addresses() != canonical


def test_a_missing_npm_package_says_to_run_make_install(settings: Any, tmp_path: Any) -> None:
    settings.BASE_DIR = tmp_path
    with pytest.raises(safe_lib.SafeUnavailable, match="run `make install`") as caught:
        contracts_module._package("safe-deployments")
    assert (caught.value.code, caught.value.http_status) == ("safe_unavailable", 409)


def test_safe_revert_reason_words_the_gs_codes() -> None:
    assert safe_lib.safe_revert_reason("execution reverted: GS020") == "GS020: signatures data too short"
    payload = "0x08c379a0" + abi_encode(["string"], ["GS026"]).hex()
    assert safe_lib.safe_revert_reason(payload) == f"GS026: {safe_lib.SAFE_ERRORS['GS026']}"
    assert safe_lib.safe_revert_reason(f"('execution reverted', '{payload}')").startswith("GS026: invalid owner")
    other = "0x08c379a0" + abi_encode(["string"], ["ERC20: transfer amount exceeds balance"]).hex()
    assert safe_lib.safe_revert_reason(other) == "ERC20: transfer amount exceeds balance"
    assert safe_lib.safe_revert_reason("nonce too low") == "nonce too low"
    assert set(safe_lib.SAFE_ERRORS) >= {"GS010", "GS013", "GS020", "GS025", "GS026", "GS031", "GS201", "GS205"}


def test_a_multisend_decodes_back_into_its_calls_and_refuses_bad_signatures() -> None:
    safe, multi_send = "0x" + "11" * 20, "0x" + "22" * 20
    calls = [
        transfer_call("0x" + "33" * 20, OWNERS[0].address, 5),
        safe_lib.Call(to=as_address("0x" + "44" * 20), value=7, data="0x"),
    ]
    tx = safe_lib.multisend_tx(safe=safe, chain_id=31337, multi_send=multi_send, calls=calls, nonce=3)
    assert (tx.operation, tx.to, tx.value) == (safe_lib.DELEGATECALL, as_address(multi_send), 0)
    assert safe_lib.calls_of(tx, multi_send=multi_send) == [dataclasses.replace(c, to=as_address(c.to)) for c in calls]
    plain = safe_lib.rejection_tx(safe=safe, chain_id=31337, nonce=3)
    assert safe_lib.calls_of(plain, multi_send=multi_send) == [safe_lib.Call(as_address(safe), 0, "0x")]
    assert safe_lib.SafeTx.from_json(json.loads(json.dumps(tx.as_json()))) == tx

    good = sign(OWNERS[0], tx)
    assert safe_lib.signature_owner(tx, good) == OWNERS[0].address
    assert safe_lib.signature_owner(plain, good) != OWNERS[0].address  # another hash, another "signer"
    raw = bytes.fromhex(good[2:])
    s = int.from_bytes(raw[32:64], "big")
    high_s = "0x" + (raw[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - raw[64]])).hex()
    with pytest.raises(MalformedSignature, match="EIP-2"):
        safe_lib.signature_owner(tx, high_s)
    with pytest.raises(MalformedSignature):
        safe_lib.signature_owner(tx, good[:-2])


# --- On anvil --------------------------------------------------------------------------------


def test_the_contracts_deploy_once_at_their_create2_addresses(anvils: AnvilFactory) -> None:
    w3 = Web3(Web3.HTTPProvider(anvils.start()))
    deployer = w3.eth.accounts[0]
    with pytest.raises(safe_lib.SafeUnavailable, match=r"manage\.py chain bootstrap"):
        safe_lib.safe_contracts(w3)

    contracts = safe_lib.safe_contracts(w3, deployer=deployer)
    assert contracts == safe_lib.development_addresses()
    for name, address in zip(contracts_module.ARTIFACTS, dataclasses.astuple(contracts), strict=True):
        assert w3.eth.get_code(address).to_0x_hex() == safe_lib.artifact(name).deployed
    block, sent = w3.eth.block_number, w3.eth.get_transaction_count(deployer)
    assert safe_lib.safe_contracts(w3, deployer=deployer) == contracts
    assert safe_lib.safe_contracts(w3) == contracts
    assert (w3.eth.block_number, w3.eth.get_transaction_count(deployer)) == (block, sent)  # nothing sent

    # A restarted anvil (same chain id, empty state) is not taken for one that has them.
    fresh = Web3(Web3.HTTPProvider(anvils.start()))
    assert fresh.eth.chain_id == w3.eth.chain_id
    with pytest.raises(safe_lib.SafeUnavailable, match="chain bootstrap"):
        safe_lib.safe_contracts(fresh)


def test_a_two_of_three_safe_is_created_at_its_predicted_address(chain: Chain) -> None:
    w3, owners, salt = chain.w3, [o.address for o in OWNERS[:3]], secrets.randbits(64)
    predicted = safe_lib.safe_address_predicted(
        w3, contracts=chain.contracts, owners=owners, threshold=2, salt_nonce=salt
    )
    assert not w3.eth.get_code(predicted)
    to, _ = safe_lib.safe_create_call(contracts=chain.contracts, owners=owners, threshold=2, salt_nonce=salt)
    assert to == chain.contracts.proxy_factory

    address = safe_lib.safe_deploy_dev(w3, deployer=chain.deployer, owners=owners, threshold=2, salt_nonce=salt)
    assert address == predicted and w3.eth.get_code(address)
    assert safe_lib.safe_state(w3, address) == safe_lib.SafeState(owners=owners, threshold=2, nonce=0)
    block = w3.eth.block_number
    assert safe_lib.safe_deploy_dev(w3, deployer=chain.deployer, owners=owners, threshold=2, salt_nonce=salt) == address
    assert w3.eth.block_number == block
    with pytest.raises(safe_lib.SafeUnavailable, match="no Safe"):
        safe_lib.safe_state(w3, chain.relayer)  # an account without code


def test_the_safetx_hash_is_the_one_the_safe_computes(chain: Chain) -> None:
    safe = chain.new_safe(OWNERS[:3])
    on_chain = chain.w3.eth.contract(address=as_address(safe), abi=safe_lib.safe_abi())
    multisend = safe_lib.multisend_tx(
        safe=safe,
        chain_id=chain.chain_id,
        multi_send=chain.contracts.multi_send_call_only,
        calls=[transfer_call(chain.token, OWNERS[3].address, 1)],
        nonce=7,
    )
    rejection = safe_lib.rejection_tx(safe=safe, chain_id=chain.chain_id, nonce=7)
    for tx in (multisend, rejection, dataclasses.replace(multisend, safe_tx_gas=90_000, gas_price=3)):
        expected = on_chain.functions.getTransactionHash(
            tx.to, tx.value, bytes.fromhex(tx.data[2:]), tx.operation, tx.safe_tx_gas, tx.base_gas,
            tx.gas_price, tx.gas_token, tx.refund_receiver, tx.nonce,
        ).call()  # fmt: skip
        assert tx.hash() == bytes(expected)
        assert safe_lib.signature_owner(tx, sign(OWNERS[1], tx)) == OWNERS[1].address
    assert multisend.hash() != rejection.hash()


def test_a_multisend_runs_with_two_owner_signatures_relayed_by_a_non_owner(chain: Chain) -> None:
    w3, safe = chain.w3, chain.new_safe(OWNERS[:3])
    alice, _, carol, outsider = OWNERS
    tx = safe_lib.multisend_tx(
        safe=safe,
        chain_id=chain.chain_id,
        multi_send=chain.contracts.multi_send_call_only,
        calls=[transfer_call(chain.token, outsider.address, 1_000), transfer_call(chain.token, chain.relayer, 2_500)],
        nonce=safe_lib.safe_state(w3, safe).nonce,
    )
    relayer = chain.relayer
    assert relayer not in safe_lib.safe_state(w3, safe).owners

    one = safe_lib.exec_transaction_calldata(tx, signed_by(tx, alice))
    assert revert_of(w3, sender=relayer, safe=safe, data=one) == "GS020: signatures data too short"
    with_outsider = safe_lib.exec_transaction_calldata(tx, signed_by(tx, alice, outsider))
    assert revert_of(w3, sender=relayer, safe=safe, data=with_outsider).startswith("GS026")
    # The same two owners' signatures, packed in descending owner order: the Safe refuses them.
    sigs = signed_by(tx, alice, carol)
    descending = b"".join(bytes.fromhex(sigs[a][2:]) for a in sorted(sigs, key=lambda a: int(a, 16), reverse=True))
    unsorted = chain.w3.eth.contract(abi=safe_lib.safe_abi()).encode_abi(
        "execTransaction",
        args=[
            tx.to,
            0,
            bytes.fromhex(tx.data[2:]),
            1,
            0,
            0,
            0,
            safe_lib.ZERO_ADDRESS,
            safe_lib.ZERO_ADDRESS,
            descending,
        ],
    )
    assert revert_of(w3, sender=relayer, safe=safe, data=unsorted).startswith("GS026")

    before = (
        balance(w3, chain.token, safe),
        balance(w3, chain.token, outsider.address),
        balance(w3, chain.token, relayer),
    )
    receipt = chain.execute(tx, sigs)  # the dict's order does not matter: sorted by owner
    assert receipt["status"] == 1
    assert safe_lib.safe_execution_succeeded(receipt, safe=safe, safe_tx_hash=tx.hash())
    assert not safe_lib.safe_execution_succeeded(receipt, safe=safe, safe_tx_hash=safe_lib.rejection_tx(
        safe=safe, chain_id=chain.chain_id, nonce=tx.nonce).hash())  # fmt: skip
    after = (
        balance(w3, chain.token, safe),
        balance(w3, chain.token, outsider.address),
        balance(w3, chain.token, relayer),
    )
    assert after == (before[0] - 3_500, before[1] + 1_000, before[2] + 2_500)
    assert safe_lib.safe_state(w3, safe).nonce == tx.nonce + 1
    # The same signatures again: the nonce has moved, so they sign a hash the Safe no longer asks for.
    assert revert_of(w3, sender=relayer, safe=safe, data=safe_lib.exec_transaction_calldata(tx, sigs)).startswith(
        "GS026"
    )


def test_an_executed_rejection_kills_the_transaction_at_its_nonce(chain: Chain) -> None:
    w3, safe = chain.w3, chain.new_safe(OWNERS[:3])
    nonce = safe_lib.safe_state(w3, safe).nonce
    tx = safe_lib.multisend_tx(
        safe=safe,
        chain_id=chain.chain_id,
        multi_send=chain.contracts.multi_send_call_only,
        calls=[transfer_call(chain.token, OWNERS[3].address, 10)],
        nonce=nonce,
    )
    approved = signed_by(tx, OWNERS[0], OWNERS[1])
    rejection = safe_lib.rejection_tx(safe=safe, chain_id=chain.chain_id, nonce=nonce)
    receipt = chain.execute(rejection, signed_by(rejection, OWNERS[1], OWNERS[2]))
    assert safe_lib.safe_execution_succeeded(receipt, safe=safe, safe_tx_hash=rejection.hash())
    assert safe_lib.safe_state(w3, safe).nonce == nonce + 1
    data = safe_lib.exec_transaction_calldata(tx, approved)
    assert revert_of(w3, sender=chain.relayer, safe=safe, data=data).startswith("GS026")
    assert balance(w3, chain.token, safe) == 10**9  # nothing left the Safe


def test_a_failed_inner_call_with_safe_tx_gas_is_an_execution_failure(chain: Chain) -> None:
    w3, safe = chain.w3, chain.new_safe(OWNERS[:3])
    too_much = transfer_call(chain.token, OWNERS[3].address, 10**18)
    nonce = safe_lib.safe_state(w3, safe).nonce
    tx = dataclasses.replace(
        safe_lib.multisend_tx(
            safe=safe,
            chain_id=chain.chain_id,
            multi_send=chain.contracts.multi_send_call_only,
            calls=[too_much],
            nonce=nonce,
        ),
        safe_tx_gas=200_000,
    )
    receipt = chain.execute(tx, signed_by(tx, OWNERS[0], OWNERS[2]))
    assert receipt["status"] == 1  # the Safe used the nonce and said ExecutionFailure
    assert not safe_lib.safe_execution_succeeded(receipt, safe=safe, safe_tx_hash=tx.hash())
    assert safe_lib.safe_state(w3, safe).nonce == nonce + 1


def test_owners_and_threshold_change_in_one_safe_transaction(chain: Chain) -> None:
    w3, safe = chain.w3, chain.new_safe(OWNERS[:3])
    alice, bob, carol, dave = OWNERS
    state = safe_lib.safe_state(w3, safe)
    assert state.owners == [alice.address, bob.address, carol.address]
    # Adds dave; removes alice (then second in the list, after dave) and bob; threshold 2 of 2.
    calls = safe_lib.owner_change_calls(
        safe=safe, owners_now=state.owners, owners_wanted=[carol.address, dave.address], threshold=2
    )
    assert len(calls) == 4 and all(c.to == as_address(safe) for c in calls)
    tx = safe_lib.multisend_tx(
        safe=safe,
        chain_id=chain.chain_id,
        multi_send=chain.contracts.multi_send_call_only,
        calls=calls,
        nonce=state.nonce,
    )
    receipt = chain.execute(tx, signed_by(tx, bob, alice))
    assert safe_lib.safe_execution_succeeded(receipt, safe=safe, safe_tx_hash=tx.hash())
    assert safe_lib.safe_state(w3, safe) == safe_lib.SafeState(
        owners=[dave.address, carol.address], threshold=2, nonce=state.nonce + 1
    )
    # Only the new owners count now.
    change = safe_lib.owner_change_calls(
        safe=safe, owners_now=[dave.address, carol.address], owners_wanted=[dave.address, carol.address], threshold=1
    )
    tx = safe_lib.multisend_tx(
        safe=safe,
        chain_id=chain.chain_id,
        multi_send=chain.contracts.multi_send_call_only,
        calls=change,
        nonce=state.nonce + 1,
    )
    data = safe_lib.exec_transaction_calldata(tx, signed_by(tx, alice, bob))
    assert revert_of(w3, sender=chain.relayer, safe=safe, data=data).startswith("GS026")
    chain.execute(tx, signed_by(tx, carol, dave))
    assert safe_lib.safe_state(w3, safe).threshold == 1
    with pytest.raises(ValueError, match="threshold"):
        safe_lib.owner_change_calls(safe=safe, owners_now=[], owners_wanted=[dave.address], threshold=2)


def test_a_listed_chain_without_the_canonical_contracts_is_refused(anvils: AnvilFactory) -> None:
    w3 = Web3(Web3.HTTPProvider(anvils.start(extra=["--chain-id", "1"])))
    canonical = safe_lib.canonical_addresses(1)
    assert canonical is not None
    # Not deployed from `deployer` either: canonical addresses come from another factory than ours.
    with pytest.raises(safe_lib.SafeUnavailable, match=f"Chain 1 should have Safe 1.4.1 at {canonical.singleton}"):
        safe_lib.safe_contracts(w3, deployer=w3.eth.accounts[0])
    assert w3.eth.get_transaction_count(w3.eth.accounts[0]) == 0
