"""The steps after an executor answered with a task (or was refused): the policy check, the
relay, and the post-execution hook (docs/api.md, "/kernel/executed").

Each step returns a frozen dataclass, journaled as its `asdict` (the JSON the steps returned
as dicts before: runs started then resume on it), and the next step reads it back typed with
`ctx.output(step, Type)`."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from django.utils import timezone
from web3.exceptions import Web3Exception

from orchestrator.automations.models import Firing, FiringStatus, ReportStatus, Subscription
from orchestrator.automations.services.answers import Verdict
from orchestrator.automations.services.configs import config_hmac_key
from orchestrator.automations.services.destinations import DestinationRefused, destination_pin
from orchestrator.automations.services.hooks import HookCall, hook_url, hooks_post
from orchestrator.automations.services.module_route import (
    Countersigned,
    ModuleRefusal,
    module_calldata,
    module_check,
    relay_error,
)
from orchestrator.automations.services.policy import task_policy_check
from orchestrator.automations.typed_data import hmac_hex
from orchestrator.automations.wire import rfc3339
from orchestrator.engine import RetryableError, StepContext, Wait
from orchestrator.engine.models import Phase
from relayer.keys import key_manager
from relayer.models import Chain, RelayTransaction, SigningKey, TxPhase
from relayer.rpc import TRANSPORT_ERRORS, RpcUnavailable, web3_for
from relayer.services.requests import InvalidRelayRequest, relay_request

logger = logging.getLogger("orchestrator.automations")

NO_TIME = "0001-01-01T00:00:00Z"  # relayResponse.createdAt when there is no relay (Go's zero time)
# Fallback wake-up while a relay is under way; the relay's finish listener normally wakes it.
RELAY_POLL_SECONDS = 30


@dataclass(frozen=True)
class Refusal:
    """Why a task was not relayed, as /kernel/executed reports it: a code (`type`) and a message."""

    type: str
    message: str


@dataclass(frozen=True)
class Checked:
    """The check step's output: `refused` is None when the task may be relayed. `module`: for a
    sub-account with a policy module, the countersignature the relay sends (made once, here)."""

    refused: Refusal | None
    module: Countersigned | None = None


@dataclass(frozen=True)
class Relayed:
    """The relay step's output: whether the task's transaction succeeded, why not, and the relay
    transaction's id (None when the task was refused before reaching the relayer)."""

    successful: bool
    error: Refusal | None
    tx: str | None


@dataclass(frozen=True)
class Reported:
    """The report step's output: the post-execution hook delivered or skipped (404)."""

    report: str
    requestID: str  # the /kernel/executed body's requestID (the journaled key)


@dataclass(frozen=True)
class ReportFailed:
    """The report step's output when the executor answered /kernel/executed with an error."""

    report: str
    status: int | None
    requestID: str


def _firing(ctx: StepContext) -> Firing:
    return Firing.objects.select_related(
        "subscription__config__executor", "subscription__config__verifying_key", "relay_transaction__signer"
    ).get(pk=ctx.input["firing"])


def _verdict(ctx: StepContext) -> Verdict:
    """The reviewed answer the run was started with (journaled as its asdict)."""
    return Verdict(**ctx.input["verdict"])


def _refusal(code: str, message: str) -> Checked:
    return Checked(refused=Refusal(type=code, message=message))


