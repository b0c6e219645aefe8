"""An executor for the automation tests (docs/automations.md describes what an executor does):
a real HTTP server that checks every hook it receives (the body signature, the Standard
Webhooks headers, the x-verifying-signature) and answers with what the test asks for: skip, a
signed task, a 500, garbage, silence..."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from orchestrator.automations.typed_data import (
    Executable,
    hmac_hex,
    skip_answer,
    task_answer,
    verifying_signer,
    webhook_authentic,
)
from orchestrator.devtools.benchmarks.soak_executor import HookServer
from orchestrator.devtools.example_executor import send_bytes


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

    # --- answers: a signed skip or a signed task -------------------------------------------

    def skip(self, body: dict[str, Any]) -> Answer:
        return 200, skip_answer(hmac_key=self.hmac_key, request_id=body["requestID"]), 0

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
        params = body["params"]
        executable: Executable = {"callType": call_type, "to": to, "value": value, "data": data}
        answer = task_answer(
            hmac_key=hmac_key or self.hmac_key,
            request_id=body["requestID"],
            chain_id=params["chainID"],
            subaccount=params["subAccountAddress"],
            executable=executable,
            signer=signer or self.account,
            executor=self.account.address,
        )
        return 200, answer, 0


def _handler(executor: Executor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet: the test reads `received`
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.loads(raw)
            headers = {k.lower(): v for k, v in self.headers.items()}
            record = Received(
                path=self.path,
                body=body,
                headers=headers,
                body_signature_ok=body.get("signature") == hmac_hex(executor.hmac_key, body["requestID"]),
                webhook_signature_ok=webhook_authentic(executor.hmac_key, headers, raw, max_age=None),
                verifying_signer=verifying_signer(body["requestID"], headers.get("x-verifying-signature", "")),
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
            send_bytes(self, status, payload)

    return Handler


class ExecutorServer(HookServer[Executor]):
    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, _handler(executor), name="test-executor")
