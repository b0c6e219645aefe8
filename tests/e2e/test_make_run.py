"""`make run` under load, the short version of `bench soak` (issue 13): started through make as a
developer starts it, on the embedded default (no DATABASE_URL or CELERY_BROKER_URL) with its own
ports and VAR_DIR, driven for 3 minutes by the soak's driver (the demo's Flow A and example
executor, a second automation client every 2 s, proposals approved through the API, steady
reads, a burst of 50 clients), while each supervised child is killed with SIGKILL in turn
(worker, beat, web, executor), which `up` restarts.

It must see no death but its own kills, each child back, no 5xx and no error-level log line,
and nothing lost: every firing due in the window answered once (due times while beat was down
may be skipped by the catch-up rule, nothing else), every relay requested confirmed, every
approval posted recorded and the approved proposal executed. Also the demo's outcomes (an
automated rebalance relayed, the proposal waiting in the approvers' admin list, the example
executor's task relayed and reported) and a clean Ctrl-C with nothing left running or
listening. Output: test-artifacts/make-run.log, soak.txt and make-run-logs/."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from web3 import Web3

from approvals.models import ApproverWallet, ProposalStatus, RebalanceProposal
from orchestrator.devtools.benchmarks.soak import SoakResult, report, run_soak
from orchestrator.devtools.benchmarks.soak_proposals import VAULT
from orchestrator.devtools.benchmarks.soak_stack import ALIAS, SUPERVISED, Stack, Summary
from relayer.models import KeyPurpose, SigningKey
from tests.conftest import ARTIFACTS, wait_until
from vaults import safe as safe_lib
from vaults.models import (
    ExecutionIntent,
    IntentRelay,
    IntentStatus,
    SafeSignature,
    SafeTransaction,
    SafeTxPurpose,
    SafeTxStatus,
    Vault,
)

pytestmark = pytest.mark.smoke

MINUTES = 3
# Shorter than the defaults so that what a killed worker held is taken over within the grace
# period: a run stalled for 30 s is re-dispatched, a firing's delivery lease lasts 20 s.
FAST_RECOVERY = {"WORKFLOW_STALL_SECONDS": "30", "AUTOMATION_DELIVERY_LEASE_SECONDS": "20"}
STEPS = ("postgresql", "valkey", "anvil", "migrations", "demo vault", "approvers", "example executor", "worker")


def demo_outcomes(stack: Stack, summary: Summary) -> None:
    """What the old smoke test checked: the demo works as the README says."""
    text = stack.text.lower()
    for step in (*STEPS, "beat", "web"):
        assert step in text, step
    api = httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Token {summary.token}"}, timeout=10, trust_env=False
    )
    assert api.get("/healthz").status_code == 200
    wait_until(lambda: api.get("/readyz").status_code == 200, timeout=60, interval=1, message="/readyz")
    assert len(summary.approvers) == 3
    admin = httpx.Client(base_url=stack.base_url, timeout=10, trust_env=False, follow_redirects=True)
    login = admin.get("/admin/login/")
    name, password = "approver3", summary.approvers["approver3"]  # not one the driver approves with
    logged_in = admin.post(
        "/admin/login/?next=/admin/",
        data={"username": name, "password": password, "csrfmiddlewaretoken": admin.cookies["csrftoken"]},
        headers={"Referer": str(login.url)},
    )
    assert logged_in.url.path == "/admin/", logged_in.text[-500:]
    # Approver3 is designated on every proposal the driver makes; the last one waits for them.
    assert "PROP-" in admin.get("/admin/approvals/rebalanceproposal/?waiting=all").text
    intents = api.get(f"/v1/vaults/{VAULT}/intents").json()["data"]
    assert any(i["status"] == "executed" and i["proposalId"] is None for i in intents), "no automated rebalance"
    logs = api.get(f"/v1/{summary.subscription}/logs", params={"limit": 100}).json()["data"]
    relayed = [e for e in logs if e["metadata"]["outcome"]["status"] == "relayed"]
    assert relayed, "the example executor's task was never relayed"
    for entry in relayed:
        assert entry["outputTxHash"] != "0x" + "0" * 64
        state = entry["metadata"]["postExecutionState"]
        assert state and state["transaction"] == entry["outputTxHash"], entry
    safe_demo_outcomes(stack, summary)
    module_demo_outcomes(stack)
    operations_outcomes(stack)


def operations_outcomes(stack: Stack) -> None:
    """What an operator points Prometheus at: the engine's dalp.ddwf instruments beside the
    orchestrator_* metrics, with the worker registered and the demo's rebalances counted."""
    assert re.search(r"Alerts +http://\S+/admin/operations/alert/", stack.text), stack.text[-3000:]
    metrics = httpx.get(f"{stack.base_url}/metrics", timeout=10, trust_env=False).text
    assert re.search(r'^dalp_ddwf_endpoint_registrations_total\{outcome="ok"\} [1-9]', metrics, re.M), metrics[:3000]
    rebalances = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("dalp_ddwf_workflow_completed_total{")
        and 'workflow_type="vault.rebalance"' in line
        and 'outcome="success"' in line
    ]
    assert rebalances and rebalances[0] >= 1, [line for line in metrics.splitlines() if "dalp_ddwf" in line]


