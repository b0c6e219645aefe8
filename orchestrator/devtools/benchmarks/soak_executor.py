"""The soak's own automation author: an executor HTTP server on 127.0.0.1, in a thread of the
bench process, that checks every hook as an author's would (Standard Webhooks signature and
age, the body's HMAC, x-verifying-signature from the config's verifying key) and answers every
other firing with a signed task (an ERC-20 `approve` of the demo token, so a real transaction
with calldata is relayed) and the others with a signed skip. It counts what it received, so
the soak sees hooks that arrived twice and post-execution calls that never came."""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data

from orchestrator.devtools.example_executor import DOMAIN, EXECUTION_REQUEST, Executor, hmac_hex

APPROVE = "0x095ea7b3"  # approve(address,uint256)


def approve_calldata(spender: str, amount: int) -> str:
    return APPROVE + spender.lower().removeprefix("0x").rjust(64, "0") + f"{amount:064x}"


class SoakExecutor(Executor):
    def __init__(self, private_key: str, *, token: str) -> None:
        super().__init__(private_key, hmac_key="")
        self.token = token
        self.verifying_address = ""
        self.lock = threading.Lock()
        self.triggers: Counter[str] = Counter()  # requestID -> times received
        self.executed: dict[str, float] = {}  # trigger's requestID -> when /kernel/executed came
        self.tasks: dict[str, float] = {}  # requestID -> when a task was answered
        self.refused: list[str] = []  # hooks that failed a check here

    def on_trigger(self, body: dict[str, Any]) -> dict[str, Any]:
        request_id = body["requestID"]
        if not hmac.compare_digest(hmac_hex(self.hmac_key, request_id), str(body["signature"])):
            raise PermissionError("bad body signature")
        with self.lock:
            self.triggers[request_id] += 1
        if body["context"]["executionCount"] % 2:
            return {
                "skip": True,
                "requestID": request_id,
                "task": None,
                "signature": hmac_hex(self.hmac_key, f"{request_id}:0x"),
            }
        params = body["params"]
        data = approve_calldata(params["subAccountAddress"], body["context"]["executionCount"] + 1)
        executable = {"callType": 0, "to": self.token, "value": "0", "data": data}
        message = {"requestID": request_id, "subaccount": params["subAccountAddress"], **executable, "value": 0}
        signable = encode_typed_data(
            domain_data=DOMAIN | {"chainId": params["chainID"]},
            message_types={"ExecutionRequest": EXECUTION_REQUEST},
            message_data=message,
        )
        signature = "0x" + self.account.sign_message(signable).signature.hex().removeprefix("0x")
        with self.lock:
            self.tasks[request_id] = time.time()
        return {
            "skip": False,
            "requestID": request_id,
            "task": {
                "subaccount": params["subAccountAddress"],
                "executor": self.account.address,
                "executorSignature": signature,
                "executable": executable,
            },
            "signature": hmac_hex(self.hmac_key, f"{request_id}:{signature}"),
        }

    def on_executed(self, body: dict[str, Any]) -> dict[str, Any]:
        if not hmac.compare_digest(hmac_hex(self.hmac_key, body["requestID"]), str(body["signature"])):
            raise PermissionError("bad body signature")
        with self.lock:
            self.executed.setdefault(body["executionRequestID"], time.time())
        return super().on_executed(body)

    def verified_by_orchestrator(self, headers: Any, request_id: str) -> bool:
        try:
            signer = Account.recover_message(
                encode_defunct(text=request_id), signature=headers.get("x-verifying-signature", "")
            )
        except Exception:
            return False
        return bool(signer.lower() == self.verifying_address.lower())

    def received_twice(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.triggers.values() if n > 1)


def _handler(executor: SoakExecutor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the orchestrator's pool expects

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            routes = {"/kernel/trigger": executor.on_trigger, "/kernel/executed": executor.on_executed}
            if self.path not in routes:
                return self._send(404, {"error": "no such hook"})
            try:
                body = json.loads(raw)
                if not executor.authentic(self.headers, raw):
                    raise PermissionError("bad or stale webhook signature")
                if not executor.verified_by_orchestrator(self.headers, body["requestID"]):
                    raise PermissionError("x-verifying-signature is not the config's verifying key")
                return self._send(200, routes[self.path](body))
            except (PermissionError, KeyError, ValueError) as exc:
                with executor.lock:
                    executor.refused.append(f"{self.path}: {exc}")
                return self._send(400, {"error": str(exc)})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the caller timed out and left
                pass

    return Handler


class ExecutorServer:
    def __init__(self, executor: SoakExecutor) -> None:
        self.executor = executor
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(executor))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="soak-executor", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> ExecutorServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
