"""An example executor: what an automation author writes, in any language (docs/automations.md,
"The example executor and the demo"; the wire contract is docs/api.md, "Webhooks"). `make run`
starts this one and subscribes it to an interval trigger.

    python -m orchestrator.devtools.example_executor
        EXAMPLE_EXECUTOR_PORT      where to listen (127.0.0.1)
        EXAMPLE_EXECUTOR_KEY       the executor's private key (signs execution requests)
        EXAMPLE_EXECUTOR_HMAC_KEY  the config's hmacKey

On POST /kernel/trigger it checks the Standard Webhooks signature and refuses calls older than
five minutes, checks the body's HMAC signature of the requestID, then answers: the second of
every three firings a signed task (a zero-value call to its sub-account, so a real transaction
is relayed), otherwise a signed skip. On POST /kernel/executed it answers {"log": ...}, which the
orchestrator keeps as that execution's postExecutionState.

The signing and checking (the EIP-712 ExecutionRequest, the HMACs, the webhook headers) come
from orchestrator/automations/typed_data.py, the module the orchestrator checks them with; an
executor in another language implements those few functions after it."""

from __future__ import annotations

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_account import Account

from orchestrator.automations.typed_data import (
    Executable,
    hmac_valid,
    skip_answer,
    task_answer,
    webhook_authentic,
)


class Executor:
    def __init__(self, private_key: str, hmac_key: str) -> None:
        self.account = Account.from_key(private_key)
        self.hmac_key = hmac_key

    def authentic(self, headers: dict[str, str], raw: bytes) -> bool:
        """Standard Webhooks: v1,<base64 HMAC over id.timestamp.body>, and not too old."""
        return webhook_authentic(self.hmac_key, headers, raw)

    def on_trigger(self, body: dict[str, Any]) -> dict[str, Any]:
        request_id = body["requestID"]
        if not hmac_valid(self.hmac_key, request_id, body["signature"]):
            raise PermissionError("bad body signature")
        if body["context"]["executionCount"] % 3 != 1:
            return skip_answer(hmac_key=self.hmac_key, request_id=request_id)
        params = body["params"]
        subaccount = params["subAccountAddress"]
        executable: Executable = {"callType": 0, "to": subaccount, "value": "0", "data": "0x"}
        return task_answer(
            hmac_key=self.hmac_key,
            request_id=request_id,
            chain_id=params["chainID"],
            subaccount=subaccount,
            executable=executable,
            signer=self.account,
        )

    def on_executed(self, body: dict[str, Any]) -> dict[str, Any]:
        response = body["relayResponse"]
        return {
            "log": {
                "executionRequestID": body["executionRequestID"],
                "successful": body["successful"],
                "transaction": response["outputTransactionHash"],
                "seenAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        }


def send_json(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    send_bytes(handler, status, json.dumps(body).encode())


def send_bytes(handler: BaseHTTPRequestHandler, status: int, payload: bytes) -> None:
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
    except (BrokenPipeError, ConnectionResetError):  # the caller timed out and left
        pass


def handler_for(executor: Executor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            if not executor.authentic(headers, raw):
                return send_json(self, 401, {"error": "bad or stale webhook signature"})
            routes = {"/kernel/trigger": executor.on_trigger, "/kernel/executed": executor.on_executed}
            if self.path not in routes:
                return send_json(self, 404, {"error": "no such hook"})
            try:
                return send_json(self, 200, routes[self.path](json.loads(raw)))
            except (PermissionError, KeyError, ValueError) as exc:
                return send_json(self, 400, {"error": str(exc)})

    return Handler


def main() -> None:
    executor = Executor(os.environ["EXAMPLE_EXECUTOR_KEY"], os.environ["EXAMPLE_EXECUTOR_HMAC_KEY"])
    port = int(os.environ.get("EXAMPLE_EXECUTOR_PORT", "8601"))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler_for(executor))
    print(f"example executor {executor.account.address} listening on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
