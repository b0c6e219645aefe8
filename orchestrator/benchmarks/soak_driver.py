"""The users `bench soak` (and the smoke test) put on the system, all over HTTP on 127.0.0.1:

- a second automation client: registers an executor and an EIP-712 signed config (INTERVAL,
  every 2 s) through the REST API, subscribes an account, and answers from its own executor
  server (soak_executor.py) with a task every other firing;
- proposals: the demo's, then new ones, created by an operator through /v1/proposals and
  approved by two of the demo approvers at the same moment, each time the vault is quiet
  (the policy's minimum interval since the last rebalance has passed, so execution is not
  refused for timing);
- steady reads: execution logs, vaults, intents, proposals, /metrics, /readyz, the approvers'
  admin list;
- once, a burst of 50 concurrent API clients for a minute.

Every loop is bounded by the run's end and a request cap. The demo's Flow A needs no driver:
beat pulls the demo oracle's feed every ORACLE_PULL_SECONDS."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from django.contrib.auth import get_user_model
from django.db import connections
from eth_account import Account
from eth_account.messages import encode_typed_data
from rest_framework.authtoken.models import Token

from orchestrator.automations.services.signatures import KERNEL_ACTION_TYPES, KERNEL_DOMAIN, kernel_action_message
from orchestrator.benchmarks.soak_executor import ExecutorServer, SoakExecutor
from orchestrator.benchmarks.soak_stack import Stack, Summary

VAULT = "vault-eth-001"
OPERATOR = "admin"  # the demo's superuser: an operator may propose
APPROVERS = ("approver1", "approver2", "approver3")
ALLOCATIONS = (
    {"Aave USDC": "20", "Compound USDC": "30", "Morpho USDC": "50"},
    {"Aave USDC": "50", "Compound USDC": "30", "Morpho USDC": "20"},
)
SOAK_CLIENT = "soak-client"
INTERVAL = 2
BURST_CLIENTS = 50
BURST_SECONDS = 60.0
BURST_CAP = 3000  # requests per burst client at most
STEADY_PERIOD = 0.5  # seconds between steady reads
KEEPALIVE_SECONDS = 1.0
# After a proposal executes, Flow A moves the vault back to its own allocation once the minimum
# interval has passed; the next approval waits for that (at most this long).
FLOW_A_RETURN_SECONDS = 150.0


class Http:
    """Every call the soak makes, counted: status codes, 5xx with the path and the start of the
    body, transport errors (refused, reset, timeouts), latencies by group."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.server_errors: list[str] = []
        self.transport_errors: Counter[str] = Counter()
        self.probe_failures: list[str] = []  # /readyz answering 503: reported, not a 5xx
        self.latencies: dict[str, list[float]] = {}

    def client(self, token: str | None = None, *, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Token {token}"} if token else {}
        return httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            # gunicorn closes a keep-alive connection after 2 s idle; a client that reuses one
            # at that moment gets a reset that says nothing about the server. Drop them first.
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS),
            trust_env=False,  # a proxy in the environment must never see loopback traffic
        )

    def call(
        self, client: httpx.Client, method: str, path: str, *, group: str = "steady", **kwargs: Any
    ) -> httpx.Response | None:
        began = time.perf_counter()
        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            with self.lock:
                self.transport_errors[f"{type(exc).__name__} {method} {_route(path)}"] += 1
            return None
        elapsed = (time.perf_counter() - began) * 1000
        with self.lock:
            self.statuses[response.status_code] += 1
            self.latencies.setdefault(group, []).append(elapsed)
            if response.status_code >= 500:
                note = f"{time.strftime('%H:%M:%S')} {response.status_code} {method} {path}: {response.text[:200]!r}"
                if path == "/readyz":
                    self.probe_failures.append(note)
                    self.statuses[response.status_code] -= 1
                else:
                    self.server_errors.append(note)
        return response

    def retried(
        self, client: httpx.Client, method: str, path: str, *, until: float, group: str = "user", **kwargs: Any
    ) -> httpx.Response | None:
        """A user's call that must land: tried again on transport errors and 5xx (the web
        process may be restarting) until `until` (time.monotonic())."""
        delay = 0.5
        while True:
            response = self.call(client, method, path, group=group, **kwargs)
            if (response is not None and response.status_code < 500) or time.monotonic() > until:
                return response
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.transport_errors.values())


def _route(path: str) -> str:
    return "/".join("{id}" if len(part) > 20 or part.startswith("PROP-") else part for part in path.split("/"))


@dataclass
class ProposalTrace:
    proposal_id: str
    allocation: dict[str, str]
    decisions: dict[str, str] = field(default_factory=dict)  # approver -> "recorded", "already", "lost: ..."
    approved_at: float | None = None
    outcome: str = ""  # as the API last showed it: executed, approved (with an error), ...


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
    """DRF tokens for existing users (the demo's approvers and admin), made through the ORM on
    the system's database: what `manage.py create_api_client` does for a new client."""
    users = get_user_model().objects.db_manager(alias)
    tokens = {}
    for name in usernames:
        user = users.get(username=name)
        tokens[name] = Token.objects.using(alias).get_or_create(user=user)[0].key
    return tokens