def module_demo_outcomes(stack: Stack) -> None:
    """The demo's third vault: a Safe with the policy module, whose installation two approvers'
    development wallets signed at start-up, and whose automated rebalances are each one
    executeIntent through the module, the first soon after the installation."""
    said = re.search(
        r"Policy module +vault-eth-003 \(Safe (0x[0-9a-fA-F]{40})\): automated rebalances as one executeIntent "
        r"through its policy module (0x[0-9a-fA-F]{40})",
        stack.text,
    )
    assert said, "the summary names no policy module:\n" + stack.text[-3000:]
    safe_address, module = said.groups()
    vault = Vault.objects.using(ALIAS).get(vault_id="vault-eth-003")
    assert (vault.safe_address, vault.module_address) == (safe_address, module) and vault.auto_rebalance
    install = SafeTransaction.objects.using(ALIAS).get(vault=vault, purpose=SafeTxPurpose.POLICY, plan__install=True)
    assert install.status == SafeTxStatus.EXECUTED
    intents = ExecutionIntent.objects.using(ALIAS).filter(vault=vault, status=IntentStatus.EXECUTED).order_by("nonce")
    first = intents.first()
    assert first is not None and first.module_intent is not None, "no rebalance through the module"
    assert first.executed_at is not None and (first.executed_at - install.created_at).total_seconds() < 90
    for intent in intents:
        (relay,) = IntentRelay.objects.using(ALIAS).filter(intent=intent).select_related("relay")
        assert relay.relay.to == module and relay.relay.signer_id == vault.account_id


