"""Safe (v1.4.1) smart accounts: the chain library the vaults held by a Safe build on.

A vault's funds can be held by a Safe whose owners are its approvers' wallets and whose
threshold is their quorum; the vault account key then only pays gas (it relays
execTransaction). This package is pure chain code, no models:

- contracts: Safe, SafeProxyFactory, CompatibilityFallbackHandler and MultiSendCallOnly from
  the npm artifacts of @safe-global/safe-contracts 1.4.1 (never recompiled). On a chain that
  @safe-global/safe-deployments lists, its canonical addresses (which must have code); on any
  other (anvil), CREATE2 addresses through the deterministic deployment proxy 0x4e59...956C,
  deployed by `./manage.py chain bootstrap` and the same after every restart of the chain.
- accounts: a Safe created by the proxy factory (createProxyWithNonce) at an address predicted
  before it exists.
- transactions: SafeTx, the EIP-712 struct owners sign in their wallets (eth_signTypedData_v4
  of SafeTx.typed_data()), whose hash binds chain, Safe and nonce; a rebalance is one
  DELEGATECALL to MultiSendCallOnly batching plain CALLs; a rejection is the empty transaction at
  the same nonce; execTransaction carries the signatures sorted by owner address.
- state: owners, threshold and nonce read back; owner changes as calls from the Safe to itself;
  ExecutionSuccess vs ExecutionFailure; GSxxx revert codes in plain English.

Signatures go through orchestrator.infra.signatures (low s, v 27/28), like every other one."""

from vaults.safe.accounts import safe_address_predicted, safe_create_call, safe_deploy_dev, safe_setup_calldata
from vaults.safe.contracts import (
    CREATE2_PROXY,
    SAFE_VERSION,
    Artifact,
    SafeContracts,
    SafeUnavailable,
    artifact,
    canonical_addresses,
    create2_address,
    development_addresses,
    safe_abi,
    safe_contracts,
)
from vaults.safe.state import (
    SAFE_ERRORS,
    SafeState,
    owner_change_calls,
    safe_execution_succeeded,
    safe_revert_reason,
    safe_state,
)
from vaults.safe.transactions import (
    CALL,
    DELEGATECALL,
    SENTINEL,
    ZERO_ADDRESS,
    Call,
    SafeTx,
    calls_of,
    exec_transaction_calldata,
    multisend_tx,
    rejection_tx,
    signature_owner,
)

__all__ = [
    "CALL",
    "CREATE2_PROXY",
    "DELEGATECALL",
    "SAFE_ERRORS",
    "SAFE_VERSION",
    "SENTINEL",
    "ZERO_ADDRESS",
    "Artifact",
    "Call",
    "SafeContracts",
    "SafeState",
    "SafeTx",
    "SafeUnavailable",
    "artifact",
    "calls_of",
    "canonical_addresses",
    "create2_address",
    "development_addresses",
    "exec_transaction_calldata",
    "multisend_tx",
    "owner_change_calls",
    "rejection_tx",
    "safe_abi",
    "safe_address_predicted",
    "safe_contracts",
    "safe_create_call",
    "safe_deploy_dev",
    "safe_execution_succeeded",
    "safe_revert_reason",
    "safe_setup_calldata",
    "safe_state",
    "signature_owner",
]