def api_client_create(alias: str, name: str) -> str:
    user, _ = get_user_model().objects.db_manager(alias).get_or_create(username=name)
    return str(Token.objects.using(alias).get_or_create(user=user)[0].key)


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
        self.proposals: list[ProposalTrace] = []
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
        self.vault = self._json(self.reader, f"/v1/vaults/{VAULT}")

    # --- the run ---

    def start(self) -> None:
        self.started = time.time()
        self._deadline = time.monotonic() + self.seconds
        self.automation = self._register_automation()
        burst_at = min(max(60.0, self.seconds / 3), max(self.seconds - BURST_SECONDS, 0.0))
        for name, target in (
            ("soak-reads", self._reads),
            ("soak-proposals", self._proposals),
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
        registry = self._json(
            client, "/v1/executors", method="POST", json={"address": account.address, "name": "soak executor"}
        )["registryID"]
        message = kernel_action_message(destination_url=server.url, verify_payload=True, action="CREATE")
        signable = encode_typed_data(domain_data=KERNEL_DOMAIN, message_types=KERNEL_ACTION_TYPES, message_data=message)
        body = {
            "registryID": registry,
            "source": {"type": "INTERVAL", "value": INTERVAL},
            "destination": {"baseURL": server.url},
            "verifyPayload": True,
            "relayerCount": 1,
            "autosign": False,
            "signature": "0x" + account.sign_message(signable).signature.hex().removeprefix("0x"),
        }
        key = {"Idempotency-Key": str(uuid.uuid4())}
        config = self._json(client, "/v1/config", method="POST", json=body, headers=key, until=until)
        executor.hmac_key, executor.verifying_address = config["hmacKey"], config["verifyingAddress"]
        funded = self._relayers_funded(config["relayerAddress"])
        sub_account = Account.create().address
        subscription = self._json(
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

    # --- proposals ---

    def _proposals(self) -> None:
        pending: str | None = self.summary.proposal
        allocation = dict(ALLOCATIONS[1])
        rounds = 0
        while self.running and rounds < 1000:
            rounds += 1
            if pending is None:
                allocation = dict(ALLOCATIONS[rounds % 2])
                created = self._json(
                    self.operator,
                    "/v1/proposals",
                    method="POST",
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                    json={
                        "vaultId": VAULT,
                        "approvers": list(APPROVERS),
                        "quorumRequired": 2,
                        "proposedAllocations": allocation,
                    },
                    until=time.monotonic() + 120,
                    check=False,
                )
                if "proposalId" not in created:
                    self.stopping.wait(10)
                    continue
                pending = created["proposalId"]
            trace = ProposalTrace(pending, allocation)
            self.proposals.append(trace)
            if not self._wait_quiet():
                return
            with ThreadPoolExecutor(max_workers=2) as pool:  # two approvers deciding at the same moment
                outcomes = pool.map(self._approve, [trace.proposal_id] * 2, APPROVERS[:2])
                trace.decisions = dict(zip(APPROVERS[:2], outcomes, strict=True))
            trace.approved_at = time.time()
            trace.outcome = self._wait_executed(trace.proposal_id)
            pending = None

    def _approve(self, proposal: str, name: str) -> str:
        response = self.http.retried(
            self.approver_clients[name],
            "POST",
            f"/v1/proposals/{proposal}/approve",
            json={"comment": "soak"},
            until=time.monotonic() + 120,
        )
        if response is None:
            return "no answer"
        if response.status_code == 200:
            return "recorded"
        if response.status_code == 409 and "already_decided" in response.text:
            return "already"  # an earlier try landed before the connection broke
        return f"{response.status_code} {response.text[:120]}"

    def _wait_quiet(self) -> bool:
        """Until no intent is moving the vault's funds, Flow A has moved it back after our last
        proposal, and the policy's minimum interval since the last rebalance has passed."""
        waited_from = time.monotonic()
        while self.running:
            vault = self._json(self.reader, f"/v1/vaults/{VAULT}", check=False)
            intents = self._json(self.reader, f"/v1/vaults/{VAULT}/intents", check=False).get("data", [])
            policy = vault.get("policy") or {}
            last = vault.get("lastRebalanceAt")
            moving = any(i["status"] in ("signed", "relaying") for i in intents)
            ours_last = bool(intents) and intents[0].get("proposalId") is not None
            flow_a_done = not ours_last or time.monotonic() - waited_from > FLOW_A_RETURN_SECONDS
            if last and not moving and flow_a_done:
                since = time.time() - datetime.fromisoformat(last).timestamp()
                if since > policy.get("minIntervalSeconds", 60) + 5:
                    return True
            self.stopping.wait(2)
        return False

    def _wait_executed(self, proposal: str) -> str:
        until = time.monotonic() + 180
        status = ""
        while time.monotonic() < until and not self.stopping.is_set():
            body = self._json(self.approver_clients[APPROVERS[0]], f"/v1/proposals/{proposal}", check=False)
            status = body.get("status", "")
            if status == "executed" or body.get("executionError"):
                return status + (f": {body['executionError']}" if body.get("executionError") else "")
            self.stopping.wait(2)
        return status

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

    # --- helpers ---

    def _json(
        self,
        client: httpx.Client,
        path: str,
        *,
        method: str = "GET",
        until: float | None = None,
        check: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        response = self.http.retried(client, method, path, until=until or time.monotonic() + 60, group="user", **kwargs)
        if response is None or response.status_code >= 400:
            if check:
                detail = "no answer" if response is None else f"{response.status_code} {response.text[:300]}"
                raise RuntimeError(f"{method} {path}: {detail}")
            return {}
        return dict(response.json())
