"""Reviewing an executor's answer to /kernel/trigger (API.md): shape, requestID, the HMAC over
requestID:executorSignature, and the EIP-712 executorSignature (or autosign)."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import is_address, to_checksum_address

from orchestrator.automations.models import Subscription
from orchestrator.automations.services.hooks import hmac_hex
from relayer.keys import key_manager

HEX_DATA = re.compile(r"^0x([0-9a-fA-F]{2})*$")
EXECUTION_REQUEST_TYPES = {
    "ExecutionRequest": [
        {"name": "requestID", "type": "string"},
        {"name": "subaccount", "type": "address"},
        {"name": "callType", "type": "uint8"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "data", "type": "bytes"},
    ]
}


def execution_request_domain(chain_id: int) -> dict[str, Any]:
    return {"name": "Brahma Builder Kit", "version": "1", "chainId": chain_id}


def execution_request_message(*, request_id: str, task: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestID": request_id,
        "subaccount": task["subaccount"],
        "callType": task["callType"],
        "to": task["to"],
        "value": int(task["value"]),
        "data": task["data"],
    }


@dataclass(frozen=True)
class Verdict:
    """skip, task (accepted so far: the policy check comes next) or refused (code, reason)."""

    outcome: str
    code: str = ""
    reason: str = ""
    task: dict[str, Any] = field(default_factory=dict)


def _refused(code: str, reason: str) -> Verdict:
    return Verdict("refused", code=code, reason=reason)


def answer_review(*, answer: Any, request_id: str, subscription: Subscription, hmac_key: str) -> Verdict:
    """Never raises: anything wrong with the answer is a refused verdict naming the reason."""
    config = subscription.config
    if not isinstance(answer, dict):
        return _refused("malformed_answer", "the answer is not a JSON object")
    if answer.get("requestID") != request_id:
        return _refused("wrong_request_id", f"requestID {str(answer.get('requestID'))[:120]!r} is not this firing's")
    skip = answer.get("skip")
    if not isinstance(skip, bool):
        return _refused("malformed_answer", "skip must be true or false")
    task = answer.get("task")
    if not skip and not isinstance(task, dict):
        return _refused("malformed_answer", "task must be an object when skip is false")
    executor_signature = "0x" if skip else task.get("executorSignature")  # type: ignore[union-attr]
    if not isinstance(executor_signature, str):
        return _refused("malformed_answer", "task.executorSignature must be a string")
    if config.verify_payload:
        given = answer.get("signature")
        expected = hmac_hex(hmac_key, f"{request_id}:{executor_signature}")
        if not isinstance(given, str) or not hmac.compare_digest(given.lower().encode(), expected.encode()):
            return _refused("bad_hmac", "signature is not HMAC-SHA256(hmacKey, requestID:executorSignature)")
    if skip:
        return Verdict("skip")
    return _task_review(task=task, request_id=request_id, subscription=subscription)  # type: ignore[arg-type]


def _task_review(*, task: dict[str, Any], request_id: str, subscription: Subscription) -> Verdict:
    config = subscription.config
    executable = task.get("executable")
    if not isinstance(executable, dict):
        return _refused("malformed_answer", "task.executable must be an object")
    call_type, to, value, data = (executable.get(k) for k in ("callType", "to", "value", "data"))
    if call_type not in (0, 1) or isinstance(call_type, bool):
        return _refused("malformed_answer", "executable.callType must be 0 (CALL) or 1 (DELEGATECALL)")
    if not isinstance(to, str) or not is_address(to):
        return _refused("malformed_answer", "executable.to must be an address")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.isdigit() or int(value) >= 2**256:
        return _refused("malformed_answer", "executable.value must be a decimal string of wei")
    data = data if data not in (None, "") else "0x"
    if not isinstance(data, str) or not HEX_DATA.match(data):
        return _refused("malformed_answer", "executable.data must be 0x-prefixed hex bytes")
    subaccount = task.get("subaccount")
    if not isinstance(subaccount, str) or not is_address(subaccount):
        return _refused("malformed_answer", "task.subaccount must be an address")
    if to_checksum_address(subaccount) != subscription.sub_account_address:
        return _refused("wrong_subaccount", "task.subaccount is not the subscription's sub-account")
    signers = {config.executor.address} | ({config.executor_key.address} if config.executor_key else set())
    executor = task.get("executor")
    if not isinstance(executor, str) or not is_address(executor) or to_checksum_address(executor) not in signers:
        return _refused("wrong_executor", "task.executor is not the config's executor address")
    normal = {
        "subaccount": subscription.sub_account_address,
        "executor": to_checksum_address(executor),
        "callType": call_type,
        "to": to_checksum_address(to),
        "value": value,
        "data": data.lower(),
    }
    message = execution_request_message(request_id=request_id, task=normal)
    domain = execution_request_domain(subscription.chain_id)
    signature = task.get("executorSignature") or ""
    if not signature:
        if config.executor_key is None:
            return _refused("bad_executor_signature", "executorSignature is empty and the config has no autosign")
        signature = key_manager().sign_typed_data(
            key=config.executor_key, domain=domain, types=EXECUTION_REQUEST_TYPES, message=message
        )
    elif _recover(domain, message, signature) not in signers:
        return _refused("bad_executor_signature", "executorSignature does not recover to the config's executor")
    return Verdict("task", task=normal | {"executorSignature": signature})


def _recover(domain: dict[str, Any], message: dict[str, Any], signature: str) -> str:
    try:
        signable = encode_typed_data(domain_data=domain, message_types=EXECUTION_REQUEST_TYPES, message_data=message)
        return str(Account.recover_message(signable, signature=signature))
    except Exception:  # malformed signatures raise assorted errors from eth-keys
        return ""
