"""relayer/services/requests.py: what a relay request accepts, normalises and records. No
worker, no chain: nothing is sent."""

from __future__ import annotations

from typing import Any

import pytest
from web3 import Web3

from orchestrator.engine.models import WorkflowRun
from orchestrator.infra.errors import DomainError
from relayer.keys import key_manager
from relayer.models import RelayTransaction, TxPhase
from relayer.services.requests import InvalidRelayRequest, RelayConflict, relay_request
from tests.support.relays import RECEIVER, closed_url, make_chain


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
def test_a_request_can_only_follow_one_of_the_same_signer_on_the_same_chain() -> None:
    chain = make_chain(closed_url())
    alice, bob = (key_manager().create_key(purpose="relayer") for _ in range(2))
    first = relay_request(signer=alice, chain=chain, to=RECEIVER, idempotency_key="first")
    with pytest.raises(InvalidRelayRequest, match="same signer"):
        relay_request(signer=bob, chain=chain, to=RECEIVER, idempotency_key="second", after=first)
    assert RelayTransaction.objects.count() == 1


@pytest.mark.django_db
def test_a_refused_request_is_a_domain_error_the_api_and_the_admin_translate() -> None:
    chain = make_chain(closed_url())
    signer = key_manager().create_key(purpose="relayer")
    with pytest.raises(InvalidRelayRequest) as invalid:
        relay_request(signer=signer, chain=chain, to="0x1234", idempotency_key="k-1")
    assert isinstance(invalid.value, DomainError) and isinstance(invalid.value, ValueError)
    assert (invalid.value.code, invalid.value.http_status) == ("invalid_relay_request", 400)
    assert str(invalid.value) == invalid.value.message == "'to' is not an address: '0x1234'"

    relay_request(signer=signer, chain=chain, to=RECEIVER, idempotency_key="k-2")
    with pytest.raises(RelayConflict) as conflict:
        relay_request(signer=signer, chain=chain, to=RECEIVER, value=1, idempotency_key="k-2")
    assert (conflict.value.code, conflict.value.http_status) == ("idempotency_key_reused", 409)
    assert str(conflict.value) == "idempotency key 'k-2' was used for another transaction"
