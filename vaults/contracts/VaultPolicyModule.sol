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

/// @title VaultPolicyModule: operator-signed intents and validated automation requests, executed
///        by a Safe only within the policy its owners committed.
/// @notice One instance per Safe. The Safe's owners (by Safe transactions) commit a policy: its
///         hash, the (target, selector) pairs an intent may call and optional per-token spending
///         limits. The operator key signs an ExecutionIntent (EIP-712, this module as verifying
///         contract, the chain id in the domain); anyone may submit it, so the relayer key only
///         pays gas. The intent runs only if signed by the operator, its nonce is the next one,
///         its deadline has not passed and every call is allowed; then each call is a CALL from
///         the Safe, and if one fails the whole intent reverts: all of it happens or none.
///         Automation tasks come in through executeRequest: an ExecutionRequest signed by an
///         executor the owners registered (the automation API's EIP-712 typed data, the Safe as
///         subaccount), used once, countersigned by the validator key over the request, the
///         committed policy hash and an expiry, and allowed by the same policy.
/// @dev NOT AUDITED. What the tests establish is listed in vaults/module/__init__.py and README.md.
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

    /// The automation API's ExecutionRequest, checked exactly as the API defines it: domain
    /// ("Brahma Builder Kit", "1", chainId) with no verifying contract, the Safe as subaccount.
    bytes32 public constant EXECUTION_REQUEST_TYPEHASH = keccak256(
        "ExecutionRequest(string requestID,address subaccount,uint8 callType,address to,uint256 value,bytes data)"
    );
    /// What the validator signs (this module's domain): the executor's request digest, the policy
    /// it was checked against and until when the countersignature holds.
    bytes32 public constant VALIDATION_TYPEHASH =
        keccak256("Validation(bytes32 requestDigest,bytes32 policyHash,uint256 expiry)");
    bytes32 private constant KERNEL_DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId)");

    bytes4 private constant APPROVE = 0x095ea7b3; // approve(address,uint256)
    bytes4 private constant TRANSFER = 0xa9059cbb; // transfer(address,uint256)
    bytes4 private constant TRANSFER_FROM = 0x23b872dd; // transferFrom(address,address,uint256)
    bytes4 private constant INCREASE_ALLOWANCE = 0x39509351; // increaseAllowance(address,uint256)
    /// An argument rule's bit j (j < 16) asks that argument word j be the Safe; bit 16 + j that
    /// it be one of the policy's targets. Bit 255 marks the pair as allowed.
    uint256 private constant ALLOWED_BIT = 1 << 255;
    uint256 private constant MAX_WORDS = 16;

    address public immutable safe;
    address public operator;
    uint256 public nonce; // the nonce the next intent must carry
    bytes32 public policyHash;

    // Replacing the whole set must not leave old pairs behind: entries are keyed by an epoch that
    // every commit increments, so the previous set is dropped without iterating over it.
    uint256 private policyEpoch;
    mapping(uint256 => mapping(address => mapping(bytes4 => uint256))) private rules;
    mapping(uint256 => mapping(address => bool)) private isTarget;
    address[] private allowedTargets;
    bytes4[] private allowedSelectors;
    uint256[] private allowedArgRules;
    /// Limits per ERC-20; address(0) limits the ETH value of calls.
    mapping(address => Limit) public spendingLimits;

    address public validator;
    mapping(address => bool) public executors;
    mapping(bytes32 => bool) public requestUsed; // keccak256(requestID)

    struct Request {
        string requestID;
        address subaccount;
        uint8 callType;
        address to;
        uint256 value;
        bytes data;
    }

    error NotSafe();
    error BadSignature();
    error WrongNonce(uint256 expected, uint256 given);
    error Expired(uint256 deadline, uint256 nowTs);
    error TargetNotAllowed(address to, bytes4 selector);
    error SpendingLimitExceeded(address token, uint256 requested, uint256 remaining);
    error CallFailed(uint256 index, bytes reason);
    error LengthMismatch(uint256 targets, uint256 selectors);
    error ZeroAddress();
    error ArgumentNotAllowed(uint256 index, uint256 word);
    error DelegateCallNotAllowed();
    error WrongSubaccount(address subaccount);
    error UnknownExecutor(address signer);
    error RequestReplayed(string requestID);
    error ValidationExpired(uint256 expiry, uint256 nowTs);
    error BadValidatorSignature();

    event PolicyCommitted(bytes32 indexed policyHash, uint256 pairs);
    event SpendingLimitSet(address indexed token, uint256 amount, uint64 periodSeconds);
    event OperatorChanged(address indexed operator);
    event IntentExecuted(uint256 indexed nonce, bytes32 callsHash, uint256 calls);
    event ValidatorChanged(address indexed validator);
    event ExecutorSet(address indexed executor, bool allowed);
    event RequestExecuted(bytes32 indexed requestIdHash, address indexed executor, address to);

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

    /// Replaces the policy: its hash and the only (target, selector) pairs intents and requests
    /// may call, each with its argument rule (which argument words must be the Safe, which must
    /// be one of these targets): allowing deposit(uint256,address) says nothing about who
    /// receives the shares; the rule does.
    function commitPolicy(
        bytes32 policyHash_,
        address[] calldata targets,
        bytes4[] calldata selectors,
        uint256[] calldata argRules
    ) external onlySafe {
        if (targets.length != selectors.length) revert LengthMismatch(targets.length, selectors.length);
        if (targets.length != argRules.length) revert LengthMismatch(targets.length, argRules.length);
        uint256 epoch = ++policyEpoch;
        delete allowedTargets;
        delete allowedSelectors;
        delete allowedArgRules;
        for (uint256 i = 0; i < targets.length; i++) {
            rules[epoch][targets[i]][selectors[i]] = ALLOWED_BIT | uint32(argRules[i]);
            isTarget[epoch][targets[i]] = true;
            allowedTargets.push(targets[i]);
            allowedSelectors.push(selectors[i]);
            allowedArgRules.push(uint32(argRules[i]));
        }
        policyHash = policyHash_;
        emit PolicyCommitted(policyHash_, targets.length);
    }

    /// At most `amount` of `token` per window of `periodSeconds`, counted over the amounts of
    /// approve, increaseAllowance, transfer and transferFrom calls made through this module (an
    /// approval is counted when given, since that is when the spender gains the power to move
    /// it); `token == address(0)` limits the ETH sent as the calls' value. `periodSeconds == 0` removes
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

    function setValidator(address validator_) external onlySafe {
        validator = validator_;
        emit ValidatorChanged(validator_);
    }

    /// Registers (or removes) an automation executor whose signed requests this Safe accepts.
    function setExecutor(address executor, bool allowed_) external onlySafe {
        executors[executor] = allowed_;
        emit ExecutorSet(executor, allowed_);
    }

    // --- Reading --------------------------------------------------------------------------------

    function allowedCalls()
        external
        view
        returns (address[] memory targets, bytes4[] memory selectors, uint256[] memory argRules)
    {
        return (allowedTargets, allowedSelectors, allowedArgRules);
    }

    function isAllowed(address to, bytes4 selector) public view returns (bool) {
        // The Safe and this module are never targets, whatever the policy says: an operator must
        // not be able to change owners, modules, the policy or itself.
        if (to == safe || to == address(this)) return false;
        return rules[policyEpoch][to][selector] & ALLOWED_BIT != 0;
    }

    /// The executor's EIP-712 digest of a request, as the automation API defines it.
    function requestDigest(Request calldata request) public view returns (bytes32) {
        bytes32 domain = keccak256(
            abi.encode(KERNEL_DOMAIN_TYPEHASH, keccak256("Brahma Builder Kit"), keccak256("1"), block.chainid)
        );
        bytes32 structHash = keccak256(
            abi.encode(
                EXECUTION_REQUEST_TYPEHASH,
                keccak256(bytes(request.requestID)),
                request.subaccount,
                request.callType,
                request.to,
                request.value,
                keccak256(request.data)
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    /// The digest the validator signs (this module's domain) for a request under the policy.
    function validationDigest(bytes32 requestDigest_, uint256 expiry) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(VALIDATION_TYPEHASH, requestDigest_, policyHash, expiry)));
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
            _authorize(i, calls[i].to, calls[i].value, calls[i].data);
        }
        for (uint256 i = 0; i < calls.length; i++) {
            _call(i, calls[i].to, calls[i].value, calls[i].data);
        }
        emit IntentExecuted(nonce_, keccak256(abi.encode(calls)), calls.length);
    }

    /// Runs an automation task: the executor's signed ExecutionRequest for this Safe, once,
    /// countersigned by the validator under the committed policy before `expiry`. Anyone may
    /// submit it.
    function executeRequest(
        Request calldata request,
        bytes calldata executorSignature,
        uint256 expiry,
        bytes calldata validatorSignature
    ) external {
        if (request.callType != 0) revert DelegateCallNotAllowed();
        if (request.subaccount != safe) revert WrongSubaccount(request.subaccount);
        if (block.timestamp > expiry) revert ValidationExpired(expiry, block.timestamp);
        bytes32 idHash = keccak256(bytes(request.requestID));
        if (requestUsed[idHash]) revert RequestReplayed(request.requestID);
        bytes32 digest = requestDigest(request);
        (address executor, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, executorSignature);
        if (err != ECDSA.RecoverError.NoError || !executors[executor]) revert UnknownExecutor(executor);
        (address signer, ECDSA.RecoverError verr,) =
            ECDSA.tryRecover(validationDigest(digest, expiry), validatorSignature);
        if (verr != ECDSA.RecoverError.NoError || signer != validator || signer == address(0)) {
            revert BadValidatorSignature();
        }

        requestUsed[idHash] = true;
        _authorize(0, request.to, request.value, request.data);
        _call(0, request.to, request.value, request.data);
        emit RequestExecuted(idHash, executor, request.to);
    }

    /// The committed policy's checks on one call: its (target, selector) pair, its argument
    /// rule and the spending limits. Reverts with the rule it breaks.
    function _authorize(uint256 index, address to, uint256 value, bytes calldata data) private {
        bytes4 selector = _selector(data);
        if (!isAllowed(to, selector)) revert TargetNotAllowed(to, selector);
        _checkArguments(index, data, rules[policyEpoch][to][selector]);
        if (value > 0) _count(address(0), value);
        if (selector == APPROVE || selector == TRANSFER || selector == INCREASE_ALLOWANCE) {
            _count(to, _word(data, 1));
        } else if (selector == TRANSFER_FROM) {
            _count(to, _word(data, 2));
        }
    }

    function _checkArguments(uint256 index, bytes calldata data, uint256 rule) private view {
        for (uint256 j = 0; j < MAX_WORDS; j++) {
            bool mustBeSafe = rule & (1 << j) != 0;
            bool mustBeTarget = rule & (1 << (MAX_WORDS + j)) != 0;
            if (!mustBeSafe && !mustBeTarget) continue;
            if (data.length < 4 + 32 * (j + 1)) revert ArgumentNotAllowed(index, j);
            uint256 word = _word(data, j);
            if (word > type(uint160).max) revert ArgumentNotAllowed(index, j);
            address value = address(uint160(word));
            if (mustBeSafe && value != safe) revert ArgumentNotAllowed(index, j);
            if (mustBeTarget && !isTarget[policyEpoch][value]) revert ArgumentNotAllowed(index, j);
        }
    }

    function _call(uint256 index, address to, uint256 value, bytes calldata data) private {
        // CALL only: this module has no way to ask the Safe for a DELEGATECALL.
        (bool ok, bytes memory reason) =
            IAvatar(safe).execTransactionFromModuleReturnData(to, value, data, IAvatar.Operation.Call);
        if (!ok) revert CallFailed(index, reason);
    }

    /// Argument word `j` of a call's data; data too short for it reads as the largest amount,
    /// which no limit allows (the token would revert on it anyway).
    function _word(bytes calldata data, uint256 j) private pure returns (uint256) {
        if (data.length < 4 + 32 * (j + 1)) return type(uint256).max;
        return uint256(bytes32(data[4 + 32 * j:36 + 32 * j]));
    }

    /// Data shorter than a selector (a plain ETH transfer) has selector 0x00000000: the policy
    /// must allow (to, 0x00000000) for it.
    function _selector(bytes calldata data) private pure returns (bytes4) {
        if (data.length < 4) return bytes4(0);
        return bytes4(data[:4]);
    }

    function _count(address token, uint256 requested) private {
        Limit storage limit = spendingLimits[token];
        if (limit.period == 0) return;
        if (block.timestamp >= uint256(limit.windowStart) + limit.period) {
            limit.windowStart = uint64(block.timestamp);
            limit.spent = 0;
        }
        uint256 remaining = limit.amount > limit.spent ? limit.amount - limit.spent : 0;
        if (requested > remaining) revert SpendingLimitExceeded(token, requested, remaining);
        limit.spent += requested;
    }
}
