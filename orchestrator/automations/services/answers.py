"""Reviewing an executor's answer to /kernel/trigger (docs/automations.md): shape, requestID,
the HMAC over requestID:executorSignature, and the EIP-712 executorSignature (or autosign)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

from eth_utils import is_address, to_checksum_address

from orchestrator.automations.models import Subscription
from orchestrator.automations.typed_data import (
    EXECUTION_REQUEST_TYPES,
    Executable,
    execution_request_domain,
    execution_request_message,
    execution_request_recover,
    hmac_valid,
)
from orchestrator.infra.signatures import MalformedSignature
from orchestrator.infra.validation import whole_number_text
from relayer.keys import key_manager

HEX_DATA = re.compile(r"^0x([0-9a-fA-F]{2})*$")


class ReviewedTask(TypedDict):
    """An accepted task, normalised: checksummed addresses, value a decimal string of wei,
    lower-case data, and the executor's signature (or the autosign key's)."""

    subaccount: str
    executor: str
    callType: int
    to: str
    value: str
    data: str
    executorSignature: str


def _no_task() -> ReviewedTask:
    return cast(ReviewedTask, {})  # journaled as {} when there is no task


@dataclass(frozen=True)
class Verdict:
    """skip, task (accepted so far: the policy check comes next) or refused (code, reason).
    Journaled as dataclasses.asdict into the execution workflow's input."""

    outcome: str
    code: str = ""
    reason: str = ""
    task: ReviewedTask = field(default_factory=_no_task)


def _refused(code: str, reason: str) -> Verdict:
    return Verdict("refused", code=code, reason=reason)


def answer_review(*, answer: object, request_id: str, subscription: Subscription, hmac_key: str) -> Verdict:
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
    executor_signature = "0x" if skip else cast(dict[str, Any], task).get("executorSignature")
    if not isinstance(executor_signature, str):
        return _refused("malformed_answer", "task.executorSignature must be a string")
    if config.verify_payload:
        given = answer.get("signature")
        if not isinstance(given, str) or not hmac_valid(hmac_key, f"{request_id}:{executor_signature}", given.lower()):
            return _refused("bad_hmac", "signature is not HMAC-SHA256(hmacKey, requestID:executorSignature)")
    if skip:
        return Verdict("skip")
    return _task_review(task=cast(dict[str, Any], task), request_id=request_id, subscription=subscription)


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
    if not isinstance(value, str) or whole_number_text(value) is None:  # "١٢".isdigit() is true too
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
    normal: Executable = {"callType": call_type, "to": to_checksum_address(to), "value": value, "data": data.lower()}
    message = execution_request_message(
        request_id=request_id, subaccount=subscription.sub_account_address, executable=normal
    )
    signature = task.get("executorSignature") or ""
    if not signature:
        if config.executor_key is None:
            return _refused("bad_executor_signature", "executorSignature is empty and the config has no autosign")
        signature = key_manager().sign_typed_data(
            key=config.executor_key,
            domain=execution_request_domain(subscription.chain_id),
            types=EXECUTION_REQUEST_TYPES,
            message=message,
        )
    else:
        try:
            signed = execution_request_recover(chain_id=subscription.chain_id, message=message, signature=signature)
        except MalformedSignature as exc:  # not canonical (docs/api.md, "Signatures"), or recovers no key
            return _refused("bad_executor_signature", f"executorSignature is refused: {exc}")
        if signed.signer not in signers:
            return _refused("bad_executor_signature", "executorSignature does not recover to the config's executor")
        # What is relayed is the canonical form (v 27/28); the HMAC above covered it as sent.
        signature = signed.signature.hex()
    reviewed: ReviewedTask = {
        "subaccount": subscription.sub_account_address,
        "executor": to_checksum_address(executor),
        **normal,
        "executorSignature": signature,
    }
    return Verdict("task", task=reviewed)
