"""The soak's proposal users: an operator proposes a rebalance through /v1/proposals and two of
the demo approvers approve it at the same moment (their row-locked decisions counted one after
the other), each time the vault is quiet: no intent moving its funds, Flow A done moving it
back after the last proposal, and the policy's minimum interval since the last rebalance
passed, so that execution is not refused for timing. Then it waits for the execution."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from orchestrator.devtools.benchmarks.soak_http import Http

VAULT = "vault-eth-001"
APPROVERS = ("approver1", "approver2", "approver3")
ALLOCATIONS = (
    {"Aave USDC": "20", "Compound USDC": "30", "Morpho USDC": "50"},
    {"Aave USDC": "50", "Compound USDC": "30", "Morpho USDC": "20"},
)
# After a proposal executes, Flow A moves the vault back to its own allocation once the minimum
# interval has passed; the next approval waits for that (at most this long).
FLOW_A_RETURN_SECONDS = 150.0


@dataclass
class ProposalTrace:
    proposal_id: str
    allocation: dict[str, str]
    decisions: dict[str, str] = field(default_factory=dict)  # approver -> "recorded", "already", "lost: ..."
    approved_at: float | None = None
    outcome: str = ""  # as the API last showed it: executed, approved (with an error), ...


class Proposals:
    def __init__(
        self,
        *,
        http: Http,
        operator: httpx.Client,
        approvers: dict[str, httpx.Client],
        reader: httpx.Client,
        first: str,
        running: Callable[[], bool],
        stopping: threading.Event,
    ) -> None:
        self.http = http
        self.operator = operator
        self.approvers = approvers
        self.reader = reader
        self.first = first  # the demo's proposal, waiting for two approvers
        self._running = running
        self.stopping = stopping
        self.traces: list[ProposalTrace] = []

    @property
    def running(self) -> bool:
        return self._running()

    def run(self) -> None:
        pending: str | None = self.first
        allocation = dict(ALLOCATIONS[1])
        rounds = 0
        while self.running and rounds < 1000:
            rounds += 1
            if pending is None:
                allocation = dict(ALLOCATIONS[rounds % 2])
                created = self.http.fetch(
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
            self.traces.append(trace)
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
            self.approvers[name],
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
            vault = self.http.fetch(self.reader, f"/v1/vaults/{VAULT}", check=False)
            intents = self.http.fetch(self.reader, f"/v1/vaults/{VAULT}/intents", check=False).get("data", [])
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
            body = self.http.fetch(self.approvers[APPROVERS[0]], f"/v1/proposals/{proposal}", check=False)
            status = body.get("status", "")
            if status == "executed" or body.get("executionError"):
                return status + (f": {body['executionError']}" if body.get("executionError") else "")
            self.stopping.wait(2)
        return status
