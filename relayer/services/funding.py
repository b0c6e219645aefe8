"""Gas for new relayer keys on development chains.

A relayer key the system creates holds nothing, so its first relay would retry on
"insufficient funds" and then dead-letter. On a development chain (anvil's 31337, or a chain
marked `is_development` in the admin) the node's first prefunded account tops each new key up
to DEV_FUNDING_WEI. On any other chain nothing is sent, and a development row whose node
reports another chain id is refused too: a mistyped RPC URL must not move real funds.

The transfer is `eth_sendTransaction` from `eth_accounts[0]`, so the node signs it and picks
the nonce (no key of ours, no nonce cursor), and the value really leaves the prefunded account
instead of being minted with `anvil_setBalance`, which only anvil has (hardhat and geth --dev
have unlocked accounts too).

Invariant: funding runs only after the transaction that created the keys commits. A rolled-back
key gets nothing, no RPC call waits inside `atomic()`, and a node that does not answer is a
WARNING that says what to do, never a failure of what created the key."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from web3 import Web3

from orchestrator.infra.errors import DomainError
from relayer.models import ANVIL_CHAIN_ID, Chain, KeyPurpose, SigningKey
from relayer.rpc import RpcUnavailable, SendOutcome, as_address, classify_send_message, rpc_batch

logger = logging.getLogger(__name__)

# Requests funding at once all send from eth_accounts[0], and anvil hands concurrent
# eth_sendTransaction calls the same nonce ("nonce too low", "replacement transaction
# underpriced"): the loser sends again after a short random pause.
_SEND_ATTEMPTS = 6
# A development node mines at once (anvil's automine) or within a block time of a few seconds.
_MINE_WAIT_SECONDS = 15


class DevFundingError(DomainError):
    """The node answered but cannot fund: another chain id, no prefunded account, a refused transfer."""

    code = "dev_funding_refused"
    http_status = 502  # the node's refusal, not the caller's mistake


@dataclass(frozen=True)
class DevFunding:
    address: str
    sent_wei: int  # 0: the key already held DEV_FUNDING_WEI
    tx_hash: str | None


def development_chains() -> list[Chain]:
    return list(Chain.objects.filter(Q(is_development=True) | Q(chain_id=ANVIL_CHAIN_ID), enabled=True))


def dev_keys_fund(*, keys: Sequence[SigningKey], chain: Chain) -> list[DevFunding]:
    """Tops every key up to DEV_FUNDING_WEI on `chain` now, from the node's first account, and
    logs each transfer. Sends nothing when the chain is not a development chain or
    DEV_FUNDING_WEI is 0. Call it outside any transaction (see `dev_funding_after_commit`).

    Raises RpcUnavailable when the node does not answer, DevFundingError when it answers but
    cannot fund."""
    amount = settings.DEV_FUNDING_WEI
    if not keys or amount <= 0 or not chain.counts_as_development:
        return []
    addresses = [as_address(key.address) for key in keys]
    head = rpc_batch(
        chain.rpc_url,
        [("eth_chainId", []), ("eth_accounts", []), *(("eth_getBalance", [a, "latest"]) for a in addresses)],
    )
    failed = next((answer for answer in head if answer.error), None)
    if failed is not None:
        raise DevFundingError(f"the node refused a read: {failed.message}")
    node_chain_id = int(head[0].result, 16)
    if node_chain_id != chain.chain_id:
        raise DevFundingError(f"{chain.rpc_url} is chain {node_chain_id}, not {chain.chain_id}")
    if not head[1].result:
        raise DevFundingError(f"{chain.rpc_url} has no prefunded account (eth_accounts is empty)")
    funder = as_address(head[1].result[0])
    fundings = []
    for address, balance in zip(addresses, (int(answer.result, 16) for answer in head[2:]), strict=True):
        if balance >= amount:
            fundings.append(DevFunding(address=address, sent_wei=0, tx_hash=None))
            continue
        value = amount - balance
        tx_hash = _send(chain=chain, funder=funder, to=address, value=value, before=balance)
        logger.info(
            "dev funding: sent %s ETH (%d wei) to relayer key %s on development chain %s from prefunded "
            "account %s, tx %s",
            Web3.from_wei(value, "ether"),
            value,
            address,
            chain,
            funder,
            tx_hash,
        )
        fundings.append(DevFunding(address=address, sent_wei=value, tx_hash=tx_hash))
    return fundings


def _send(*, chain: Chain, funder: str, to: str, value: int, before: int) -> str:
    """Sends `value` and returns the hash once its receipt is on chain. The hash alone is not
    enough: anvil answers concurrent sends from one account with hashes of which it may later
    mine only some (two got the same nonce), and a caller that relays right after funding
    needs the balance, not the promise of it. A transfer not mined in time is sent again."""
    message = ""
    wanted = value
    for attempt in range(_SEND_ATTEMPTS):
        if attempt:
            time.sleep(random.uniform(0.01, 0.05) * attempt)
        (answer,) = rpc_batch(
            chain.rpc_url, [("eth_sendTransaction", [{"from": funder, "to": to, "value": hex(value)}])]
        )
        if answer.error:
            message = answer.message
            if classify_send_message(message) not in (SendOutcome.NONCE_USED, SendOutcome.UNDERPRICED):
                break
            continue
        tx_hash = str(answer.result)
        if _mined(chain=chain, tx_hash=tx_hash):
            return tx_hash
        message = f"transfer {tx_hash} was not mined within {_MINE_WAIT_SECONDS} s"
        (balance,) = rpc_batch(chain.rpc_url, [("eth_getBalance", [to, "latest"])])
        if balance.error:
            break
        value = wanted - max(0, int(balance.result, 16) - before)  # an earlier transfer may have come late
        if value <= 0:
            return tx_hash
    raise DevFundingError(f"the node refused the transfer from {funder}: {message}")


def _mined(*, chain: Chain, tx_hash: str) -> bool:
    """True once the transfer's receipt says it succeeded; False when none came in time."""
    deadline = time.monotonic() + _MINE_WAIT_SECONDS
    while True:
        (receipt,) = rpc_batch(chain.rpc_url, [("eth_getTransactionReceipt", [tx_hash])])
        if not receipt.error and receipt.result:
            if int(receipt.result.get("status", "0x1"), 16) != 1:
                raise DevFundingError(f"the transfer {tx_hash} reverted")
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def dev_funding_after_commit(*, keys: Sequence[SigningKey], chain: Chain | None = None) -> None:
    """Funds `keys`, relayer keys just created, once the current transaction commits (at once
    outside one): on `chain`, or with None on every enabled development chain, for keys that
    belong to no chain yet (a config's relayers serve whichever chain a subscription names).

    Raises ValueError at once for a key that is not a relayer key; a failure to fund is logged
    as a WARNING after the commit and never raised."""
    if any(key.purpose != KeyPurpose.RELAYER for key in keys):
        raise ValueError("only relayer keys are funded")
    chosen = list(keys)
    if chosen:
        transaction.on_commit(lambda: _fund_and_log(keys=chosen, chain=chain))


