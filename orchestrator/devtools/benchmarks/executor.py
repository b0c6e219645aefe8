"""A fast executor for `bench triggers`: answers every /kernel/trigger with a signed skip.

It runs in its own process (so its work does not share the benchmark's GIL) on a bare asyncio
server with keep-alive, and writes "<requestID> <unix time received>" for every call to a file,
so the benchmark can see duplicates and lateness as the executor saw them.

It also checks that the hooks are signed as every executor may check them: the body's HMAC
signature and the Standard Webhooks header of every call, and the x-verifying-signature (an
EIP-191 recovery, ~0.5 ms) of every CHECK_EVERY-th; the counts go to "<record>.checks"."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

from orchestrator.automations.typed_data import hmac_valid, skip_answer, verifying_signer, webhook_authentic

CHECK_EVERY = 50


class _Checks:
    """How many hooks were checked, and how many of them failed, by signature."""

    def __init__(self, hmac_key: str, verifying_address: str) -> None:
        self.hmac_key, self.verifying_address = hmac_key, verifying_address
        self.counts = {"calls": 0, "bad_hmac": 0, "bad_webhook": 0, "verifying_checked": 0, "bad_verifying": 0}

    def __call__(self, headers: dict[str, str], raw: bytes, body: dict[str, Any]) -> None:
        counts, request_id = self.counts, body["requestID"]
        counts["calls"] += 1
        counts["bad_hmac"] += not hmac_valid(self.hmac_key, request_id, body.get("signature"))
        counts["bad_webhook"] += not webhook_authentic(self.hmac_key, headers, raw)
        if self.verifying_address and counts["calls"] % CHECK_EVERY == 1:
            counts["verifying_checked"] += 1
            signer = verifying_signer(request_id, headers.get("x-verifying-signature", ""))
            counts["bad_verifying"] += signer != self.verifying_address


def _headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


async def _serve(port: int, hmac_key: str, verifying_address: str, record: Path, ready: Any) -> None:
    lines: list[str] = []
    check = _Checks(hmac_key, verifying_address)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = _headers(head)
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                call = json.loads(raw)
                check(headers, raw, call)
                request_id = call["requestID"]
                body = json.dumps(skip_answer(hmac_key=hmac_key, request_id=request_id)).encode()
                lines.append(f"{request_id} {time.time():.6f}\n")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError, ValueError):
            pass  # the caller hung up, or the benchmark is stopping this server
        finally:
            writer.close()

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    ready.set()
    with record.open("a") as out:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            out.writelines(lines)
            lines.clear()
            out.flush()
            checks = record.with_suffix(".checks")
            checks.with_suffix(".tmp").write_text(json.dumps(check.counts))
            os.replace(checks.with_suffix(".tmp"), checks)
    server.close()


def _main(port: int, hmac_key: str, verifying_address: str, record: str, ready: Any) -> None:
    asyncio.run(_serve(port, hmac_key, verifying_address, Path(record), ready))


class SkipExecutor:
    def __init__(self, *, port: int, hmac_key: str, record: Path, verifying_address: str = "") -> None:
        context = multiprocessing.get_context("spawn")
        self.record = record
        self.ready = context.Event()
        args = (port, hmac_key, verifying_address, str(record), self.ready)
        self.process = context.Process(target=_main, args=args, daemon=True)

    def __enter__(self) -> SkipExecutor:
        self.record.unlink(missing_ok=True)
        self.record.with_suffix(".checks").unlink(missing_ok=True)
        self.process.start()
        if not self.ready.wait(timeout=30):
            raise RuntimeError("the benchmark executor did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(timeout=10)
        self.record.with_suffix(".checks").unlink(missing_ok=True)

    def checks(self) -> dict[str, int]:
        """The signature checks so far (written twice a second): calls, bad_hmac, bad_webhook,
        verifying_checked, bad_verifying."""
        path = self.record.with_suffix(".checks")
        return json.loads(path.read_text()) if path.exists() else {}

    def received(self) -> list[tuple[str, float]]:
        """Every call so far (flushed twice a second)."""
        if not self.record.exists():
            return []
        calls = []
        for line in self.record.read_text().splitlines():
            request_id, at = line.rsplit(" ", 1)
            calls.append((request_id, float(at)))
        return calls
