"""VaultPolicyModule: a Safe (v1.4.1) module that runs operator-signed intents within the policy
the Safe's owners committed on chain (vaults/contracts/VaultPolicyModule.sol). NOT AUDITED.

One module per Safe, deployed with (safe, operator). The owners, by Safe transactions (a
MultiSend of the calls built here), enable it (enableModule, a call from the Safe to itself),
commit a policy (its hash and the (target, selector) pairs intents may call) and optionally a
spending limit per ERC-20 and period, counted over approve/transfer amounts. The operator signs
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

- contract: deploying (development), the Safe's calls that enable and configure it, its state.
- intents: ModuleIntent, its typed data, signing (eth_account or key manager), calldata.
- errors: the custom errors in words (module_error), for refusals made off chain too."""

from vaults.module.contract import (
    AllowedCall,
    ModuleError,
    ModuleState,
    commit_policy_call,
    enable_module_call,
    module_abi,
    module_deploy_dev,
    module_enabled,
    module_state,
    set_operator_call,
    set_spending_limit_call,
)
from vaults.module.errors import MODULE_ERRORS, ModuleRevert, module_error, module_revert
from vaults.module.intents import (
    INTENT_TYPES,
    ModuleIntent,
    calls_hash,
    execute_intent_calldata,
    intent_sign,
    intent_sign_with_key,
)

__all__ = [
    "INTENT_TYPES",
    "MODULE_ERRORS",
    "AllowedCall",
    "ModuleError",
    "ModuleIntent",
    "ModuleRevert",
    "ModuleState",
    "calls_hash",
    "commit_policy_call",
    "enable_module_call",
    "execute_intent_calldata",
    "intent_sign",
    "intent_sign_with_key",
    "module_abi",
    "module_deploy_dev",
    "module_enabled",
    "module_error",
    "module_revert",
    "module_state",
    "set_operator_call",
    "set_spending_limit_call",
]
