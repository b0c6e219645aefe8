"""`make run`, smoke-tested as a developer runs it: started in the background from the Makefile on
the embedded default (SQLite and the filesystem broker, no DATABASE_URL or CELERY_BROKER_URL),
with its own ports and VAR_DIR. Waits until it says it is up, checks the demo's outcomes over
HTTP (an automated rebalance relayed on chain, a proposal waiting for the printed approvers,
the example executor's firings in its log), then stops it with Ctrl-C and checks that nothing
is left listening."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings

from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.smoke


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Output:
    """Collects the command's output from a thread, so a full pipe never blocks it."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def test_make_run_brings_up_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    web, chain, executor = free_port(), free_port(), free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env |= {
        "PORT": str(web),
        "ANVIL_PORT": str(chain),
        "EXAMPLE_EXECUTOR_PORT": str(executor),
        "VAR_DIR": str(tmp_path / "var"),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C goes to make and everything it started
    )
    out = Output(proc.stdout)
    try:
        wait_until(lambda: "Vault Orchestrator is up." in out.text or proc.poll() is not None, timeout=300)
        assert "Vault Orchestrator is up." in out.text, out.text
        for step in ("anvil", "migrations", "demo vault", "approvers", "example executor", "worker", "beat", "web"):
            assert step in out.text.lower(), step
        token = re.search(r"API token\s+(\w+)", out.text).group(1)  # type: ignore[union-attr]
        approvers = re.findall(r"(approver\d) / (\S+)", out.text)
        proposal = re.search(r"Proposal\s+(PROP-[\w-]+)", out.text).group(1)  # type: ignore[union-attr]
        subscription = re.search(r"subscription ([0-9a-f-]{36})", out.text).group(1)  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{web}"
        api = httpx.Client(base_url=base, headers={"Authorization": f"Token {token}"}, timeout=10, trust_env=False)

        assert api.get("/healthz").status_code == 200
        wait_until(lambda: api.get("/readyz").status_code == 200, timeout=60, interval=1, message="/readyz")
        assert len(approvers) == 3
        admin = httpx.Client(base_url=base, timeout=10, trust_env=False, follow_redirects=True)
        login = admin.get("/admin/login/")
        csrf = admin.cookies["csrftoken"]
        name, password = approvers[0]
        logged_in = admin.post(
            "/admin/login/?next=/admin/",
            data={"username": name, "password": password, "csrfmiddlewaretoken": csrf},
            headers={"Referer": str(login.url)},
        )
        assert logged_in.url.path == "/admin/", logged_in.text[-500:]
        # The approver's default view: the proposals waiting for their decision.
        assert proposal in admin.get("/admin/approvals/rebalanceproposal/").text

        def rebalanced() -> bool:
            intents = api.get("/v1/vaults/vault-eth-001/intents").json()["data"]
            return any(intent["status"] == "executed" for intent in intents)

        wait_until(rebalanced, timeout=120, interval=2, message="an automated rebalance relayed on chain")

        def relayed() -> list[dict[str, Any]]:
            logs = api.get(f"/v1/{subscription}/logs").json()["data"]
            return [
                e
                for e in logs
                if e["metadata"]["outcome"]["status"] == "relayed" and e["metadata"]["postExecutionState"]
            ]

        # The example executor skips its first firing and answers the second (20 s later) with a task.
        [entry] = wait_until(relayed, timeout=120, interval=2, message="the example executor's task relayed")
        assert entry["outputTxHash"] != "0x" + "0" * 64
        assert entry["metadata"]["postExecutionState"]["transaction"] == entry["outputTxHash"]
    finally:
        with suppress(ProcessLookupError):  # it may have exited already (a failed start)
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        out.thread.join(timeout=5)
        (Path(settings.BASE_DIR) / "test-artifacts").mkdir(exist_ok=True)
        (Path(settings.BASE_DIR) / "test-artifacts" / "make-run.log").write_text(out.text)
    assert "Stopping ..." in out.text
    time.sleep(1)
    assert not any(listening(port) for port in (web, chain, executor)), out.text[-2000:]
