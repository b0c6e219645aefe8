"""VaultPolicyModule: a Safe (v1.4.1) module that runs operator-signed intents within the policy
the Safe's owners committed on chain (vaults/contracts/VaultPolicyModule.sol). NOT AUDITED.

One module per Safe, deployed with (safe, operator). The owners, by Safe transactions (a
MultiSend of the calls built here), enable it (enableModule, a call from the Safe to itself),
commit a policy (its hash, the (target, selector) pairs intents may call and each pair's
argument rule: which argument words must be the Safe, which one of the policy's targets) and
optionally a spending limit per ERC-20 and period, counted over approve, increaseAllowance,
transfer and transferFrom amounts (address(0): the ETH sent as calls' value). The operator signs
an ExecutionIntent (EIP-712: the module as verifying contract, the chain id in the domain) over
the calls' hash, the module's next nonce, a deadline and the committed policy hash; any key may
submit it (the relayer only pays gas). The module checks nonce, deadline, signature, that no
call targets the Safe or the module and that every (target, selector) is allowed, and the
limits; then each call is a CALL from the Safe (never a DELEGATECALL: the interface cannot ask
for one), and if any fails the whole intent reverts (CallFailed).

What tests/vaults/test_policy_module.py establishes on anvil with the real Safe: a valid intent
moves the funds in one transaction; a forged signature, a replayed nonce, a passed deadline, a
target or selector outside the policy, an exceeded limit, a non-Safe caller of a setter and a
batch whose last call fails each revert with their named error and leave balances, allowances
and the nonce as they were.

Automation tasks: an executor the Safe registered (setExecutor) signs the automation API's
ExecutionRequest for the Safe; the validator (setValidator) countersigns Validation(request
digest, committed policy hash, expiry) under the module's domain; anyone submits executeRequest,
which runs each requestID once, as a CALL, under the same policy checks as intents.
tests/vaults/test_policy_module_requests.py establishes on anvil a validated request that runs
once and each request refusal (unknown executor, replay, expiry, another validator or policy,
DELEGATECALL, another subaccount, a target outside the policy), signatures by the relayer key
refused; tests/vaults/test_policy_module_rules.py the argument rules (a receiver other than the
Safe, a spender outside the policy), limits counting increaseAllowance, transferFrom and ETH,
and that for every refusal of an intent or a request the off-chain check names the same error
with the same arguments; tests/vaults/test_flow_a_module.py Flow A through it end to end (one
transaction, refusals named off chain first, a failing last deposit moving nothing, one
transaction when a worker is killed around the broadcast) and tests/vaults/test_flow_a_module_refusals.py
its refusals on the real Flow A path (a replayed nonce, a passed deadline, a call outside the
policy, a relayer key calling a setter: each refused with the revert's name before anything is
broadcast); tests/automations/test_module_subaccount.py and test_module_route_refusals.py the
same for automation firings through the module. The README lists these properties and what
they do not cover.

- contract: deploying (development), the Safe's calls that enable and configure it, its state.
- intents: ModuleIntent, its typed data, signing (eth_account or key manager), calldata.
- requests: ModuleRequest, the executor's digest as the module computes it, the validator's
  countersignature, calldata, requestUsed and executors read back.
- checks: the contract's checks off chain (intent_refusal, request_refusal), in its order and
  with its error names, and signers recovered as the module recovers them.
- errors: the custom errors in words (module_error), for refusals made off chain too."""

from vaults.module.checks import intent_refusal, intent_signer, recover, request_refusal, request_signers
from vaults.module.contract import (
    AllowedCall,
    Limit,
    ModuleError,
    ModuleSnapshot,
    ModuleState,
    commit_policy_call,
    enable_module_call,
    module_abi,
    module_deploy_dev,
    module_enabled,
    module_limit,
    module_snapshot,
    module_state,
    set_executor_call,
    set_operator_call,
    set_spending_limit_call,
    set_validator_call,
)
from vaults.module.errors import MODULE_ERRORS, ModuleRevert, module_error, module_error_of, module_revert
from vaults.module.intents import (
    INTENT_TYPES,
    ModuleIntent,
    calls_hash,
    execute_intent_calldata,
    intent_sign,
    intent_sign_with_key,
)
from vaults.module.requests import (
    ModuleRequest,
    execute_request_calldata,
    executor_registered,
    request_digest,
    request_sign,
    request_used,
    validation_digest,
    validation_sign,
    validation_sign_with_key,
    validation_typed_data,
)

__all__ = [
    "INTENT_TYPES",
    "MODULE_ERRORS",
    "AllowedCall",
    "Limit",
    "ModuleError",
    "ModuleIntent",
    "ModuleRequest",
    "ModuleRevert",
    "ModuleSnapshot",
    "ModuleState",
    "calls_hash",
    "commit_policy_call",
    "enable_module_call",
    "execute_intent_calldata",
    "execute_request_calldata",
    "executor_registered",
    "intent_refusal",
    "intent_sign",
    "intent_sign_with_key",
    "intent_signer",
    "module_abi",
    "module_deploy_dev",
    "module_enabled",
    "module_error",
    "module_error_of",
    "module_limit",
    "module_revert",
    "module_snapshot",
    "module_state",
    "recover",
    "request_digest",
    "request_refusal",
    "request_sign",
    "request_signers",
    "request_used",
    "set_executor_call",
    "set_operator_call",
    "set_spending_limit_call",
    "set_validator_call",
    "validation_digest",
    "validation_sign",
    "validation_sign_with_key",
    "validation_typed_data",
]
