"""An executor, as seed 001 describes one, for the automation tests: a real HTTP server that
checks every hook it receives (the body signature, the Standard Webhooks headers, the
x-verifying-signature) and answers with what the test asks for: skip, a signed task, a 500,
garbage, silence..."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_account.signers.local import LocalAccount

from orchestrator.automations.services.answers import (
    EXECUTION_REQUEST_TYPES,
    execution_request_domain,
    execution_request_message,
)


def hmac_hex(key: str, text: str) -> str:
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    body_signature_ok: bool
    webhook_signature_ok: bool
    verifying_signer: str
    at: float


# (status, body or None, seconds to wait first). A body of bytes is sent as is.
Answer = tuple[int, Any, float]


@dataclass
class Executor:
    account: LocalAccount = field(default_factory=Account.create)
    hmac_key: str = ""
    received: list[Received] = field(default_factory=list)
    # What to answer to /kernel/trigger and /kernel/executed; tests replace these.
    on_trigger: Callable[[dict[str, Any]], Answer] = field(default=lambda body: (200, None, 0.0))
    on_executed: Callable[[dict[str, Any]], Answer] = field(default=lambda body: (200, None, 0.0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def triggers(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == "/kernel/trigger"]

    def executed(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == "/kernel/executed"]

    # --- answers, as the seed writes them ---------------------------------------------------

    def skip(self, body: dict[str, Any]) -> Answer:
        rid = body["requestID"]
        return 200, {"skip": True, "requestID": rid, "task": None, "signature": hmac_hex(self.hmac_key, f"{rid}:0x")}, 0

    def task(
        self,
        body: dict[str, Any],
        *,
        to: str,
        data: str = "0x",
        value: str = "0",
        call_type: int = 0,
        signer: LocalAccount | None = None,
        hmac_key: str | None = None,
    ) -> Answer:
        rid = body["requestID"]
        params = body["params"]
        executable = {"callType": call_type, "to": to, "value": value, "data": data}
        task = {"subaccount": params["subAccountAddress"], "executor": self.account.address, "callType": call_type}
        message = execution_request_message(request_id=rid, task=task | executable)
        signable = encode_typed_data(
            domain_data=execution_request_domain(params["chainID"]),
            message_types=EXECUTION_REQUEST_TYPES,
            message_data=message,
        )
        signature = "0x" + (signer or self.account).sign_message(signable).signature.hex().removeprefix("0x")
        answer = {
            "skip": False,
            "requestID": rid,
            "task": {
                "subaccount": params["subAccountAddress"],
                "executor": self.account.address,
                "executorSignature": signature,
                "executable": executable,
            },
            "signature": hmac_hex(hmac_key or self.hmac_key, f"{rid}:{signature}"),
        }
        return 200, answer, 0


def _handler(executor: Executor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet: the test reads `received`
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.loads(raw)
            headers = {k.lower(): v for k, v in self.headers.items()}
            signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + raw
            digest = hmac.new(executor.hmac_key.encode(), signed, hashlib.sha256).digest()
            expected = "v1," + base64.b64encode(digest).decode()
            try:
                verifier = Account.recover_message(
                    encode_defunct(text=body["requestID"]), signature=headers.get("x-verifying-signature", "")
                )
            except Exception:
                verifier = ""
            record = Received(
                path=self.path,
                body=body,
                headers=headers,
                body_signature_ok=body.get("signature") == hmac_hex(executor.hmac_key, body["requestID"]),
                webhook_signature_ok=headers.get("webhook-signature") == expected,
                verifying_signer=verifier,
                at=time.time(),
            )
            with executor.lock:
                executor.received.append(record)
            status, answer, delay = (executor.on_trigger if self.path == "/kernel/trigger" else executor.on_executed)(
                body
            )
            if delay:
                time.sleep(delay)
            payload = answer if isinstance(answer, bytes) else (b"" if answer is None else json.dumps(answer).encode())
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
    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(executor))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> ExecutorServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
