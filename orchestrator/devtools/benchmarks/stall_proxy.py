"""A JSON-RPC proxy in front of a node that can stall: while stalled it holds every request
(the connection stays open, nothing is answered) until the stall ends, then forwards it, as a
node that hangs and comes back does. What waited longer than the caller's timeout was given up
by the caller; what the node receives after the stall, it answers as usual."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests


class StallProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.stalled_until = 0.0  # time.monotonic(); 0: not stalled
        self.held = 0  # requests held by a stall so far
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy._wait_out_stall()
                answer = proxy._session().post(
                    proxy.upstream, data=body, headers={"Content-Type": "application/json"}, timeout=60
                )
                try:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the caller timed out during the stall and left

            def log_message(self, *args: Any) -> None:  # one line per call would drown the bench's
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="stall-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _wait_out_stall(self) -> None:
        if time.monotonic() < self.stalled_until:
            self.held += 1
        while (left := self.stalled_until - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    def stall(self, seconds: float) -> None:
        self.stalled_until = time.monotonic() + seconds

    def __enter__(self) -> StallProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
