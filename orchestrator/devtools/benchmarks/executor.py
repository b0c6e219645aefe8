"""A fast executor for `bench triggers`: answers every /kernel/trigger with a signed skip.

It runs in its own process (so its work does not share the benchmark's GIL) on a bare asyncio
server with keep-alive, and writes "<requestID> <unix time received>" for every call to a file,
so the benchmark can see duplicates and lateness as the executor saw them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import signal
import time
from pathlib import Path
from typing import Any

from orchestrator.automations.typed_data import skip_answer


def _answer(hmac_key: str, raw: bytes) -> tuple[str, bytes]:
    request_id = json.loads(raw)["requestID"]
    return request_id, json.dumps(skip_answer(hmac_key=hmac_key, request_id=request_id)).encode()


async def _serve(port: int, hmac_key: str, record: Path, ready: Any) -> None:
    lines: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                raw = await reader.readexactly(length)
                request_id, body = _answer(hmac_key, raw)
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
    server.close()


def _main(port: int, hmac_key: str, record: str, ready: Any) -> None:
    asyncio.run(_serve(port, hmac_key, Path(record), ready))


class SkipExecutor:
    def __init__(self, *, port: int, hmac_key: str, record: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.record = record
        self.ready = context.Event()
        self.process = context.Process(target=_main, args=(port, hmac_key, str(record), self.ready), daemon=True)

    def __enter__(self) -> SkipExecutor:
        self.record.unlink(missing_ok=True)
        self.process.start()
        if not self.ready.wait(timeout=30):
            raise RuntimeError("the benchmark executor did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(timeout=10)

    def received(self) -> list[tuple[str, float]]:
        """Every call so far (flushed twice a second)."""
        if not self.record.exists():
            return []
        calls = []
        for line in self.record.read_text().splitlines():
            request_id, at = line.rsplit(" ", 1)
            calls.append((request_id, float(at)))
        return calls
