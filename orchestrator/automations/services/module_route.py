"""Tasks of a subscription whose sub-account is a Safe with a VaultPolicyModule enabled (its
`module_address`): they run through the module's executeRequest, never as a plain transaction.

The module runs a task only if the executor's EIP-712 ExecutionRequest signature recovers to an
executor the Safe registered (setExecutor), the requestID was never executed, the orchestrator's
validator countersigned (request digest, committed policy hash, expiry) and that has not expired,
the call is a CALL and the committed policy allows it. The relayer key only pays the gas: the
module accepts the same bytes from anyone, and nothing else from it.

Before anything is sent the same checks run off chain (vaults.module.checks.request_refusal, in
the contract's order), so a refusal names the rule the chain would revert with. This is the only
module of automations that may import vaults, and only vaults.module (pyproject.toml, the layers
contract's ignore_imports)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from web3 import Web3

from orchestrator.automations.models import Subscription
from orchestrator.automations.selectors import VALIDATOR_LABEL, validator_keys
from orchestrator.automations.services.answers import ReviewedTask
from relayer.keys import key_manager
from relayer.models import KeyPurpose, SigningKey
from vaults.module import (
    ModuleError,
    ModuleRequest,
    ModuleRevert,
    execute_request_calldata,
    executor_registered,
    module_enabled,
    module_error,
    module_error_of,
    module_snapshot,
    module_state,
    request_refusal,
    request_signers,
    request_used,
    validation_sign_with_key,
)

ETH = "0x0000000000000000000000000000000000000000"  # the module's limit on the calls' ETH value
# The refusal codes are the module's error names in snake_case; DELEGATECALL keeps the code
# plain sub-accounts have always been refused with.
CODES = {"DelegateCallNotAllowed": "delegatecall_refused"}


@dataclass(frozen=True)
class ModuleRefusal:
    """A refusal in the module's words: `code` its error in snake_case, `message` module_error's
    text ("UnknownExecutor: the request is not signed by an executor this Safe registered (...)")."""

    code: str
    message: str


@dataclass(frozen=True)
class Countersigned:
    """What the check made for the relay: the validator's countersignature and its expiry, and
    the executor's signature as the module takes it (v 27/28). Journaled with the check's output,
    so a relay step that runs again sends the same bytes."""

    module: str
    expiry: int
    validator_signature: str
    executor_signature: str


def refusal_of(revert: ModuleRevert) -> ModuleRefusal:
    code = CODES.get(revert.name) or re.sub(r"(?<!^)(?=[A-Z])", "_", revert.name).lower()
    return ModuleRefusal(code=code, message=module_error_of(revert))


def validator_key() -> SigningKey:
    """The orchestrator's validator key (one for every chain and module), made the first time a
    module subscription needs it. Safe owners register its address with setValidator."""
    key = validator_keys().first()  # every check asks: no lock once it exists
    if key is not None:
        return key
    with transaction.atomic():
        # Two first subscriptions at once must not make two validators.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [VALIDATOR_LABEL])
        key = validator_keys().first()
        if key is None:
            key = key_manager().create_key(purpose=KeyPurpose.VALIDATOR, label=VALIDATOR_LABEL)
    return key


def module_subscription_refusal(w3: Web3, *, safe: str, module: str) -> str | None:
    """Why `module` cannot carry tasks for the sub-account `safe`, or None when it is a
    VaultPolicyModule of that Safe which the Safe has enabled. RPC errors propagate."""
    try:
        state = module_state(w3, module)
    except ModuleError:
        return f"There is no VaultPolicyModule at {module}."
    if state.safe != safe:
        return f"The module at {module} belongs to the Safe {state.safe}, not to {safe}."
    if not module_enabled(w3, safe=safe, module=module):
        return f"The Safe {safe} has not enabled the module {module}."
    return None


def canonical_signature(signature: str) -> str:
    """0x-hex with v 27/28: the module (OpenZeppelin's ECDSA) refuses v written 0/1."""
    raw = bytearray(bytes.fromhex(signature.removeprefix("0x")))
    if len(raw) == 65 and raw[64] in (0, 1):
        raw[64] += 27
    return "0x" + raw.hex()


def module_request(*, subscription: Subscription, task: ReviewedTask, request_id: str) -> ModuleRequest:
    """The executor's ExecutionRequest as the module hashes it: the firing's requestID, the Safe."""
    return ModuleRequest(
        module=subscription.module_address,
        chain_id=subscription.chain_id,
        request_id=request_id,
        subaccount=subscription.sub_account_address,
        call_type=task["callType"],
        to=task["to"],
        value=int(task["value"]),
        data=bytes.fromhex(task["data"].removeprefix("0x")),
    )


def module_check(
    *, w3: Web3, subscription: Subscription, task: ReviewedTask, request_id: str
) -> ModuleRefusal | Countersigned:
    """The module's checks off chain, with the countersignature the relay will send. Reads the
    module's state, limits, executors and used requestIDs (RPC errors propagate: the step is
    retried); signs nothing the module would refuse for another reason than the time."""
    if task["callType"] != 0:
        return refusal_of(ModuleRevert("DelegateCallNotAllowed", {}))
    req = module_request(subscription=subscription, task=task, request_id=request_id)
    try:
        # State, the limits on ETH and on the called token, and the block time: one batch.
        found = module_snapshot(w3, req.module, tokens=(ETH, req.to))
    except ModuleError as exc:
        return ModuleRefusal(code="module_unreadable", message=str(exc)[:300])
    state, block_time = found.state, found.block_time
    # The chain's clock decides; a node whose blocks run ahead of ours must not expire it at once.
    expiry = max(block_time, int(time.time())) + settings.AUTOMATION_VALIDATION_TTL_SECONDS
    executor_signature = canonical_signature(task["executorSignature"])
    validator_signature = validation_sign_with_key(req, state.policy_hash, expiry, key=validator_key())
    executor, validator = request_signers(
        state, req, executor_signature=executor_signature, expiry=expiry, validator_signature=validator_signature
    )
    registered = {executor} if executor and executor_registered(w3, module=req.module, executor=executor) else set()
    refused = request_refusal(
        state,
        req,
        executor=executor,
        registered_executors=registered,
        validator_signer=validator,
        expiry=expiry,
        now=block_time,
        used=request_used(w3, module=req.module, request_id=request_id),
        limits=found.limits,
    )
    if refused is not None:
        return refusal_of(refused)
    return Countersigned(
        module=req.module,
        expiry=expiry,
        validator_signature=validator_signature,
        executor_signature=executor_signature,
    )


def module_calldata(
    *, subscription: Subscription, task: ReviewedTask, request_id: str, countersigned: Countersigned
) -> str:
    """executeRequest(request, executorSignature, expiry, validatorSignature): what the relayer
    key sends to the module, built from the journaled check alone (no RPC)."""
    req = module_request(subscription=subscription, task=task, request_id=request_id)
    return execute_request_calldata(
        req, countersigned.executor_signature, countersigned.expiry, countersigned.validator_signature
    )


def relay_error(error: str) -> str:
    """A failed relay's error with the module's rule in words when its revert data names one."""
    return module_error(error) if error else error