def execution_check(ctx: StepContext) -> Checked:
    """The automation policy, on a task whose answer passed review; for a sub-account with a
    policy module, the module's own checks first (services/module_route.py), refused in its
    words. Refusals are outcomes, not errors; an RPC that does not answer is retried."""
    verdict = _verdict(ctx)
    if verdict.outcome != "task":
        return _refusal(verdict.code, verdict.reason)
    firing = _firing(ctx)
    sub = firing.subscription
    chain = Chain.objects.filter(chain_id=sub.chain_id, enabled=True).first()
    if chain is None:
        return _refusal("unknown_chain", f"chain {sub.chain_id} is not configured here")
    w3 = web3_for(chain.rpc_url)
    countersigned = None
    if sub.module_address:
        try:
            routed = module_check(w3=w3, subscription=sub, task=verdict.task, request_id=firing.request_id)
        except TRANSPORT_ERRORS as exc:
            raise RpcUnavailable(f"chain {chain.chain_id} RPC: {exc}") from exc
        except Web3Exception as exc:  # a revert or garbage where the module was: nothing to run
            return _refusal("module_unreadable", f"could not read the module: {exc}"[:300])
        if isinstance(routed, ModuleRefusal):
            return _refusal(routed.code, routed.message)
        countersigned = routed
    try:
        violations = task_policy_check(subscription=sub, task=verdict.task, w3=w3)
    except TRANSPORT_ERRORS as exc:
        raise RpcUnavailable(f"chain {chain.chain_id} RPC: {exc}") from exc
    except Exception as exc:  # a token whose decimals() reverts or answers garbage
        return _refusal("token_unreadable", f"could not read the token's decimals: {exc}"[:300])
    if violations:
        return _refusal(violations[0].code, "; ".join(v.message for v in violations))
    return Checked(refused=None, module=countersigned)


def _relayer_for(sub: Subscription) -> SigningKey:
    """The config's relayer keys, shared out by subscription (the same one every time)."""
    keys = sorted(sub.config.relayers.all(), key=lambda k: k.address)
    return keys[sub.id.int % len(keys)]


def execution_relay(ctx: StepContext) -> Relayed | Wait:
    """Asks the relayer once (the firing is the idempotency key) and waits for it to finish."""
    firing = _firing(ctx)
    checked = ctx.output("check", Checked)
    refused, countersigned = checked.refused, checked.module
    sub, task = firing.subscription, _verdict(ctx).task
    if refused is None and sub.module_address and countersigned is None:
        # Never a plain transaction for a Safe sub-account: without the check's countersignature
        # there is nothing the module would run.
        refused = Refusal(type="module_unchecked", message="the module's checks did not run for this task")
    if refused is None:
        to, value, data = task["to"], int(task["value"]), task["data"]
        if countersigned is not None:  # the module's executeRequest; the Safe pays the task's value
            to, value = countersigned.module, 0
            data = module_calldata(
                subscription=sub, task=task, request_id=firing.request_id, countersigned=countersigned
            )
        try:
            tx = relay_request(
                signer=_relayer_for(sub),
                chain=Chain.objects.get(chain_id=sub.chain_id),
                to=to,
                value=value,
                data=data,
                idempotency_key=f"firing:{firing.pk}",
                requested_by=("firing", str(firing.pk)),
                correlation_id=firing.correlation_id,
                requester_run_id=ctx.run_id,
            )
        except InvalidRelayRequest as exc:
            refused = Refusal(type="invalid_task", message=str(exc))
    if refused is not None:
        reason = f"{refused.type}: {refused.message}"
        Firing.objects.filter(pk=firing.pk).update(status=FiringStatus.REFUSED, reason=reason)
        return Relayed(successful=False, error=refused, tx=None)
    Firing.objects.filter(pk=firing.pk).update(relay_transaction=tx)
    if tx.phase == TxPhase.COMPLETED:
        Firing.objects.filter(pk=firing.pk).update(
            status=FiringStatus.RELAYED, reason="", output_tx_hash=tx.mined_hash or tx.tx_hash
        )
        return Relayed(successful=True, error=None, tx=str(tx.id))
    if tx.phase in (TxPhase.FAILED, TxPhase.DEAD_LETTER):
        error = relay_error(tx.error) if countersigned is not None else tx.error  # the module's rule, in words
        Firing.objects.filter(pk=firing.pk).update(status=FiringStatus.FAILED, reason=f"relay failed: {error}")
        return Relayed(successful=False, error=Refusal(type="relay_failed", message=error), tx=str(tx.id))
    return Wait(
        phase=Phase.CONFIRMING,
        resume_at=timezone.now() + timedelta(seconds=RELAY_POLL_SECONDS),
        info={"waiting": "relay", "tx": str(tx.id)},
    )


