"""The suite's chain: a real anvil installed from npm into node_modules by `make`."""

from __future__ import annotations

from web3 import Web3
from web3.types import Wei


def test_the_suite_starts_a_real_anvil_that_mines_transactions(anvil: str) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil))
    assert w3.eth.chain_id == 31337
    accounts = list(w3.eth.accounts)
    sender, receiver = accounts[0], accounts[1]
    before = w3.eth.get_balance(receiver)
    tx_hash = w3.eth.send_transaction({"from": sender, "to": receiver, "value": Wei(12345)})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)
    assert receipt["status"] == 1
    assert w3.eth.get_balance(receiver) == before + 12345