def safe_demo_outcomes(stack: Stack, summary: Summary) -> None:
    """The demo's second vault (issue 15): held by a Safe whose owners on chain are the three
    approvers' development wallets (threshold 2), with a proposal waiting for their signatures,
    read from the system's own database and its anvil."""
    said = re.search(
        r"Safe proposal +(PROP-[\w-]+) of vault-eth-002 \(Safe (0x[0-9a-fA-F]{40})\), waiting for 2 of 3 owners' "
        r"signatures \(sign with each approver's development wallet\)",
        stack.text,
    )
    assert said, "the summary names no Safe proposal:\n" + stack.text[-3000:]
    proposal_id, safe_address = said.groups()
    vault = Vault.objects.using(ALIAS).get(vault_id="vault-eth-002")
    assert vault.safe_address == safe_address and not vault.auto_rebalance
    wallets = dict(
        ApproverWallet.objects.using(ALIAS)
        .filter(user__username__in=summary.approvers, development=True)
        .values_list("user__username", "address")
    )
    assert sorted(wallets) == sorted(summary.approvers) == ["approver1", "approver2", "approver3"], wallets
    keys = SigningKey.objects.using(ALIAS).filter(address__in=wallets.values(), purpose=KeyPurpose.APPROVER)
    assert keys.count() == 3, "a development wallet without its key"
    chain = safe_lib.safe_state(Web3(Web3.HTTPProvider(f"http://127.0.0.1:{stack.ports.anvil}")), safe_address)
    assert sorted(chain.owners) == sorted(wallets.values()) and chain.threshold == 2

    proposal = RebalanceProposal.objects.using(ALIAS).get(proposal_id=proposal_id)
    assert proposal.vault_id == vault.pk and proposal.status == ProposalStatus.PENDING
    assert proposal.quorum_required == 2
    designated = RebalanceProposal.approvers.through.objects.using(ALIAS).filter(rebalanceproposal=proposal)
    assert sorted(designated.values_list("user__username", flat=True)) == sorted(summary.approvers)
    main = SafeTransaction.objects.using(ALIAS).get(proposal_id=proposal_id, purpose=SafeTxPurpose.REBALANCE)
    assert main.vault_id == vault.pk and main.status == SafeTxStatus.SIGNING and main.nonce == chain.nonce
    assert not SafeSignature.objects.using(ALIAS).filter(safe_tx=main).exists()
    assert any(action["kind"] == "deposit" for action in main.plan["actions"]), main.plan


def test_make_run_stays_up_under_load_and_loses_nothing_when_children_are_killed(
    tmp_path: Path, django_db_blocker: Any
) -> None:
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        print(line, flush=True)  # seen with -s while it runs

    stack = Stack(var_dir=tmp_path / "var", argv=["make", "--no-print-directory", "run"], env=FAST_RECOVERY)
    try:
        with django_db_blocker.unblock():  # the soak reads the system's own database, not the test one
            result = run_soak(stack=stack, minutes=MINUTES, out=out, kill=SUPERVISED, before_stop=demo_outcomes)
        report(result, out)
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "make-run.log").write_text(stack.text)
        (ARTIFACTS / "soak.txt").write_text("\n".join(lines))
        if stack.log_dir.exists():
            shutil.rmtree(ARTIFACTS / "make-run-logs", ignore_errors=True)
            shutil.copytree(stack.log_dir, ARTIFACTS / "make-run-logs")
    assert_nothing_lost(result, "\n".join(lines))


def assert_nothing_lost(result: SoakResult, text: str) -> None:
    """All that must hold, checked together so that one failure shows every problem at once."""
    f, d = result.firings, result.decisions
    killed = {k.name for k in result.kills}
    said_restarted = {death.name for death in result.stack_deaths if death.restarted}
    expectations = {
        "each supervised child killed once": [k.name for k in result.kills] == list(SUPERVISED),
        "each killed child back and staying up": all(k.new_pid for k in result.kills),
        "up said it restarted each killed child": killed <= said_restarted,
        "no other death (a failed restart counts)": not result.deaths,
        "no 5xx answer": not result.http_5xx,
        "no error-level log line": not result.errors,
        "firings due in the window": f.due > 0,
        "no firing missed (catch-up skips while beat was down excepted)": f.missed == 0,
        "no due time fired twice": f.duplicated_rows == 0,
        # A hook may arrive twice if the worker is killed while calling it (README, "Retried,
        # never lost"); the firing is still recorded once and its task relayed at most once.
        "hooks received twice only around the worker's kill": f.received_twice <= 2,
        "no answer refused, no relay failed": f.refused == 0 and f.failed == 0,
        "every relayed task reported (/kernel/executed)": not result.post_executions_missing,
        "relays requested": result.relays.requested > 0,
        "every relay confirmed": result.relays.unconfirmed == 0,
        "approvals posted and every one recorded": d.posted >= 2 and d.recorded == d.posted and not d.lost,
        "an approved proposal executed": d.executed >= 1,
        "a clean stop (exit 0, nothing left running or listening)": result.stopped.clean,
    }
    failed = [what for what, ok in expectations.items() if not ok]
    assert not failed, "failed: " + "; ".join(failed) + "\n\n" + text
