"""The users `bench soak` (and the smoke test) put on the system, all over HTTP on 127.0.0.1:

- a second automation client: registers an executor and an EIP-712 signed config (INTERVAL,
  every 2 s) through the REST API, subscribes an account, and answers from its own executor
  server (soak_executor.py) with a task every other firing;
- proposals (soak_proposals.py): the demo's, then new ones, created by an operator through
  /v1/proposals and approved by two of the demo approvers at the same moment;
- steady reads: execution logs, vaults, intents, proposals, /metrics, /readyz, the approvers'
  admin list;
- once, a burst of 50 concurrent API clients for a minute.

Every loop is bounded by the run's end and a request cap. The demo's Flow A needs no driver:
beat pulls the demo oracle's feed every ORACLE_PULL_SECONDS."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from django.contrib.auth import get_user_model
from django.db import connections
from eth_account import Account

from orchestrator.automations.typed_data import kernel_action_sign
from orchestrator.devtools.benchmarks.soak_executor import ExecutorServer, SoakExecutor
from orchestrator.devtools.benchmarks.soak_http import Http
from orchestrator.devtools.benchmarks.soak_proposals import APPROVERS, VAULT, Proposals
from orchestrator.devtools.benchmarks.soak_stack import Stack, Summary
from orchestrator.infra.tokens import api_token_issue

OPERATOR = "admin"  # the demo's superuser: an operator may propose
SOAK_CLIENT = "soak-client"
INTERVAL = 2
BURST_CLIENTS = 50
BURST_SECONDS = 60.0
BURST_CAP = 3000  # requests per burst client at most
STEADY_PERIOD = 0.5  # seconds between steady reads


@dataclass
class AutomationClient:
    token: str
    registry: str
    config: dict[str, Any]
    subscription: str
    sub_account: str
    server: ExecutorServer
    funded_by_bench: list[str]


def api_tokens(alias: str, usernames: tuple[str, ...]) -> dict[str, str]:
    """New API tokens for existing users (the demo's approvers and admin), issued on the system's
    database: what `manage.py create_api_client --rotate` does. Only their hashes are stored, so
    any token these users had before stops working."""
    users = get_user_model().objects.db_manager(alias)
    return {name: api_token_issue(user=users.get(username=name)) for name in usernames}


def api_client_create(alias: str, name: str) -> str:
    user, _ = get_user_model().objects.db_manager(alias).get_or_create(username=name)
    return api_token_issue(user=user)


class Driver:
    def __init__(
        self, *, stack: Stack, summary: Summary, alias: str, seconds: float, out: Callable[[str], Any]
    ) -> None:
        self.stack = stack
        self.summary = summary
        self.alias = alias
        self.seconds = seconds
        self.out = out
        self.http = Http(stack.base_url)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.automation: AutomationClient | None = None
        self.burst_window: tuple[float, float] | None = None
        self.started = 0.0  # time.time() when the load began
        self.ended = 0.0
        self._deadline = 0.0  # time.monotonic()
        tokens = api_tokens(alias, (OPERATOR, *APPROVERS))
        connections[alias].close()  # the threads below only speak HTTP
        self.operator = self.http.client(tokens[OPERATOR])
        self.approver_clients = {name: self.http.client(tokens[name]) for name in APPROVERS}
        self.reader = self.http.client(summary.token)
        self.proposals = Proposals(
            http=self.http,
            operator=self.operator,
            approvers=self.approver_clients,
            reader=self.reader,
            first=summary.proposal,
            running=lambda: self.running,
            stopping=self.stopping,
        )
        self.vault = self.http.fetch(self.reader, f"/v1/vaults/{VAULT}")

    # --- the run ---

    def start(self) -> None:
        self.started = time.time()
        self._deadline = time.monotonic() + self.seconds
        self.automation = self._register_automation()
        burst_at = min(max(60.0, self.seconds / 3), max(self.seconds - BURST_SECONDS, 0.0))
        for name, target in (
            ("soak-reads", self._reads),
            ("soak-proposals", self.proposals.run),
            ("soak-burst", lambda: self._burst(at=burst_at)),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        """Ends the load: the loops stop, the soak client's subscription is cancelled (the
        executor server keeps answering what is still in flight)."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=120)
        self.ended = time.time()
        if self.automation is not None:
            client = self.http.client(self.automation.token)
            self.http.retried(
                client, "POST", f"/v1/subscriptions/{self.automation.subscription}/cancel", until=time.monotonic() + 60
            )

    def close(self) -> None:
        if self.automation is not None:
            self.automation.server.stop()

    @property
    def running(self) -> bool:
        return not self.stopping.is_set() and time.monotonic() < self._deadline

    # --- the second automation client ---

    def _register_automation(self) -> AutomationClient:
        token = api_client_create(self.alias, SOAK_CLIENT)
        connections[self.alias].close()
        client = self.http.client(token)
        until = time.monotonic() + 120
        account = Account.create()
        executor = SoakExecutor(account.key.hex(), token=self.vault["asset"])
        server = ExecutorServer(executor).start()
        registry = self.http.fetch(
            client, "/v1/executors", method="POST", json={"address": account.address, "name": "soak executor"}
        )["registryID"]
        signature = kernel_action_sign(account, destination_url=server.url, verify_payload=True, action="CREATE")
        body = {
            "registryID": registry,
            "source": {"type": "INTERVAL", "value": INTERVAL},
            "destination": {"baseURL": server.url},
            "verifyPayload": True,
            "relayerCount": 1,
            "autosign": False,
            "signature": signature,
        }
        key = {"Idempotency-Key": str(uuid.uuid4())}
        config = self.http.fetch(client, "/v1/config", method="POST", json=body, headers=key, until=until)
        executor.hmac_key, executor.verifying_address = config["hmacKey"], config["verifyingAddress"]
        funded = self._relayers_funded(config["relayerAddress"])
        sub_account = Account.create().address
        subscription = self.http.fetch(
            client,
            "/v1/subscriptions",
            method="POST",
            headers={"Idempotency-Key": str(uuid.uuid4())},
            until=until,
            json={
                "registryID": registry,
                "chainId": self.vault["chainId"],
                "subAccountAddress": sub_account,
                "tokenInputs": {},
                "tokenLimits": {},
                "metadata": {"every": str(INTERVAL)},
                "feeToken": "",
                "feeAmount": "0",
            },
        )
        return AutomationClient(token, registry, config, subscription["id"], sub_account, server, funded)

    def _relayers_funded(self, addresses: list[str]) -> list[str]:
        """Relayer keys on a development chain are funded when they are created (issue 13, 4).
        Waits a little for that; any still empty is funded here and named in the report."""
        rpc = httpx.Client(base_url=f"http://127.0.0.1:{self.stack.ports.anvil}", trust_env=False, timeout=10)

        def balance(address: str) -> int:
            answer = rpc.post(
                "", json={"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": [address, "latest"]}
            )
            return int(answer.json()["result"], 16)

        deadline = time.monotonic() + 20
        empty = list(addresses)
        while empty and time.monotonic() < deadline:
            empty = [a for a in empty if balance(a) == 0]
            time.sleep(1)
        for address in empty:
            rpc.post(
                "", json={"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance", "params": [address, hex(10**19)]}
            )
        return empty

    # --- steady reads ---

    def _reads(self) -> None:
        assert self.automation is not None
        mine = self.http.client(self.automation.token)
        admin = self._admin_session()
        paths: list[tuple[httpx.Client, str]] = [
            (self.reader, f"/v1/{self.summary.subscription}/logs?limit=20"),
            (mine, f"/v1/{self.automation.subscription}/logs?limit=50"),
            (self.reader, "/v1/vaults"),
            (self.reader, f"/v1/vaults/{VAULT}/intents"),
            (self.reader, f"/v1/vaults/{VAULT}"),
            (self.approver_clients[APPROVERS[2]], f"/v1/proposals/{self.summary.proposal}"),
        ]
        tick = 0
        while self.running and tick < 100_000:
            client, path = paths[tick % len(paths)]
            self.http.call(client, "GET", path)
            if tick % 20 == 0:
                self.http.call(self.reader, "GET", "/readyz", group="probe")
            if tick % 30 == 0:
                self.http.call(self.reader, "GET", "/metrics", group="probe")
            if tick % 60 == 0 and admin is not None:
                self.http.call(admin, "GET", "/admin/approvals/rebalanceproposal/", group="admin")
            tick += 1
            self.stopping.wait(STEADY_PERIOD)

    def _admin_session(self) -> httpx.Client | None:
        """An approver logged in to the admin (their screen for proposals)."""
        name = APPROVERS[2]
        password = self.summary.approvers.get(name)
        if not password:
            return None
        admin = self.http.client(timeout=30)
        admin.follow_redirects = True
        login = self.http.call(admin, "GET", "/admin/login/", group="admin")
        if login is None or "csrftoken" not in admin.cookies:
            return None
        self.http.call(
            admin,
            "POST",
            "/admin/login/?next=/admin/",
            group="admin",
            data={"username": name, "password": password, "csrfmiddlewaretoken": admin.cookies["csrftoken"]},
            headers={"Referer": str(login.url)},
        )
        return admin

    # --- the burst ---

    def _burst(self, *, at: float) -> None:
        if self.stopping.wait(at) or not self.running:
            return
        assert self.automation is not None
        paths = [
            f"/v1/{self.summary.subscription}/logs",
            "/v1/vaults",
            f"/v1/vaults/{VAULT}/intents",
            f"/v1/vaults/{VAULT}",
        ]
        end = time.monotonic() + BURST_SECONDS
        start = time.time()

        def one(i: int) -> None:
            with self.http.client(self.summary.token, timeout=30) as client:
                for n in range(BURST_CAP):
                    if time.monotonic() > end or self.stopping.is_set():
                        return
                    self.http.call(client, "GET", paths[(i + n) % len(paths)], group="burst")

        with ThreadPoolExecutor(max_workers=BURST_CLIENTS, thread_name_prefix="soak-burst") as pool:
            list(pool.map(one, range(BURST_CLIENTS)))
        self.burst_window = (start, time.time())
