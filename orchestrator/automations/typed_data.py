"""What the orchestrator and an executor sign for each other, in one place: the EIP-712 domain
and types of the automation API, the HMAC signatures over its bodies, the Standard Webhooks
headers, and the answers an executor sends to /kernel/trigger (docs/automations.md describes
the exchange, docs/api.md the wire format).

Both sides use it: the automation services check what executors send with it, and the example
executor, the soak's executor and the tests' executor server build their answers with it. It
needs no Django, so an executor process can import it on its own.

    config actions   KernelAction{destinationURL, verifyPayload, action}, domain without chainId,
                     signed by the executor's address (CREATE, DELETE)
    tasks            ExecutionRequest{requestID, subaccount, callType, to, value, data}, domain
                     with the subscription's chainId, signed by the executor (or autosigned)
    bodies           HMAC-SHA256(hmacKey, text), lower-case hex: of the requestID on the
                     orchestrator's calls, of "requestID:executorSignature" on the answers
    webhook headers  webhook-signature: v1,<base64 HMAC-SHA256 over "<id>.<timestamp>.<body>">
    x-verifying-signature  an EIP-191 signature of the requestID by the config's verifying key

Every signature is read by orchestrator.infra.signatures: 65 bytes, low s (EIP-2), v 27/28 or
0/1 (normalised to 27/28). Anything else recovers no signer here, so the high-s twin or another
encoding of a signature is not a second signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any, TypedDict

from eth_account.messages import SignableMessage, encode_defunct, encode_typed_data
from eth_account.signers.local import LocalAccount

from orchestrator.infra.signatures import MalformedSignature, Recovered, signature_recover

# EIP-712 field lists: {"TypeName": [{"name": ..., "type": ...}, ...]}
Types = dict[str, list[dict[str, str]]]
# An EIP-712 message: field name -> value (strings, ints and bools here).
Message = dict[str, str | int | bool]

KERNEL_DOMAIN: dict[str, str | int] = {"name": "Brahma Builder Kit", "version": "1"}
KERNEL_ACTION_TYPES: Types = {
    "KernelAction": [
        {"name": "destinationURL", "type": "string"},
        {"name": "verifyPayload", "type": "bool"},
        {"name": "action", "type": "string"},
    ]
}
EXECUTION_REQUEST_TYPES: Types = {
    "ExecutionRequest": [
        {"name": "requestID", "type": "string"},
        {"name": "subaccount", "type": "address"},
        {"name": "callType", "type": "uint8"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "data", "type": "bytes"},
    ]
}
# How old a webhook-timestamp an executor accepts (Standard Webhooks' replay window).
WEBHOOK_MAX_AGE_SECONDS = 300


class Executable(TypedDict):
    """What a task asks to be called: callType 0 (CALL) or 1 (DELEGATECALL), value in wei."""

    callType: int
    to: str
    value: str
    data: str


# --- EIP-712 --------------------------------------------------------------------------------


def _signature_hex(signer: LocalAccount, signable: SignableMessage) -> str:
    return "0x" + signer.sign_message(signable).signature.hex().removeprefix("0x")


def _signer_of(signable: SignableMessage, signature: str) -> str:
    """The address that signed, or "" if the signature is malformed or not canonical."""
    try:
        return signature_recover(signable, signature).signer
    except MalformedSignature:
        return ""


def kernel_action_message(*, destination_url: str, verify_payload: bool, action: str) -> Message:
    return {"destinationURL": destination_url, "verifyPayload": verify_payload, "action": action}


def _kernel_action(destination_url: str, verify_payload: bool, action: str) -> SignableMessage:
    message = kernel_action_message(destination_url=destination_url, verify_payload=verify_payload, action=action)
    return encode_typed_data(domain_data=KERNEL_DOMAIN, message_types=KERNEL_ACTION_TYPES, message_data=message)


def kernel_action_sign(signer: LocalAccount, *, destination_url: str, verify_payload: bool, action: str) -> str:
    """The executor's signature of a config action (CREATE or DELETE), 0x-hex."""
    return _signature_hex(signer, _kernel_action(destination_url, verify_payload, action))


def kernel_action_signer(*, destination_url: str, verify_payload: bool, action: str, signature: str) -> str:
    """The address that signed the config action, or "" if the signature is malformed."""
    return _signer_of(_kernel_action(destination_url, verify_payload, action), signature)


def kernel_action_recover(*, destination_url: str, verify_payload: bool, action: str, signature: str) -> Recovered:
    """Who signed the config action and its EIP-712 digest (the replay key). Raises
    MalformedSignature for a signature that is not canonical or recovers no key."""
    return signature_recover(_kernel_action(destination_url, verify_payload, action), signature)


