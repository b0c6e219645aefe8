"""The relayer's parts without a worker: admin pages, request validation, fee arithmetic,
send-error classification and the chain command. PostgreSQL and anvil are real."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
import requests
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from web3 import Web3
from web3.exceptions import Web3RPCError

from orchestrator.engine import RetryableError, TerminalError
from orchestrator.engine.models import WorkflowRun
from orchestrator.engine.services import step_execute, workflow_start
from orchestrator.infra.broker import queue_depth, queues_purge
from relayer.apps import _seed_chain
from relayer.keys import key_manager
from relayer.models import Broadcast, BroadcastKind, Chain, NonceCursor, RelayTransaction, SigningKey, TxPhase
from relayer.rpc import (
    Fees,
    RpcUnavailable,
    SendOutcome,
    _fee_cache,
    bumped_fees,
    classify_send_error,
    suggested_fees,
)
from relayer.services import lanes
from relayer.services.batches import relay_batch_form
from relayer.services.requests import RELAY_WORKFLOW, InvalidRelayRequest, relay_request
from tests.conftest import free_port
from tests.support.relays import funded_signer, make_chain

User = get_user_model()

RECEIVER = "0x000000000000000000000000000000000000dEaD"


def run_command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --- admin ----------------------------------------------------------------------------------


@pytest.fixture
def browser() -> Client:
    staff = User.objects.create_superuser(username="operator", email="op@example.com", password="x")
    client = Client()
    client.force_login(staff)
    return client


def relayed(signer: SigningKey, chain: Chain, **fields: Any) -> RelayTransaction:
    values: dict[str, Any] = {
        "idempotency_key": uuid.uuid4().hex,
        "signer": signer,
        "chain": chain,
        "to": RECEIVER,
        "value": 1000,
        "nonce": 0,
        "phase": TxPhase.CONFIRMING,
        "tx_hash": "0x" + "ab" * 32,
        "raw_tx": "0x02f8deadbeef",
        "max_fee_per_gas": 2 * 10**9,
        "max_priority_fee_per_gas": 10**9,
        "correlation_id": uuid.uuid4().hex,
        "error": "replacement transaction underpriced",
    }
    tx = RelayTransaction.objects.create(**{**values, **fields})
    Broadcast.objects.create(
        transaction=tx,
        kind=BroadcastKind.ORIGINAL,
        tx_hash=tx.tx_hash,
        raw_tx=tx.raw_tx,
        nonce=0,
        max_fee_per_gas=tx.max_fee_per_gas,
        max_priority_fee_per_gas=tx.max_priority_fee_per_gas,
    )
    return tx


def page(browser: Client, url: str) -> str:
    response = browser.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.content.decode()


def assert_no_key_material(html: str, key: SigningKey) -> None:
    secret = key_manager()._private_key(key).hex()
    lowered = html.lower()
    assert secret not in lowered  # with or without 0x
    assert bytes(key.ciphertext).hex() not in lowered
    assert bytes(key.nonce).hex() not in lowered
    assert "ciphertext" not in lowered


@pytest.mark.django_db
def test_a_superuser_opens_every_relayer_changelist_and_change_page(browser: Client, anvil: str) -> None:
    chain = make_chain(anvil)
    signer = funded_signer(anvil, eth=3)
    cursor = NonceCursor.objects.create(signer=signer, chain=chain, next_nonce=7)
    tx = relayed(signer, chain)

    listing = page(browser, reverse("admin:relayer_relaytransaction_changelist"))
    assert str(tx.id) in listing and signer.address in listing and "replacement transaction" in listing
    detail = page(browser, reverse("admin:relayer_relaytransaction_change", args=[tx.pk]))
    assert tx.tx_hash in detail and "Confirming" in detail
    assert tx.raw_tx not in detail  # the signed bytes are excluded from the page

    keys = page(browser, reverse("admin:relayer_signingkey_changelist"))
    assert signer.address in keys and "anvil-test: 3.0000" in keys and "31337: 7" in keys
    key_page = page(browser, reverse("admin:relayer_signingkey_change", args=[signer.pk]))
    assert signer.address in key_page
    for html in (keys, key_page):
        assert_no_key_material(html, signer)

    chains = page(browser, reverse("admin:relayer_chain_changelist"))
    assert anvil in chains
    assert anvil in page(browser, reverse("admin:relayer_chain_change", args=[chain.pk]))

    cursors = page(browser, reverse("admin:relayer_noncecursor_changelist"))
    assert signer.address in cursors
    assert signer.address in page(browser, reverse("admin:relayer_noncecursor_change", args=[cursor.pk]))


@pytest.mark.django_db
def test_the_signing_key_list_marks_a_low_relayer_balance_in_red(browser: Client, anvil: str) -> None:
    make_chain(anvil)
    poor = key_manager().create_key(purpose="relayer")
    html = page(browser, reverse("admin:relayer_signingkey_changelist"))
    assert re.search(r'<span style="color:#c62828">anvil-test: 0\.0000</span>', html)
    assert_no_key_material(html, poor)


@pytest.mark.django_db
def test_the_balance_column_shows_a_question_mark_when_the_chain_is_unreachable(browser: Client) -> None:
    make_chain(closed_url(), name="down-chain")
    key = key_manager().create_key(purpose="relayer")
    html = page(browser, reverse("admin:relayer_signingkey_changelist"))
    assert key.address in html and "down-chain: ?" in html
    assert_no_key_material(page(browser, reverse("admin:relayer_signingkey_change", args=[key.pk])), key)


@pytest.mark.django_db
def test_signing_keys_cannot_be_added_changed_or_deleted_in_the_admin(browser: Client) -> None:
    make_chain(closed_url())
    key = key_manager().create_key(purpose="relayer")
    changelist = page(browser, reverse("admin:relayer_signingkey_changelist"))
    assert reverse("admin:relayer_signingkey_add") not in changelist
    assert browser.get(reverse("admin:relayer_signingkey_add")).status_code == 403
    change = reverse("admin:relayer_signingkey_change", args=[key.pk])
    assert browser.post(change, {"label": "stolen", "purpose": "oracle"}).status_code == 403
    assert browser.get(reverse("admin:relayer_signingkey_delete", args=[key.pk])).status_code == 403
    assert SigningKey.objects.get(pk=key.pk).label == ""


@pytest.mark.django_db
def test_relay_transactions_cannot_be_added_changed_or_deleted_in_the_admin(browser: Client) -> None:
    chain = make_chain(closed_url())
    tx = relayed(key_manager().create_key(purpose="relayer"), chain)
    changelist = page(browser, reverse("admin:relayer_relaytransaction_changelist"))
    assert reverse("admin:relayer_relaytransaction_add") not in changelist
    assert browser.get(reverse("admin:relayer_relaytransaction_add")).status_code == 403
    change = reverse("admin:relayer_relaytransaction_change", args=[tx.pk])
    assert browser.post(change, {"to": RECEIVER, "phase": "completed"}).status_code == 403
    assert browser.get(reverse("admin:relayer_relaytransaction_delete", args=[tx.pk])).status_code == 403
    delete_all = browser.post(
        reverse("admin:relayer_relaytransaction_changelist"),
        {"action": "delete_selected", "_selected_action": [str(tx.pk)], "post": "yes"},
    )
    assert delete_all.status_code in (200, 302)
    assert RelayTransaction.objects.get(pk=tx.pk).phase == TxPhase.CONFIRMING


@pytest.mark.django_db
def test_nonce_cursors_cannot_be_added_in_the_admin(browser: Client) -> None:
    assert browser.get(reverse("admin:relayer_noncecursor_add")).status_code == 403


# --- relay_request validation ---------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("to", "value", "data"),
    [
        pytest.param("0x1234", 0, "0x", id="short-address"),
        pytest.param("not an address", 0, "0x", id="not-an-address"),
        pytest.param("0x000000000000000000000000000000000000DEaD", 0, "0x", id="bad-checksum"),
        pytest.param(None, 0, "0x", id="no-address"),
        pytest.param(RECEIVER, -1, "0x", id="negative-value"),
        pytest.param(RECEIVER, 2**256, "0x", id="value-above-uint256"),
        pytest.param(RECEIVER, "5", "0x", id="value-as-text"),
        pytest.param(RECEIVER, 1.5, "0x", id="fractional-value"),
        pytest.param(RECEIVER, 0, "0xzz", id="non-hex-data"),
        pytest.param(RECEIVER, 0, "0x123", id="odd-length-data"),
        pytest.param(RECEIVER, 0, "1234", id="data-without-0x"),
        pytest.param(RECEIVER, 0, "0x12 34", id="data-with-a-space"),
    ],
)
def test_a_malformed_relay_request_is_refused_and_records_nothing(to: Any, value: Any, data: Any) -> None:
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    with pytest.raises(InvalidRelayRequest):
        relay_request(signer=signer, chain=chain, to=to, value=value, data=data, idempotency_key="k-1")
    assert not RelayTransaction.objects.exists()
    assert not WorkflowRun.objects.exists()


@pytest.mark.django_db
def test_a_valid_relay_request_is_recorded_normalised_and_waits_for_its_lane() -> None:
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    tx = relay_request(
        signer=signer,
        chain=chain,
        to=RECEIVER.lower(),
        value=2**256 - 1,
        data="0xABcd",
        idempotency_key="k-1",
        requested_by=("intent", "42"),
    )
    stored = RelayTransaction.objects.get()
    assert stored.pk == tx.pk and stored.to == RECEIVER and stored.data == "0xabcd"
    assert int(stored.value) == 2**256 - 1 and stored.phase == TxPhase.PENDING
    assert (stored.requested_by_kind, stored.requested_by_id) == ("intent", "42")
    assert stored.workflow_run_id is None and not WorkflowRun.objects.exists()  # the lane batches it
    assert len(stored.correlation_id) == 32

    shouting = relay_request(signer=signer, chain=chain, to="0x" + "AB" * 20, idempotency_key="k-2")
    assert shouting.to == Web3.to_checksum_address("0x" + "ab" * 20) and shouting.data == "0x"


@pytest.mark.django_db
def test_a_lane_batches_the_chains_pending_requests_of_every_signer_oldest_first(settings: Any) -> None:
    chain = make_chain(closed_url())
    alice, bob = (key_manager().create_key(purpose="relayer") for _ in range(2))
    first = [
        relay_request(signer=s, chain=chain, to=RECEIVER, idempotency_key=f"a-{i}")
        for i, s in enumerate([alice, bob, alice])
    ]
    run = relay_batch_form(chain_id=chain.pk)
    assert run is not None and run.kind == RELAY_WORKFLOW and run.input == {"chain": chain.pk, "size": 3}
    batched = RelayTransaction.objects.filter(workflow_run=run).order_by("created_at")
    assert [tx.pk for tx in batched] == [tx.pk for tx in first]

    later = relay_request(signer=bob, chain=chain, to=RECEIVER, idempotency_key="b-1")
    # The first batch has not signed yet: the lane waits for it, and it kicks again later.
    assert relay_batch_form(chain_id=chain.pk) is None
    WorkflowRun.objects.filter(pk=run.pk).update(attempts=1)  # backing off: it no longer holds the lane
    second = relay_batch_form(chain_id=chain.pk)
    assert second is not None and list(RelayTransaction.objects.filter(workflow_run=second)) == [later]
    WorkflowRun.objects.filter(pk=second.pk).update(attempts=1)
    assert relay_batch_form(chain_id=chain.pk) is None  # nothing left to batch

    WorkflowRun.objects.filter(pk=second.pk).update(attempts=0)
    last = relay_request(signer=alice, chain=chain, to=RECEIVER, idempotency_key="c-1")
    assert relay_batch_form(chain_id=chain.pk) is None  # the second batch is at work
    # ... until it has been at it for longer than a batch ever takes (its worker died, say).
    long_ago = timezone.now() - timedelta(seconds=settings.RELAYER_LANE_HOLD_SECONDS + 1)
    WorkflowRun.objects.filter(pk=second.pk).update(created_at=long_ago)
    third = relay_batch_form(chain_id=chain.pk)
    assert third is not None and list(RelayTransaction.objects.filter(workflow_run=third)) == [last]


@pytest.mark.django_db
def test_a_lane_takes_at_most_a_batch_size_and_kicks_itself_for_the_rest(settings: Any) -> None:
    settings.RELAYER_BATCH_SIZE = 2
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    for i in range(3):
        relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key=f"k-{i}")
    run = relay_batch_form(chain_id=chain.pk)
    assert run is not None and run.input["size"] == 2
    assert RelayTransaction.objects.filter(workflow_run__isnull=True).count() == 1


@pytest.mark.django_db
def test_a_request_after_another_waits_for_it_outside_its_batch_and_fails_if_it_fails() -> None:
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    first = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="first")
    batch = relay_batch_form(chain_id=chain.pk)
    assert batch is not None
    RelayTransaction.objects.filter(pk=first.pk).update(phase=TxPhase.CONFIRMING, nonce=0)
    second = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="second", after=first)
    third = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="third", after=second)
    # The first is still on its way: the others wait, whatever else the lane takes.
    other = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="other")
    run = relay_batch_form(chain_id=chain.pk)
    assert run is not None and list(RelayTransaction.objects.filter(workflow_run=run)) == [other]

    RelayTransaction.objects.filter(pk=first.pk).update(phase=TxPhase.COMPLETED)
    WorkflowRun.objects.filter(pk=run.pk).update(attempts=1)  # no longer holds the lane
    run = relay_batch_form(chain_id=chain.pk)
    assert run is not None  # the first confirmed: the second and, behind it, the third go together
    assert [tx.pk for tx in RelayTransaction.objects.filter(workflow_run=run).order_by("created_at")] == [
        second.pk,
        third.pk,
    ]

    doomed = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="doomed")
    behind = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="behind", after=doomed)
    RelayTransaction.objects.filter(pk=doomed.pk).update(phase=TxPhase.FAILED, error="reverted on chain")
    WorkflowRun.objects.filter(pk=run.pk).update(attempts=1)
    assert relay_batch_form(chain_id=chain.pk) is None
    behind.refresh_from_db()
    assert behind.phase == TxPhase.FAILED and behind.nonce is None
    assert behind.error == f"not sent: relay {doomed.pk}, which it follows, failed"


@pytest.mark.django_db
def test_a_request_can_only_follow_one_of_the_same_signer_on_the_same_chain() -> None:
    chain = make_chain(closed_url())
    alice, bob = (key_manager().create_key(purpose="relayer") for _ in range(2))
    first = relay_request(signer=alice, chain=chain, to=RECEIVER, idempotency_key="first")
    with pytest.raises(InvalidRelayRequest, match="same signer"):
        relay_request(signer=bob, chain=chain, to=RECEIVER, idempotency_key="second", after=first)
    assert RelayTransaction.objects.count() == 1


# --- bumped_fees ----------------------------------------------------------------------------

GWEI = 10**9


def at_least_an_eighth_more(new: int, old: int) -> bool:
    return new * 8 >= old * 9 and new > old


@st.composite
def fee_situations(draw: st.DrawFn) -> tuple[Fees, Fees, int]:
    """A previous broadcast, what the market suggests now and the chain's cap. Like the callers,
    the suggestion comes from suggested_fees, so it is within the cap and its tip within its fee."""
    previous_fee = draw(st.integers(min_value=1, max_value=10**6 * GWEI))
    previous_tip = draw(st.integers(min_value=0, max_value=previous_fee))
    cap = draw(st.integers(min_value=1, max_value=2 * 10**6 * GWEI))
    suggested_fee = draw(st.integers(min_value=1, max_value=cap))
    suggested_tip = draw(st.integers(min_value=0, max_value=suggested_fee))
    return Fees(previous_fee, previous_tip), Fees(suggested_fee, suggested_tip), cap


@hypothesis_settings(max_examples=500, deadline=None)
@given(fee_situations())
def test_a_fee_bump_raises_both_fees_by_an_eighth_never_below_the_suggestion_within_the_cap(
    situation: tuple[Fees, Fees, int],
) -> None:
    previous, suggested, cap = situation
    bumped = bumped_fees(previous=previous, suggested=suggested, cap=cap)
    least_fee = max(-(-previous.max_fee_per_gas * 9 // 8), previous.max_fee_per_gas + 1)
    if bumped is None:
        assert least_fee > cap  # only when even the smallest acceptable bump is above the cap
        return
    assert at_least_an_eighth_more(bumped.max_fee_per_gas, previous.max_fee_per_gas)
    assert at_least_an_eighth_more(bumped.max_priority_fee_per_gas, previous.max_priority_fee_per_gas)
    assert bumped.max_fee_per_gas >= suggested.max_fee_per_gas
    assert bumped.max_priority_fee_per_gas >= suggested.max_priority_fee_per_gas
    assert bumped.max_priority_fee_per_gas <= bumped.max_fee_per_gas <= cap


@pytest.mark.parametrize(
    ("previous", "suggested", "cap", "expected"),
    [
        (Fees(100, 10), Fees(50, 5), 1000, Fees(113, 12)),  # ceil(112.5), ceil(11.25)
        (Fees(100, 10), Fees(300, 40), 1000, Fees(300, 40)),  # the market moved further
        (Fees(1, 0), Fees(1, 0), 10, Fees(2, 1)),  # tiny fees still go up by at least 1 wei
        (Fees(100, 10), Fees(50, 5), 113, Fees(113, 12)),  # exactly at the cap
        (Fees(100, 10), Fees(50, 5), 112, None),  # the cap leaves no room
        (Fees(500 * GWEI, GWEI), Fees(500 * GWEI, GWEI), 500 * GWEI, None),  # already at the cap
    ],
)
def test_bumped_fees_examples(previous: Fees, suggested: Fees, cap: int, expected: Fees | None) -> None:
    assert bumped_fees(previous=previous, suggested=suggested, cap=cap) == expected


# --- suggested_fees -------------------------------------------------------------------------


class FeeHistoryNode:
    """Answers eth_feeHistory with a fixed history, and counts the calls."""

    def __init__(self, base_fees: list[int], rewards: list[list[int]]) -> None:
        self.history = {"baseFeePerGas": base_fees, "reward": rewards}
        self.calls = 0
        self.eth = self

    def fee_history(self, *args: Any) -> dict[str, Any]:
        self.calls += 1
        return self.history


@pytest.fixture
def fresh_fee_cache(settings: Any) -> Iterator[None]:
    settings.RELAYER_FEE_CACHE_SECONDS = 60.0
    _fee_cache.clear()
    yield
    _fee_cache.clear()


@pytest.mark.usefixtures("fresh_fee_cache")
def test_suggested_fees_are_twice_the_next_base_fee_plus_the_median_tip_within_the_cap() -> None:
    node = FeeHistoryNode([10 * GWEI, 12 * GWEI, 20 * GWEI], [[3 * GWEI], [0], [GWEI], [2 * GWEI]])
    fees = suggested_fees(w3=node, chain_id=900001, default_tip=7, cap=500 * GWEI)
    assert fees == Fees(42 * GWEI, 2 * GWEI)
    capped = suggested_fees(w3=node, chain_id=900001, default_tip=7, cap=30 * GWEI)
    assert capped == Fees(30 * GWEI, 2 * GWEI)
    assert suggested_fees(w3=node, chain_id=900001, default_tip=7, cap=GWEI) == Fees(GWEI, GWEI)
    assert node.calls == 1  # cached per chain


@pytest.mark.usefixtures("fresh_fee_cache")
def test_suggested_fees_use_the_default_tip_when_recent_blocks_paid_none() -> None:
    node = FeeHistoryNode([5, 7], [[0], [0]])
    assert suggested_fees(w3=node, chain_id=900002, default_tip=3, cap=10**18) == Fees(17, 3)


@pytest.mark.usefixtures("fresh_fee_cache")
def test_suggested_fees_from_anvil_are_consistent(anvil: str) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil))
    fees = suggested_fees(w3=w3, chain_id=900003, default_tip=GWEI, cap=500 * GWEI)
    base = int(w3.eth.fee_history(1, "latest", [50])["baseFeePerGas"][-1])
    assert 0 < fees.max_priority_fee_per_gas <= fees.max_fee_per_gas <= 500 * GWEI
    assert fees.max_fee_per_gas >= base


# --- classify_send_error --------------------------------------------------------------------


def rpc_error(message: str, code: int = -32000) -> Web3RPCError:
    response = {"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": message}}
    return Web3RPCError(str(response["error"]), rpc_response=response)  # as web3 raises it


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        ("nonce too low", SendOutcome.NONCE_USED),
        ("nonce too low: next nonce 5, tx nonce 3", SendOutcome.NONCE_USED),
        ("Nonce is too low", SendOutcome.NONCE_USED),
        ("already known", SendOutcome.ALREADY_KNOWN),
        ("known transaction: 0xabc", SendOutcome.ALREADY_KNOWN),
        ("transaction already imported", SendOutcome.ALREADY_KNOWN),
        ("replacement transaction underpriced", SendOutcome.UNDERPRICED),
        ("transaction underpriced", SendOutcome.UNDERPRICED),
        ("insufficient funds for gas * price + value", SendOutcome.INSUFFICIENT_FUNDS),
        ("Insufficient funds for gas * price + value", SendOutcome.INSUFFICIENT_FUNDS),
    ],
)
def test_known_send_errors_map_to_their_outcome(message: str, outcome: str) -> None:
    assert classify_send_error(rpc_error(message)) == outcome


def test_a_send_error_without_a_response_body_is_classified_by_its_message() -> None:
    assert classify_send_error(Web3RPCError("nonce too low")) == SendOutcome.NONCE_USED
    odd_body = Web3RPCError("already known", rpc_response={"jsonrpc": "2.0", "id": 1, "error": "?"})
    assert classify_send_error(odd_body) == SendOutcome.ALREADY_KNOWN


@pytest.mark.parametrize(
    "message", ["invalid sender", "intrinsic gas too low", "exceeds block gas limit", "tx fee exceeds cap"]
)
def test_an_unknown_rpc_error_is_terminal_and_says_what_the_node_said(message: str) -> None:
    with pytest.raises(TerminalError, match=re.escape(message)) as info:
        classify_send_error(rpc_error(message))
    assert not isinstance(info.value, RetryableError)


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.ConnectionError("refused"),
        requests.exceptions.ReadTimeout("slow"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError("timed out"),
    ],
    ids=lambda exc: exc.__class__.__name__,
)
def test_a_transport_failure_is_rpc_unavailable_and_retryable(exc: Exception) -> None:
    with pytest.raises(RpcUnavailable, match="RPC unavailable") as info:
        classify_send_error(exc)
    assert isinstance(info.value, RetryableError) and info.value.__cause__ is exc


def test_an_unexpected_non_rpc_failure_is_retried_rather_than_failing_the_relay() -> None:
    with pytest.raises(RpcUnavailable, match="unexpected RPC failure: ValueError: garbled"):
        classify_send_error(ValueError("garbled"))


def test_a_real_nonce_too_low_from_anvil_is_classified_as_nonce_used(anvil: str) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil))
    sender = w3.eth.accounts[0]
    w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({"from": sender, "to": RECEIVER, "value": 1}))
    with pytest.raises(Web3RPCError) as info:
        w3.eth.send_transaction({"from": sender, "to": RECEIVER, "value": 1, "nonce": 0})
    assert classify_send_error(info.value) == SendOutcome.NONCE_USED


# --- manage.py chain ------------------------------------------------------------------------


@pytest.fixture
def chain_env(settings: Any, anvil: str) -> str:
    settings.CHAIN_ID = 424242
    settings.CHAIN_NAME = "seeded"
    settings.CHAIN_RPC_URL = anvil
    settings.CHAIN_CONFIRMATIONS = 4
    settings.CHAIN_POLL_SECONDS = 0.5
    settings.CHAIN_STUCK_SECONDS = 9.0
    return anvil


@pytest.mark.django_db
def test_chain_seed_creates_the_chain_from_the_environment_and_resets_edits(chain_env: str) -> None:
    out, _ = run_command("chain", "seed")
    assert out.strip() == f"chain 424242 (seeded) at {chain_env}"
    chain = Chain.objects.get(pk=424242)
    assert (chain.name, chain.rpc_url, chain.confirmations) == ("seeded", chain_env, 4)
    assert (chain.poll_interval, chain.stuck_after) == (0.5, 9.0)

    Chain.objects.filter(pk=424242).update(name="edited", rpc_url="http://elsewhere:8545", confirmations=1)
    _seed_chain()  # what every migrate does: an admin's edits are kept
    assert Chain.objects.get(pk=424242).name == "edited"

    run_command("chain", "seed")  # the command resets the row to the environment
    reset = Chain.objects.get(pk=424242)
    assert (reset.name, reset.rpc_url, reset.confirmations) == ("seeded", chain_env, 4)
    assert Chain.objects.filter(pk=424242).count() == 1


@pytest.mark.django_db
def test_chain_status_prints_the_head_block_or_unreachable(anvil: str) -> None:
    Chain.objects.all().delete()
    down = closed_url()
    Chain.objects.create(chain_id=31337, name="local", rpc_url=anvil)
    Chain.objects.create(chain_id=5, name="down", rpc_url=down)
    out, _ = run_command("chain", "status")
    lines = {line.split()[0]: line for line in out.strip().splitlines()}
    assert set(lines) == {"5", "31337"}
    assert down in lines["5"] and "head=unreachable (ConnectionError)" in lines["5"]
    head = re.search(r"head=(\d+)$", lines["31337"])
    assert head and anvil in lines["31337"]
    assert 0 <= int(head.group(1)) <= Web3(Web3.HTTPProvider(anvil)).eth.block_number


# --- lane kicks -----------------------------------------------------------------------------


def test_a_lane_kick_queued_and_not_yet_started_absorbs_the_next_ones() -> None:
    queues_purge()
    chain_id = 10_000 + uuid.uuid4().int % 1000
    try:
        lanes._send(chain_id)
        lanes._send(chain_id)  # the first has not started: it will see this request too
        assert queue_depth("relay") == 1
        lanes.lane_kick_started(chain_id=chain_id)
        lanes._send(chain_id)  # the first one is looking already: this request needs its own
        assert queue_depth("relay") == 2
    finally:
        lanes.lane_kick_started(chain_id=chain_id)
        queues_purge()


@pytest.mark.django_db
def test_a_batch_freeing_its_lane_kicks_it_only_if_a_request_is_waiting() -> None:
    queues_purge()
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    try:
        lanes._send_if_waiting(chain.pk)
        assert queue_depth("relay") == 0  # nothing waits: no kick to find nothing
        # A request that came while the batch was at work (its own kick found the lane busy;
        # here it is never sent, the test's transaction never commits).
        relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="k-1")
        lanes._send_if_waiting(chain.pk)
        assert queue_depth("relay") == 1
    finally:
        lanes.lane_kick_started(chain_id=chain.pk)
        queues_purge()


# --- runs from before batches ----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("signed", [False, True])
def test_a_relay_transaction_run_in_flight_at_upgrade_moves_its_request_into_the_batches(signed: bool) -> None:
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    tx = relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="old-1")
    old, _ = workflow_start(kind="relay.transaction", input={"tx": str(tx.id)})
    fields: dict[str, Any] = {"workflow_run": old, "phase": TxPhase.CONFIRMING if signed else TxPhase.SUBMITTING}
    if signed:
        fields.update(nonce=0, tx_hash="0x" + "ab" * 32, raw_tx="0x02")
    RelayTransaction.objects.filter(pk=tx.pk).update(**fields)
    WorkflowRun.objects.filter(pk=old.pk).update(current_step=3 if signed else 1)

    step_execute(run_id=old.id, index=3 if signed else 1)

    moved = RelayTransaction.objects.get(pk=tx.pk)
    assert WorkflowRun.objects.get(pk=old.pk).phase == "completed"
    if signed:  # its stored bytes are re-sent and confirmed by a batch of its own
        batch = WorkflowRun.objects.get(pk=moved.workflow_run_id)
        assert batch.kind == RELAY_WORKFLOW and "carried over" in batch.input["split"]
        assert (moved.phase, moved.nonce) == (TxPhase.CONFIRMING, 0)
    else:  # back in its lane, to be batched like a new request
        assert (moved.workflow_run_id, moved.phase) == (None, TxPhase.PENDING)