def executed_body(firing: Firing, outcome: Relayed, hmac_key: str) -> dict[str, Any]:
    """The /kernel/executed body (docs/api.md). Its requestID is derived from the firing, so every
    retry of this hook carries the same one."""
    request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"executed:{firing.pk}"))
    tx: RelayTransaction | None = firing.relay_transaction
    mined = (tx.mined_hash or tx.tx_hash or None) if tx and tx.phase == TxPhase.COMPLETED else None
    error = outcome.error or Refusal(type="", message="")
    return {
        "requestID": request_id,
        "successful": outcome.successful,
        "error": asdict(error),
        "executionRequestID": firing.request_id,
        "relayResponse": {
            "taskId": str(tx.id) if tx else "",
            "metadata": {
                "request": {
                    "taskId": str(tx.id) if tx else "",
                    "to": tx.to if tx else "",
                    "callData": tx.data if tx else "",
                    "requestedAt": int(tx.created_at.timestamp()) if tx else 0,
                    "timeout": 0,
                    "signer": tx.signer.address if tx else "",
                    "chainID": str(firing.subscription.chain_id),
                    "useSafeGasEstimate": False,
                    "maxGasLimit": (tx.gas_limit or 0) if tx else 0,
                    "enableAccessList": False,
                    "backendId": "vault-orchestrator",
                    "webhook": "",
                },
                "response": {
                    "isSuccessful": outcome.successful,
                    "error": error.message,
                    "transactionHash": mined,
                },
            },
            "outputTransactionHash": mined,
            "status": tx.phase if tx else "refused",
            "createdAt": rfc3339(tx.created_at) if tx else NO_TIME,
        },
        "signature": hmac_hex(hmac_key, request_id),
    }


def execution_report(ctx: StepContext) -> Reported | ReportFailed:
    """POST /kernel/executed: a 404 skips it for good; a 200 may carry {"log": ...}, stored as
    the firing's postExecutionState; timeouts and 5xx are retried with backoff."""
    firing = _firing(ctx)
    config = firing.subscription.config
    hmac_key = config_hmac_key(config)
    body = executed_body(firing, ctx.output("relay", Relayed), hmac_key)
    try:
        destination = destination_pin(config.base_url)  # the call connects to what is checked here
    except DestinationRefused as exc:
        raise RetryableError(f"destination refused: {exc}") from exc
    Firing.objects.filter(pk=firing.pk).update(report_status=ReportStatus.PENDING)
    call = HookCall(
        url=hook_url(config.base_url, "executed"),
        destination=destination,
        body=body,
        request_id=body["requestID"],
        hmac_key=hmac_key,
        verifying_signature=key_manager().sign_message(key=config.verifying_key, text=body["requestID"]),
        correlation_id=firing.correlation_id,
    )
    answer = hooks_post([call])[0]
    if answer.retryable:
        raise RetryableError(f"/kernel/executed: {answer.error or f'HTTP {answer.status}'}")
    if answer.status == 404:
        Firing.objects.filter(pk=firing.pk).update(report_status=ReportStatus.SKIPPED)
        return Reported(report="skipped", requestID=body["requestID"])
    if not 200 <= (answer.status or 0) < 300 or answer.error:
        Firing.objects.filter(pk=firing.pk).update(report_status=ReportStatus.FAILED)
        logger.warning("firing %s: /kernel/executed answered %s %s", firing.request_id, answer.status, answer.error)
        return ReportFailed(report="failed", status=answer.status, requestID=body["requestID"])
    fields: dict[str, Any] = {"report_status": ReportStatus.DELIVERED}
    if isinstance(answer.answer, dict) and "log" in answer.answer:
        fields["post_execution_state"] = answer.answer["log"]
    Firing.objects.filter(pk=firing.pk).update(**fields)
    return Reported(report="delivered", requestID=body["requestID"])
