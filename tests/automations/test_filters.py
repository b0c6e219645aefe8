"""FILTER triggers on real events: an ERC-20 (OpenZeppelin, compiled with solc from npm) emits
Transfer logs on anvil; the poller fires matching ones once, over confirmed blocks only, and
across reorgs."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from orchestrator.automations.models import Firing, LogCursor
from orchestrator.automations.services.filters import logs_poll
from orchestrator.devtools.processes import ManagedProcess
from relayer.models import Chain
from tests.conftest import AnvilFactory, Workers, wait_until
from tests.support.automations import LOCAL_DESTINATIONS, automation_create, beat_start
from tests.support.executor_server import ExecutorServer
from tests.support.relays import make_chain, rpc
from vaults.onchain import compiled, deploy_asset

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.automations,
    pytest.mark.usefixtures("local_destinations"),
]

TRANSFER = "0x" + Web3.keccak(text="Transfer(address,address,uint256)").hex().removeprefix("0x")
# anvil's first default account (the well-known test mnemonic): signs raw transactions that
# can be sent again with the same hash after a reorg.
DEPLOYER = Account.from_key("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")


def topic_of(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def mint_raw(w3: Web3, token: str, to: str, amount: int) -> bytes:
    """A signed mint by the token's owner, sendable again after a reorg (same hash)."""
    contract = w3.eth.contract(address=Web3.to_checksum_address(token), abi=compiled()["TestAsset"].abi)
    tx = contract.functions.mint(Web3.to_checksum_address(to), amount).build_transaction(
        {
            "from": DEPLOYER.address,
            "nonce": w3.eth.get_transaction_count(DEPLOYER.address),
            "gas": 200_000,
            "maxFeePerGas": 50 * 10**9,
            "maxPriorityFeePerGas": 10**9,
            "chainId": 31337,
        }
    )
    return bytes(DEPLOYER.sign_transaction(tx).raw_transaction)


def filter_source(token: str, recipient: str) -> dict[str, Any]:
    return {
        "type": "FILTER",
        "value": {"chainId": 31337, "address": token, "topics": [TRANSFER, None, topic_of(recipient)]},
    }


def firings_for(tx_hash: str) -> int:
    return Firing.objects.filter(key__contains=f":filter:{tx_hash}:").count()


def test_a_matching_event_fires_once_and_a_reorged_one_only_when_it_comes_back(
    anvils: AnvilFactory, server: ExecutorServer, workers: Workers, worker_env: dict[str, str]
) -> None:
    url = anvils.start()
    make_chain(url, confirmations=2)
    w3 = Web3(Web3.HTTPProvider(url))
    token = deploy_asset(w3=w3, deployer=DEPLOYER.address)
    recipient, other = Account.create().address, Account.create().address
    automation = automation_create(server, source=filter_source(token, recipient))
    sub = automation.subscribe()
    workers.start(extra_env=LOCAL_DESTINATIONS)
    beat: ManagedProcess = beat_start({**worker_env, **LOCAL_DESTINATIONS})
    try:
        matching = w3.eth.send_raw_transaction(mint_raw(w3, token, recipient, 5)).to_0x_hex()
        w3.eth.send_raw_transaction(mint_raw(w3, token, other, 7))  # another recipient: no match
        for _ in range(2):
            rpc(url, "evm_mine")
        wait_until(lambda: server.executor.triggers(), timeout=30, message="the FILTER trigger")
        received = server.executor.triggers()[0].body
        assert received["trigger"]["type"] == "FILTER"
        log = received["trigger"]["data"]
        assert log["transactionHash"] == matching and log["topics"][2] == topic_of(recipient)
        assert log["address"].lower() == token.lower()

        # A log in a block reorged away before it was confirmed never fires...
        snapshot = rpc(url, "evm_snapshot")
        raw = mint_raw(w3, token, recipient, 11)
        reorged = w3.eth.send_raw_transaction(raw).to_0x_hex()
        # anvil answers eth_sendRawTransaction before its automine has written the block.
        mined_at = w3.eth.wait_for_transaction_receipt(reorged, timeout=10)["blockNumber"]
        assert rpc(url, "evm_revert", snapshot) is True
        for _ in range(4):
            rpc(url, "evm_mine")
        wait_until(
            lambda: LogCursor.objects.filter(block_number__gte=mined_at + 1).exists(),
            timeout=30,
            message="the poller past the reorged block",
        )
        assert firings_for(reorged) == 0
        # ...and when its transaction is mined again, it fires once.
        assert w3.eth.send_raw_transaction(raw).to_0x_hex() == reorged
        for _ in range(2):
            rpc(url, "evm_mine")
        wait_until(lambda: firings_for(reorged) == 1, timeout=30, message="the log that came back")
        head = w3.eth.block_number
        wait_until(lambda: LogCursor.objects.filter(block_number__gte=head - 2).exists(), timeout=30, message="poll")
    finally:
        beat.stop()
    assert firings_for(matching) == 1 and firings_for(reorged) == 1
    assert Firing.objects.filter(subscription_id=sub["id"]).count() == 2
    assert len(server.executor.triggers()) == 2


def test_a_reorg_deeper_than_the_confirmations_rewinds_and_fires_nothing_twice(
    anvils: AnvilFactory, server: ExecutorServer
) -> None:
    url = anvils.start()
    chain: Chain = make_chain(url, confirmations=0)
    w3 = Web3(Web3.HTTPProvider(url))
    token = deploy_asset(w3=w3, deployer=DEPLOYER.address)
    recipient = Account.create().address
    automation_create(server, source=filter_source(token, recipient)).subscribe()
    handed: list[list[str]] = []

    def deliver(ids: list[str], token_: str, eta: Any) -> None:
        handed.append(ids)

    snapshot = rpc(url, "evm_snapshot")
    raw = mint_raw(w3, token, recipient, 3)
    tx_hash = w3.eth.send_raw_transaction(raw).to_0x_hex()
    assert logs_poll(chain=chain, deliver=deliver) == 1
    rpc(url, "evm_revert", snapshot)
    rpc(url, "evm_mine")  # the old block's height now holds an empty block: a different hash
    w3.eth.send_raw_transaction(raw)
    assert logs_poll(chain=chain, deliver=deliver) == 0  # notices the changed block and rewinds
    cursor = LogCursor.objects.get(chain=chain)
    assert cursor.block_hash == ""
    assert logs_poll(chain=chain, deliver=deliver) == 0  # rescans: the same log, the same key
    assert firings_for(tx_hash) == 1
    assert LogCursor.objects.get(chain=chain).block_number == w3.eth.block_number