def execution_request_domain(chain_id: int) -> dict[str, str | int]:
    return KERNEL_DOMAIN | {"chainId": chain_id}


def execution_request_message(*, request_id: str, subaccount: str, executable: Executable) -> Message:
    return {
        "requestID": request_id,
        "subaccount": subaccount,
        "callType": executable["callType"],
        "to": executable["to"],
        "value": int(executable["value"]),
        "data": executable["data"],
    }


def _execution_request(chain_id: int, message: Message) -> SignableMessage:
    return encode_typed_data(
        domain_data=execution_request_domain(chain_id), message_types=EXECUTION_REQUEST_TYPES, message_data=message
    )


def execution_request_sign(
    signer: LocalAccount, *, chain_id: int, request_id: str, subaccount: str, executable: Executable
) -> str:
    """An executor's executorSignature of a task, 0x-hex."""
    message = execution_request_message(request_id=request_id, subaccount=subaccount, executable=executable)
    return _signature_hex(signer, _execution_request(chain_id, message))


def execution_request_signer(*, chain_id: int, message: Message, signature: str) -> str:
    """The address that signed the execution request, or "" if the signature is malformed."""
    try:
        return execution_request_recover(chain_id=chain_id, message=message, signature=signature).signer
    except MalformedSignature:
        return ""


def execution_request_recover(*, chain_id: int, message: Message, signature: str) -> Recovered:
    """Who signed the execution request, and its digest. Raises MalformedSignature (also for a
    message the types cannot encode)."""
    try:
        signable = _execution_request(chain_id, message)
    except Exception:  # eth-abi raises assorted errors for a message the types cannot encode
        raise MalformedSignature("The signed message cannot be encoded as an ExecutionRequest.") from None
    return signature_recover(signable, signature)


def verifying_signer(request_id: str, signature: str) -> str:
    """Who signed x-verifying-signature (the config's verifying address), or "" if malformed."""
    return _signer_of(encode_defunct(text=request_id), signature)


# --- HMAC and Standard Webhooks -------------------------------------------------------------


def hmac_hex(key: str, text: str) -> str:
    """HMAC-SHA256 keyed with the UTF-8 bytes of the hex key (as Node's
    crypto.createHmac('sha256', hmacKey) does); a lower-case hex digest."""
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


def hmac_valid(key: str, text: str, signature: object) -> bool:
    """Whether `signature` is hmac_hex(key, text), compared in constant time."""
    return isinstance(signature, str) and hmac.compare_digest(signature.encode(), hmac_hex(key, text).encode())


def webhook_signature(key: str | bytes, *, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """Standard Webhooks: v1,<base64 HMAC-SHA256 over "<id>.<timestamp>.<body>">. A str key is
    used as its UTF-8 bytes (an executor's hmacKey); bytes are the key itself (a "whsec_"
    secret's decoded part, as the alert webhooks sign)."""
    secret = key if isinstance(key, bytes) else key.encode()
    digest = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_authentic(
    key: str | bytes, headers: Mapping[str, str], body: bytes, *, max_age: float | None = WEBHOOK_MAX_AGE_SECONDS
) -> bool:
    """Whether the call's webhook-signature header (headers by lower-case name) holds the
    signature of its id, timestamp and body (one of its space-separated signatures), and its
    timestamp is at most `max_age` seconds off (None: any age)."""
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "0")
    if max_age is not None and (not (stamp.isascii() and stamp.isdigit()) or abs(time.time() - int(stamp)) > max_age):
        return False
    expected = webhook_signature(key, msg_id=msg_id, timestamp=stamp, body=body)
    return any(hmac.compare_digest(expected, given) for given in headers.get("webhook-signature", "").split())


# --- an executor's answers to /kernel/trigger -----------------------------------------------


def skip_answer(*, hmac_key: str, request_id: str) -> dict[str, Any]:
    """Nothing to do this time."""
    return {"skip": True, "requestID": request_id, "task": None, "signature": hmac_hex(hmac_key, f"{request_id}:0x")}


def task_answer(
    *,
    hmac_key: str,
    request_id: str,
    chain_id: int,
    subaccount: str,
    executable: Executable,
    signer: LocalAccount,
    executor: str | None = None,
) -> dict[str, Any]:
    """A task for the sub-account, signed by `signer` on behalf of `executor` (the signer's own
    address unless given)."""
    signature = execution_request_sign(
        signer, chain_id=chain_id, request_id=request_id, subaccount=subaccount, executable=executable
    )
    return {
        "skip": False,
        "requestID": request_id,
        "task": {
            "subaccount": subaccount,
            "executor": executor or signer.address,
            "executorSignature": signature,
            "executable": executable,
        },
        "signature": hmac_hex(hmac_key, f"{request_id}:{signature}"),
    }
