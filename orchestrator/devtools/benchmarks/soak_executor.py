"""The soak's own automation author: an executor HTTP server on 127.0.0.1, in a thread of the
bench process, that checks every hook as an author's would (Standard Webhooks signature and
age, the body's HMAC, x-verifying-signature from the config's verifying key) and answers every
other firing with a signed task (an ERC-20 `approve` of the demo token, so a real transaction
with calldata is relayed) and the others with a signed skip. It counts what it received, so
the soak sees hooks that arrived twice and post-execution calls that never came."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

from orchestrator.automations.typed_data import (
    Executable,
    hmac_valid,
    skip_answer,
    task_answer,
    verifying_signer,
)
from orchestrator.devtools.example_executor import Executor, send_json
from vaults.onchain import approve_calldata


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
        if not hmac_valid(self.hmac_key, request_id, body["signature"]):
            raise PermissionError("bad body signature")
        with self.lock:
            self.triggers[request_id] += 1
        if body["context"]["executionCount"] % 2:
            return skip_answer(hmac_key=self.hmac_key, request_id=request_id)
        params = body["params"]
        data = approve_calldata(params["subAccountAddress"], body["context"]["executionCount"] + 1)
        executable: Executable = {"callType": 0, "to": self.token, "value": "0", "data": data}
        answer = task_answer(
            hmac_key=self.hmac_key,
            request_id=request_id,
            chain_id=params["chainID"],
            subaccount=params["subAccountAddress"],
            executable=executable,
            signer=self.account,
        )
        with self.lock:
            self.tasks[request_id] = time.time()
        return answer

    def on_executed(self, body: dict[str, Any]) -> dict[str, Any]:
        if not hmac_valid(self.hmac_key, body["requestID"], body["signature"]):
            raise PermissionError("bad body signature")
        with self.lock:
            self.executed.setdefault(body["executionRequestID"], time.time())
        return super().on_executed(body)

    def verified_by_orchestrator(self, headers: dict[str, str], request_id: str) -> bool:
        signer = verifying_signer(request_id, headers.get("x-verifying-signature", ""))
        return bool(signer) and signer.lower() == self.verifying_address.lower()

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
                return send_json(self, 404, {"error": "no such hook"})
            try:
                body = json.loads(raw)
                headers = {name.lower(): value for name, value in self.headers.items()}
                if not executor.authentic(headers, raw):
                    raise PermissionError("bad or stale webhook signature")
                if not executor.verified_by_orchestrator(headers, body["requestID"]):
                    raise PermissionError("x-verifying-signature is not the config's verifying key")
                return send_json(self, 200, routes[self.path](body))
            except (PermissionError, KeyError, ValueError) as exc:
                with executor.lock:
                    executor.refused.append(f"{self.path}: {exc}")
                return send_json(self, 400, {"error": str(exc)})

    return Handler


E = TypeVar("E")
S = TypeVar("S", bound="HookServer[Any]")


class HookServer(Generic[E]):
    """An executor's hooks served on a free port of 127.0.0.1, from a thread of this process
    (the tests' executor server is one too)."""

    def __init__(self, executor: E, handler: type[BaseHTTPRequestHandler], *, name: str) -> None:
        self.executor = executor
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=name, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self: S) -> S:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ExecutorServer(HookServer[SoakExecutor]):
    def __init__(self, executor: SoakExecutor) -> None:
        super().__init__(executor, _handler(executor), name="soak-executor")
