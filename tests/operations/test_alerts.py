"""Alert rules: each one's condition fires and clears; an alert is opened once however often (and
by however many evaluators at once) it is evaluated. Deliveries are tests/operations/test_alert_delivery.py."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from approvals.models import ProposalStatus, RebalanceProposal
from orchestrator.automations.models import Firing, Subscription
from orchestrator.engine.models import Phase, WorkflowRun
from orchestrator.engine.services import workflow_discard
from orchestrator.operations.alerting.evaluation import alert_fire, alerts_apply
from orchestrator.operations.alerting.rules import (
    Condition,
    RuleResult,
    dead_letters,
    proposals_expiring,
    rules_evaluate,
    stalled_runs,
    trigger_late,
)
from orchestrator.operations.models import (
    Alert,
    AlertDelivery,
    AlertRule,
    AlertState,
    ChannelKind,
    NotificationChannel,
    webhook_secret_key,
)
from relayer.models import Chain
from tests.factories import (
    ChainFactory,
    NodeChainFactory,
    SigningKeyFactory,
    UserFactory,
    VaultFactory,
    VaultPolicyFactory,
    WorkflowRunFactory,
)
from tests.support.automations import bare_subscription
from tests.support.runs import make_run


def apply(rule: str, result: RuleResult) -> None:
    alerts_apply(rule=rule, result=result, now=timezone.now())


def firing(rule: str) -> dict[str, Alert]:
    return {a.key: a for a in Alert.objects.filter(rule=rule, state=AlertState.FIRING)}


@pytest.mark.django_db
def test_a_dead_lettered_run_fires_one_alert_until_it_is_discarded() -> None:
    run = make_run(Phase.DEAD_LETTER)
    for _ in range(3):
        apply(AlertRule.DEAD_LETTER, dead_letters(timezone.now()))
    (alert,) = Alert.objects.all()
    assert (alert.rule, alert.key, alert.state) == (AlertRule.DEAD_LETTER, str(run.id), AlertState.FIRING)
    assert alert.link == f"{settings.PUBLIC_BASE_URL}/admin/orchestrator/workflowrun/{run.id}/change/"
    assert "dead-lettered at step charge" in alert.summary

    workflow_discard(run_id=run.id, actor="test", reason="settled by hand")
    apply(AlertRule.DEAD_LETTER, dead_letters(timezone.now()))
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.resolved_at is not None
    assert Alert.objects.count() == 1


@pytest.mark.django_db
def test_stalled_runs_are_one_alert_that_clears_when_none_is_left() -> None:
    long_ago = timezone.now() - timedelta(days=1)
    # Due, created and last changed a day ago, no journal since, no lease: stalled by any threshold.
    runs = [WorkflowRunFactory.create(due_at=long_ago, dispatched_at=long_ago) for _ in range(2)]
    WorkflowRun.objects.filter(pk__in=[r.pk for r in runs]).update(created_at=long_ago, updated_at=long_ago)
    apply(AlertRule.STALLED_RUNS, stalled_runs(timezone.now()))
    alert = firing(AlertRule.STALLED_RUNS)["runs"]
    assert alert.summary.startswith("2 workflow run(s) stalled")
    assert alert.link == f"{settings.PUBLIC_BASE_URL}/admin/operations/"

    WorkflowRun.objects.filter(pk__in=[r.pk for r in runs]).update(phase=Phase.COMPLETED)
    apply(AlertRule.STALLED_RUNS, stalled_runs(timezone.now()))
    assert firing(AlertRule.STALLED_RUNS) == {}


def subscription() -> Subscription:
    return bare_subscription("alerts")


def a_firing(sub: Subscription, *, due_ago: float, sent_ago: float | None, status: str = "skipped") -> Firing:
    now, rid = timezone.now(), uuid.uuid4().hex
    return Firing.objects.create(
        subscription=sub,
        key=f"{sub.pk}:{rid}",
        request_id=rid,
        trigger_type="INTERVAL",
        due_at=now - timedelta(seconds=due_ago),
        sent_at=None if sent_ago is None else now - timedelta(seconds=sent_ago),
        request={},
        status=status,
    )


@pytest.mark.django_db
def test_late_triggers_fire_while_a_late_firing_is_recent_or_one_is_due_and_unsent() -> None:
    sub = subscription()
    a_firing(sub, due_ago=20, sent_ago=19)  # on time
    a_firing(sub, due_ago=2000, sent_ago=1000)  # late, but before the window
    apply(AlertRule.TRIGGER_LATE, trigger_late(timezone.now()))
    assert firing(AlertRule.TRIGGER_LATE) == {}

    late = a_firing(sub, due_ago=100, sent_ago=10)  # 90 s late, sent 10 s ago
    apply(AlertRule.TRIGGER_LATE, trigger_late(timezone.now()))
    alert = firing(AlertRule.TRIGGER_LATE)["firings"]
    assert "1 firing(s) sent more than 30 s after due" in alert.summary and "worst 90.0 s" in alert.summary
    assert alert.link.endswith("/admin/automations/firing/")

    Firing.objects.filter(pk=late.pk).update(sent_at=timezone.now() - timedelta(seconds=600))
    apply(AlertRule.TRIGGER_LATE, trigger_late(timezone.now()))
    assert firing(AlertRule.TRIGGER_LATE) == {}

    unsent = a_firing(sub, due_ago=60, sent_ago=None, status="pending")
    apply(AlertRule.TRIGGER_LATE, trigger_late(timezone.now()))
    assert "1 firing(s) due more than 30 s ago and not sent" in firing(AlertRule.TRIGGER_LATE)["firings"].summary
    Firing.objects.filter(pk=unsent.pk).update(sent_at=timezone.now(), status="relayed", due_at=timezone.now())
    apply(AlertRule.TRIGGER_LATE, trigger_late(timezone.now()))
    assert firing(AlertRule.TRIGGER_LATE) == {}


def proposal(proposal_id: str, *, expires_in: timedelta) -> RebalanceProposal:
    vault = VaultFactory.create(vault_id=f"vault-{proposal_id.lower()}")
    return RebalanceProposal.objects.create(
        proposal_id=proposal_id,
        vault=vault,
        proposer=UserFactory.create(),
        quorum_required=2,
        proposed_allocations={"Aave USDC": "100"},
        policy=VaultPolicyFactory.create(vault=vault),
        expires_at=timezone.now() + expires_in,
    )


@pytest.mark.django_db
def test_a_pending_proposal_near_its_expiry_fires_until_it_is_decided() -> None:
    soon = proposal("PROP-SOON", expires_in=timedelta(hours=1))
    proposal("PROP-LATER", expires_in=timedelta(hours=10))
    apply(AlertRule.PROPOSAL_EXPIRING, proposals_expiring(timezone.now()))
    alerts = firing(AlertRule.PROPOSAL_EXPIRING)
    assert list(alerts) == ["PROP-SOON"]
    assert "with 0 of 2 approvals" in alerts["PROP-SOON"].summary
    assert alerts["PROP-SOON"].link.endswith(f"/admin/approvals/rebalanceproposal/{soon.pk}/change/")

    RebalanceProposal.objects.filter(pk=soon.pk).update(status=ProposalStatus.APPROVED)
    apply(AlertRule.PROPOSAL_EXPIRING, proposals_expiring(timezone.now()))
    assert firing(AlertRule.PROPOSAL_EXPIRING) == {}


@pytest.mark.django_db
def test_a_chain_that_does_not_answer_fires_and_leaves_its_signers_alerts_alone(anvil: str) -> None:
    NodeChainFactory.create(rpc_url=anvil)
    down = ChainFactory.create(chain_id=999, name="down", rpc_url="http://127.0.0.1:9")
    key = SigningKeyFactory.create(purpose="relayer")  # on_commit funding never runs here: balance 0
    Alert.objects.create(rule=AlertRule.SIGNER_LOW_BALANCE, key=f"999:{key.address.lower()}", summary="s", link="x")

    results = rules_evaluate(timezone.now())
    for rule, result in results.items():
        assert result is not None, rule
        apply(rule, result)
    rpc = firing(AlertRule.RPC_DOWN)
    assert list(rpc) == ["999"] and "did not answer eth_blockNumber" in rpc["999"].summary
    assert rpc["999"].link.endswith(f"/admin/relayer/chain/{down.chain_id}/change/")
    signers = firing(AlertRule.SIGNER_LOW_BALANCE)
    # 31337 answered: its empty signer fires; 999 did not: its old alert is neither resolved nor new.
    assert sorted(signers) == sorted([f"31337:{key.address.lower()}", f"999:{key.address.lower()}"])
    assert "holds 0.000000 ETH" in signers[f"31337:{key.address.lower()}"].summary

    Chain.objects.filter(pk=999).update(rpc_url=anvil)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings, "RELAYER_LOW_BALANCE_WEI", 0)
        for rule, result in rules_evaluate(timezone.now()).items():
            assert result is not None
            apply(rule, result)
    assert firing(AlertRule.RPC_DOWN) == {} and firing(AlertRule.SIGNER_LOW_BALANCE) == {}


@pytest.mark.django_db
def test_a_firing_alert_is_opened_once_with_one_delivery_per_channel_that_wants_its_rule() -> None:
    hook = NotificationChannel.objects.create(name="hook", kind=ChannelKind.WEBHOOK, url="http://127.0.0.1:9/")
    NotificationChannel.objects.create(name="mail", kind=ChannelKind.EMAIL, emails="a@x.test", rules=["rpc_down"])
    NotificationChannel.objects.create(name="off", kind=ChannelKind.EMAIL, emails="b@x.test", enabled=False)
    assert hook.secret.startswith("whsec_") and len(webhook_secret_key(hook.secret)) == 32
    condition = Condition(AlertRule.DEAD_LETTER, "run-1", "dead", "http://x/")
    for _ in range(4):
        apply(AlertRule.DEAD_LETTER, RuleResult([condition]))
    assert Alert.objects.count() == 1
    assert list(AlertDelivery.objects.values_list("channel__name", "event")) == [("hook", "firing")]

    apply(AlertRule.DEAD_LETTER, RuleResult([]))
    apply(AlertRule.DEAD_LETTER, RuleResult([]))
    assert sorted(AlertDelivery.objects.values_list("channel__name", "event")) == [
        ("hook", "firing"),
        ("hook", "resolved"),
    ]
    # Seen again: a new alert, with its own firing delivery.
    apply(AlertRule.DEAD_LETTER, RuleResult([condition]))
    assert Alert.objects.filter(state=AlertState.FIRING).count() == 1 and Alert.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_two_evaluators_at_once_open_one_alert() -> None:
    NotificationChannel.objects.create(name="mail", kind=ChannelKind.EMAIL, emails="a@x.test")
    condition = Condition(AlertRule.RPC_DOWN, "999", "down", "http://x/")
    start = threading.Barrier(2)
    outcomes: list[Any] = []

    def evaluator() -> None:
        try:
            start.wait()
            outcomes.append(alert_fire(condition=condition, now=timezone.now()))
        finally:
            connection.close()

    threads = [threading.Thread(target=evaluator) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [False, True]
    assert Alert.objects.count() == 1 and AlertDelivery.objects.count() == 1
