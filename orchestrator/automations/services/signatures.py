"""The EIP-712 typed data of the automation API (API.md, "Automation config")."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data

KERNEL_DOMAIN = {"name": "Brahma Builder Kit", "version": "1"}
KERNEL_ACTION_TYPES = {
    "KernelAction": [
        {"name": "destinationURL", "type": "string"},
        {"name": "verifyPayload", "type": "bool"},
        {"name": "action", "type": "string"},
    ]
}


def kernel_action_message(*, destination_url: str, verify_payload: bool, action: str) -> dict[str, Any]:
    return {"destinationURL": destination_url, "verifyPayload": verify_payload, "action": action}


def kernel_action_signer(*, destination_url: str, verify_payload: bool, action: str, signature: str) -> str:
    """The address that signed the config action, or "" if the signature is malformed."""
    signable = encode_typed_data(
        domain_data=KERNEL_DOMAIN,
        message_types=KERNEL_ACTION_TYPES,
        message_data=kernel_action_message(
            destination_url=destination_url, verify_payload=verify_payload, action=action
        ),
    )
    try:
        return str(Account.recover_message(signable, signature=signature))
    except Exception:  # malformed signatures raise assorted errors from eth-keys
        return ""
