"""EIP-712 helpers shared by what vaults sign and verify (feeds, intents)."""

from __future__ import annotations

from eth_account.messages import SignableMessage
from eth_utils import keccak


def typed_data_hash(signable: SignableMessage) -> str:
    """The EIP-712 hash a signature covers (what recovers the signer), as 0x hex."""
    return "0x" + keccak(b"\x19" + signable.version + signable.header + signable.body).hex()
