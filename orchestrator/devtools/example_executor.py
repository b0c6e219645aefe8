"""An example executor, as seed 001 describes one: what an automation author writes, in any
language. `make run` starts this one and subscribes it to an interval trigger.

    python -m orchestrator.devtools.example_executor
        EXAMPLE_EXECUTOR_PORT      where to listen (127.0.0.1)
        EXAMPLE_EXECUTOR_KEY       the executor's private key (signs execution requests)
        EXAMPLE_EXECUTOR_HMAC_KEY  the config's hmacKey

On POST /kernel/trigger it checks the Standard Webhooks signature and refuses calls older than
five minutes, checks the body's HMAC signature of the requestID, then answers: the second of
every three firings a signed task (a zero-value call to its sub-account, so a real transaction
is relayed), otherwise a signed skip. On POST /kernel/executed it answers {"log": ...}, which the
orchestrator keeps as that execution's postExecutionState."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data

DOMAIN = {"name": "Brahma Builder Kit", "version": "1"}
EXECUTION_REQUEST = [
    {"name": "requestID", "type": "string"},
    {"name": "subaccount", "type": "address"},
    {"name": "callType", "type": "uint8"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "data", "type": "bytes"},
]
MAX_AGE_SECONDS = 300


def hmac_hex(key: str, text: str) -> str:
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


class Executor:
    def __init__(self, private_key: str, hmac_key: str) -> None:
        self.account = Account.from_key(private_key)
        self.hmac_key = hmac_key

    def authentic(self, headers: Any, raw: bytes) -> bool:
        """Standard Webhooks: v1,<base64 HMAC over id.timestamp.body>, and not too old."""
        msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "0")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > MAX_AGE_SECONDS:
            return False
        digest = hmac.new(self.hmac_key.encode(), f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(digest).decode()
        return any(hmac.compare_digest(expected, given) for given in headers.get("webhook-signature", "").split())

    def on_trigger(self, body: dict[str, Any]) -> dict[str, Any]:
        request_id = body["requestID"]
        if not hmac.compare_digest(body["signature"], hmac_hex(self.hmac_key, request_id)):
            raise PermissionError("bad body signature")
        params = body["params"]
        if body["context"]["executionCount"] % 3 != 1:
            return {
                "skip": True,
                "requestID": request_id,
                "task": None,
                "signature": hmac_hex(self.hmac_key, f"{request_id}:0x"),
            }
        subaccount = params["subAccountAddress"]
        executable = {"callType": 0, "to": subaccount, "value": "0", "data": "0x"}
        message = {"requestID": request_id, "subaccount": subaccount, **executable, "value": 0}
        signable = encode_typed_data(
            domain_data=DOMAIN | {"chainId": params["chainID"]},
            message_types={"ExecutionRequest": EXECUTION_REQUEST},
            message_data=message,
        )
        signature = "0x" + self.account.sign_message(signable).signature.hex().removeprefix("0x")
        return {
            "skip": False,
            "requestID": request_id,
            "task": {
                "subaccount": subaccount,
                "executor": self.account.address,
                "executorSignature": signature,
                "executable": executable,
            },
            "signature": hmac_hex(self.hmac_key, f"{request_id}:{signature}"),
        }

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


def handler_for(executor: Executor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if not executor.authentic(self.headers, raw):
                return self._send(401, {"error": "bad or stale webhook signature"})
            routes = {"/kernel/trigger": executor.on_trigger, "/kernel/executed": executor.on_executed}
            if self.path not in routes:
                return self._send(404, {"error": "no such hook"})
            try:
                return self._send(200, routes[self.path](json.loads(raw)))
            except (PermissionError, KeyError, ValueError) as exc:
                return self._send(400, {"error": str(exc)})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def main() -> None:
    executor = Executor(os.environ["EXAMPLE_EXECUTOR_KEY"], os.environ["EXAMPLE_EXECUTOR_HMAC_KEY"])
    port = int(os.environ.get("EXAMPLE_EXECUTOR_PORT", "8601"))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler_for(executor))
    print(f"example executor {executor.account.address} listening on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
