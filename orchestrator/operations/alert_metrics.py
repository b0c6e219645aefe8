"""The metrics deploy/prometheus/alerts.yml alerts on that the other collectors do not give:
relayer signers' balances and their threshold, each enabled chain's RPC, pending proposals
that may expire without quorum, and INTERVAL triggers that are due but not yet sent.

Computed when Prometheus scrapes /metrics (orchestrator/infra/metrics.py), like the others.
The chain reads are the one part that is not the database: one JSON-RPC batch per enabled chain
(eth_blockNumber and every relayer key's balance), the chains read in parallel, and the scrape
waits at most ALERTS_RPC_TIMEOUT_SECONDS for all of them. A chain that has not answered by then
is reported down (`relayer_rpc_up 0`) and its balances are left out, so a dead node costs the
scrape a few seconds, not Prometheus' whole scrape timeout. Registered when the operations app
is ready; docs/operations.md, "Prometheus alerting rules", lists what alerts on what."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Min, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from approvals.models import Decision, ProposalStatus, RebalanceProposal
from orchestrator.automations.models import Firing, FiringStatus, SourceType, Subscription, SubscriptionStatus
from orchestrator.infra.metrics import collector
from relayer.models import Chain, KeyPurpose, SigningKey
from relayer.rpc import RpcUnavailable, rpc_batch

logger = logging.getLogger("orchestrator.operations.alert_metrics")

# Chains read at once; more enabled chains than this wait for a free thread, still within the
# scrape's one deadline.
RPC_THREADS = 8


@dataclass(frozen=True)
class ChainReading:
    """What one chain answered: its head and the balances, or nothing (`head` None) if it failed."""

    chain_id: int
    name: str
    head: int | None
    balances: dict[str, int]  # the relayer keys' balances that were read, by address
    error: str = ""  # why `head` is None


def _read_chain(*, chain_id: int, name: str, rpc_url: str, addresses: list[str], timeout: float) -> ChainReading:
    calls = [("eth_blockNumber", []), *(("eth_getBalance", [address, "latest"]) for address in addresses)]
    try:
        head, *balances = rpc_batch(rpc_url, calls, timeout=timeout)
    except RpcUnavailable as exc:
        logger.warning("metrics: chain %s RPC unavailable: %s", chain_id, exc)
        return ChainReading(chain_id, name, None, {}, str(exc)[:300])
    if head.error is not None or not isinstance(head.result, str):
        logger.warning("metrics: chain %s answered eth_blockNumber with %s", chain_id, head.error)
        return ChainReading(chain_id, name, None, {}, f"answered {head.error or head.result!r}"[:300])
    read = {
        address: int(answer.result, 16)
        for address, answer in zip(addresses, balances, strict=True)
        if answer.error is None and isinstance(answer.result, str)
    }
    return ChainReading(chain_id, name, int(head.result, 16), read)


def chains_read(*, timeout: float) -> list[ChainReading]:
    """Every enabled chain's head and relayer balances, read in parallel; a chain that has not
    answered within `timeout` seconds counts as down. Never raises for a chain's failure.
    The scrape's gauges and beat's alert rules (alerting/rules.py) both read chains this way."""
    chains = list(Chain.objects.filter(enabled=True).values_list("chain_id", "name", "rpc_url"))
    addresses = list(
        SigningKey.objects.filter(purpose=KeyPurpose.RELAYER).order_by("address").values_list("address", flat=True)
    )
    if not chains:
        return []
    pool = ThreadPoolExecutor(max_workers=min(RPC_THREADS, len(chains)), thread_name_prefix="metrics-rpc")
    futures: dict[int, Future[ChainReading]] = {
        chain_id: pool.submit(
            _read_chain, chain_id=chain_id, name=name, rpc_url=url, addresses=addresses, timeout=timeout
        )
        for chain_id, name, url in chains
    }
    wait(futures.values(), timeout=timeout)
    # A read still under way is left to finish on its own: the scrape does not wait for it.
    pool.shutdown(wait=False, cancel_futures=True)
    readings = []
    for chain_id, name, _url in chains:
        future = futures[chain_id]
        if future.done() and not future.cancelled() and future.exception() is None:
            readings.append(future.result())
        else:
            if future.done() and not future.cancelled():
                logger.warning("metrics: reading chain %s failed: %r", chain_id, future.exception())
                error = repr(future.exception())[:300]
            else:
                logger.warning("metrics: chain %s did not answer within %s s", chain_id, timeout)
                error = f"no answer within {timeout} s"
            readings.append(ChainReading(chain_id, name, None, {}, error))
    return readings


@collector
def chains_and_signers() -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "relayer_rpc_up",
        "1 if the enabled chain's RPC answered eth_blockNumber within ALERTS_RPC_TIMEOUT_SECONDS in this scrape.",
        labels=["chain", "name"],
    )
    head = GaugeMetricFamily(
        "relayer_rpc_head_block", "The chain's latest block number as its RPC reported it.", labels=["chain"]
    )
    balance = GaugeMetricFamily(
        "relayer_signer_balance_wei",
        "Balance of each relayer key on each enabled chain whose RPC answered (absent if it did not).",
        labels=["chain", "address", "purpose"],
    )
    for reading in chains_read(timeout=settings.ALERTS_RPC_TIMEOUT_SECONDS):
        chain = str(reading.chain_id)
        up.add_metric([chain, reading.name], 0 if reading.head is None else 1)
        if reading.head is not None:
            head.add_metric([chain], reading.head)
        for address, wei in reading.balances.items():
            balance.add_metric([chain, address, KeyPurpose.RELAYER.value], wei)
    yield up
    yield head
    yield balance
    threshold = GaugeMetricFamily(
        "relayer_signer_low_balance_threshold_wei",
        "RELAYER_LOW_BALANCE_WEI: a relayer key with less than this is flagged low.",
    )
    threshold.add_metric([], settings.RELAYER_LOW_BALANCE_WEI)
    yield threshold


@collector
def pending_proposals() -> Iterator[Metric]:
    """Per pending proposal, so an alert names the proposal: there are few pending at a time
    (they expire), and a decided one leaves the page."""
    labels = ["proposal", "vault"]
    expires = GaugeMetricFamily(
        "approvals_proposal_expires_in_seconds",
        "Pending proposals: seconds until the proposal expires (negative once past, until the expiry sweep runs).",
        labels=labels,
    )
    approvals = GaugeMetricFamily(
        "approvals_proposal_approvals", "Pending proposals: approvals recorded so far.", labels=labels
    )
    quorum = GaugeMetricFamily(
        "approvals_proposal_quorum_required", "Pending proposals: approvals needed to approve it.", labels=labels
    )
    now = timezone.now()
    pending = (
        RebalanceProposal.objects.filter(status=ProposalStatus.PENDING)
        .annotate(approved=Count("approvals", filter=Q(approvals__decision=Decision.APPROVE)))
        .values_list("proposal_id", "vault__vault_id", "expires_at", "approved", "quorum_required")
    )
    for proposal_id, vault_id, expires_at, approved, required in pending:
        key = [proposal_id, str(vault_id)]
        expires.add_metric(key, (expires_at - now).total_seconds())
        approvals.add_metric(key, approved)
        quorum.add_metric(key, required)
    yield expires
    yield approvals
    yield quorum


@collector
def triggers_overdue() -> Iterator[Metric]:
    """Lateness the histogram `automation_trigger_lateness_seconds` cannot show: it counts a
    firing once its hook was sent, so a dispatcher that stopped, or a hook never sent, would
    leave it quiet."""
    now = timezone.now()
    unclaimed = Subscription.objects.filter(
        status=SubscriptionStatus.ACTIVE, config__source_type=SourceType.INTERVAL, next_run_at__lte=now
    ).aggregate(oldest=Min("next_run_at"))["oldest"]
    unsent = Firing.objects.filter(
        status=FiringStatus.PENDING, sent_at__isnull=True, trigger_type=SourceType.INTERVAL, due_at__lte=now
    ).aggregate(oldest=Min("due_at"))["oldest"]
    oldest = min((t for t in (unclaimed, unsent) if t is not None), default=None)
    overdue = GaugeMetricFamily(
        "automation_trigger_overdue_seconds",
        "INTERVAL triggers: seconds the longest-waiting due one has waited without its hook sent "
        "(a subscription not yet dispatched, or a firing not yet sent); 0 if none.",
    )
    overdue.add_metric([], 0.0 if oldest is None else (now - oldest).total_seconds())
    yield overdue
