// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// The part of a Safe (v1.4.1) a module talks to. Safe's Enum.Operation is a uint8 on the wire.
interface IAvatar {
    enum Operation {
        Call,
        DelegateCall
    }

    function execTransactionFromModuleReturnData(address to, uint256 value, bytes calldata data, Operation operation)
        external
        returns (bool success, bytes memory returnData);
}

/// @title VaultPolicyModule: operator-signed intents, executed by a Safe only within the policy
///        its owners committed.
/// @notice One instance per Safe. The Safe's owners (by Safe transactions) commit a policy: its
///         hash, the (target, selector) pairs an intent may call and optional per-token spending
///         limits. The operator key signs an ExecutionIntent (EIP-712, this module as verifying
///         contract, the chain id in the domain); anyone may submit it, so the relayer key only
///         pays gas. The intent runs only if signed by the operator, its nonce is the next one,
///         its deadline has not passed and every call is allowed; then each call is a CALL from
///         the Safe, and if one fails the whole intent reverts: all of it happens or none.
/// @dev NOT AUDITED. What the tests establish is listed in vaults/module/__init__.py.
///      The operator alone can do only what the policy allows; the relayer alone can do nothing;
///      only the Safe (its owners' quorum) changes the policy, the limits or the operator.
contract VaultPolicyModule is EIP712 {
    struct Call {
        address to;
        uint256 value;
        bytes data;
    }

    /// A spending limit on one ERC-20, in fixed windows of `period` seconds starting at
    /// `windowStart`; `period == 0` means the token has no limit.
    struct Limit {
        uint256 amount;
        uint256 spent;
        uint64 period;
        uint64 windowStart;
    }

    /// callsHash is keccak256(abi.encode(calls)) with calls as (address,uint256,bytes)[]: one
    /// word for the whole batch, so the struct stays flat. policyHash binds the signature to the
    /// policy it was made under: once the owners commit another, old signatures no longer verify.
    bytes32 public constant EXECUTION_INTENT_TYPEHASH =
        keccak256("ExecutionIntent(bytes32 callsHash,uint256 nonce,uint256 deadline,bytes32 policyHash)");

    bytes4 private constant APPROVE = 0x095ea7b3; // approve(address,uint256)
    bytes4 private constant TRANSFER = 0xa9059cbb; // transfer(address,uint256)

    address public immutable safe;
    address public operator;
    uint256 public nonce; // the nonce the next intent must carry
    bytes32 public policyHash;

    // Replacing the whole set must not leave old pairs behind: entries are keyed by an epoch that
    // every commit increments, so the previous set is dropped without iterating over it.
    uint256 private policyEpoch;
    mapping(uint256 => mapping(address => mapping(bytes4 => bool))) private allowed;
    address[] private allowedTargets;
    bytes4[] private allowedSelectors;
    mapping(address => Limit) public spendingLimits;

    error NotSafe();
    error BadSignature();
    error WrongNonce(uint256 expected, uint256 given);
    error Expired(uint256 deadline, uint256 nowTs);
    error TargetNotAllowed(address to, bytes4 selector);
    error SpendingLimitExceeded(address token, uint256 requested, uint256 remaining);
    error CallFailed(uint256 index, bytes reason);
    error LengthMismatch(uint256 targets, uint256 selectors);
    error ZeroAddress();

    event PolicyCommitted(bytes32 indexed policyHash, uint256 pairs);
    event SpendingLimitSet(address indexed token, uint256 amount, uint64 periodSeconds);
    event OperatorChanged(address indexed operator);
    event IntentExecuted(uint256 indexed nonce, bytes32 callsHash, uint256 calls);

    modifier onlySafe() {
        if (msg.sender != safe) revert NotSafe();
        _;
    }

    constructor(address safe_, address operator_) EIP712("VaultPolicyModule", "1") {
        if (safe_ == address(0)) revert ZeroAddress();
        safe = safe_;
        operator = operator_;
        emit OperatorChanged(operator_);
    }

    // --- Set by the Safe (a transaction of its owners) -------------------------------------------

    /// Replaces the policy: its hash and the only (target, selector) pairs intents may call.
    function commitPolicy(bytes32 policyHash_, address[] calldata targets, bytes4[] calldata selectors)
        external
        onlySafe
    {
        if (targets.length != selectors.length) revert LengthMismatch(targets.length, selectors.length);
        uint256 epoch = ++policyEpoch;
        delete allowedTargets;
        delete allowedSelectors;
        for (uint256 i = 0; i < targets.length; i++) {
            allowed[epoch][targets[i]][selectors[i]] = true;
            allowedTargets.push(targets[i]);
            allowedSelectors.push(selectors[i]);
        }
        policyHash = policyHash_;
        emit PolicyCommitted(policyHash_, targets.length);
    }

    /// At most `amount` of `token` per window of `periodSeconds`, counted over the amounts of
    /// approve and transfer calls made through this module (an approval is counted when given,
    /// since that is when the spender gains the power to move it). `periodSeconds == 0` removes
    /// the limit. Setting a limit starts a new window with nothing spent.
    function setSpendingLimit(address token, uint256 amount, uint64 periodSeconds) external onlySafe {
        if (periodSeconds == 0) {
            delete spendingLimits[token];
        } else {
            spendingLimits[token] = Limit(amount, 0, periodSeconds, uint64(block.timestamp));
        }
        emit SpendingLimitSet(token, amount, periodSeconds);
    }

    function setOperator(address operator_) external onlySafe {
        operator = operator_;
        emit OperatorChanged(operator_);
    }

    // --- Reading --------------------------------------------------------------------------------

    function allowedCalls() external view returns (address[] memory targets, bytes4[] memory selectors) {
        return (allowedTargets, allowedSelectors);
    }

    function isAllowed(address to, bytes4 selector) public view returns (bool) {
        // The Safe and this module are never targets, whatever the policy says: an operator must
        // not be able to change owners, modules, the policy or itself.
        if (to == safe || to == address(this)) return false;
        return allowed[policyEpoch][to][selector];
    }

    /// The EIP-712 digest the operator signs for this intent, under the committed policy.
    function intentDigest(Call[] calldata calls, uint256 nonce_, uint256 deadline) public view returns (bytes32) {
        bytes32 callsHash = keccak256(abi.encode(calls));
        return _hashTypedDataV4(keccak256(abi.encode(EXECUTION_INTENT_TYPEHASH, callsHash, nonce_, deadline, policyHash)));
    }

    // --- Executing ------------------------------------------------------------------------------

    /// Runs an operator-signed intent through the Safe, all calls or none. Anyone may submit it.
    function executeIntent(Call[] calldata calls, uint256 nonce_, uint256 deadline, bytes calldata signature)
        external
    {
        if (nonce_ != nonce) revert WrongNonce(nonce, nonce_);
        if (block.timestamp > deadline) revert Expired(deadline, block.timestamp);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(intentDigest(calls, nonce_, deadline), signature);
        if (err != ECDSA.RecoverError.NoError || signer != operator) revert BadSignature();

        // Effects before the calls: a call that re-enters finds the nonce used and the limits spent.
        nonce = nonce_ + 1;
        for (uint256 i = 0; i < calls.length; i++) {
            bytes4 selector = _selector(calls[i].data);
            if (!isAllowed(calls[i].to, selector)) revert TargetNotAllowed(calls[i].to, selector);
            if (selector == APPROVE || selector == TRANSFER) _spend(calls[i].to, calls[i].data);
        }
        for (uint256 i = 0; i < calls.length; i++) {
            // CALL only: this module has no way to ask the Safe for a DELEGATECALL.
            (bool ok, bytes memory reason) = IAvatar(safe).execTransactionFromModuleReturnData(
                calls[i].to, calls[i].value, calls[i].data, IAvatar.Operation.Call
            );
            if (!ok) revert CallFailed(i, reason);
        }
        emit IntentExecuted(nonce_, keccak256(abi.encode(calls)), calls.length);
    }

    /// Data shorter than a selector (a plain ETH transfer) has selector 0x00000000: the policy
    /// must allow (to, 0x00000000) for it.
    function _selector(bytes calldata data) private pure returns (bytes4) {
        if (data.length < 4) return bytes4(0);
        return bytes4(data[:4]);
    }

    function _spend(address token, bytes calldata data) private {
        Limit storage limit = spendingLimits[token];
        if (limit.period == 0) return;
        // Short calldata would make the token revert anyway; refusing it here keeps the count exact.
        uint256 requested = data.length >= 68 ? abi.decode(data[36:68], (uint256)) : type(uint256).max;
        if (block.timestamp >= uint256(limit.windowStart) + limit.period) {
            limit.windowStart = uint64(block.timestamp);
            limit.spent = 0;
        }
        uint256 remaining = limit.amount > limit.spent ? limit.amount - limit.spent : 0;
        if (requested > remaining) revert SpendingLimitExceeded(token, requested, remaining);
        limit.spent += requested;
    }
}