def _fund_and_log(*, keys: list[SigningKey], chain: Chain | None) -> None:
    # Runs after the commit: an exception here would reach the caller with its rows already
    # committed (an API client would see a 500 for a config that exists), so none escapes.
    try:
        chains = [chain] if chain is not None else development_chains()
    except Exception:
        logger.warning("dev funding: could not list development chains; relayer keys were not funded", exc_info=True)
        return
    for target in chains:
        try:
            dev_keys_fund(keys=keys, chain=target)
        except (RpcUnavailable, DevFundingError) as exc:
            _warn(keys=keys, chain=target, reason=str(exc))
        except Exception as exc:  # unforeseen: named by its class, still never raised to the caller
            _warn(keys=keys, chain=target, reason=f"{exc.__class__.__name__}: {exc}")


def _warn(*, keys: list[SigningKey], chain: Chain, reason: str) -> None:
    addresses = ", ".join(key.address for key in keys)
    logger.warning(
        "dev funding: relayer key(s) %s not funded on development chain %s at %s: %s. Their relays will retry "
        "on 'insufficient funds' until funded: start the node (make run starts anvil), then send each "
        "%s ETH from an unlocked account (cast send --unlocked --from <eth_accounts[0]> <address> --value "
        "%sether --rpc-url %s).",
        addresses,
        chain,
        chain.rpc_url,
        reason,
        Web3.from_wei(settings.DEV_FUNDING_WEI, "ether"),
        Web3.from_wei(settings.DEV_FUNDING_WEI, "ether"),
        chain.rpc_url,
    )
