"""Relayer keys the system creates are funded on development chains (issue 13, part 4), on the
real anvil: chain 31337 always, another chain only when marked in the admin, never otherwise."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from eth_account import Account
from web3 import Web3

from orchestrator.devtools.processes import ManagedProcess
from relayer.keys import key_manager
from relayer.models import Chain, KeyPurpose, SigningKey
from relayer.services.chains import chain_seed_from_env
from relayer.services.funding import dev_funding_after_commit, dev_keys_fund
from tests.conftest import AnvilFactory, Workers, free_port, wait_until
from tests.support.automations import LOCAL_DESTINATIONS, automation_create, beat_start
from tests.support.executor_server import ExecutorServer
from tests.support.relays import make_chain
from vaults.services.bootstrap import chain_bootstrap

TEN_ETH = 10 * 10**18
OTHER_CHAIN_ID = 4242
FUNDING_LOGGER = "relayer.services.funding"


def balance(rpc_url: str, address: str) -> int:
    return int(Web3(Web3.HTTPProvider(rpc_url)).eth.get_balance(Web3.to_checksum_address(address)))


def funder_nonce(rpc_url: str) -> int:
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    return int(w3.eth.get_transaction_count(w3.eth.accounts[0]))


def relayer_key() -> SigningKey:
    return key_manager().create_key(purpose=KeyPurpose.RELAYER, label="dev funding test")


def other_chain(anvils: AnvilFactory, *, is_development: bool, chain_id: int = OTHER_CHAIN_ID) -> Chain:
    url = anvils.start(extra=["--chain-id", str(chain_id)])
    return Chain.objects.create(chain_id=chain_id, name="other", rpc_url=url, is_development=is_development)


def funding_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == FUNDING_LOGGER and r.levelno == level]


@pytest.mark.django_db
def test_a_relayer_key_created_for_anvils_chain_is_funded_after_commit_with_a_log_line(
    anvil: str, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    chain = make_chain(anvil)
    caplog.set_level(logging.INFO, logger=FUNDING_LOGGER)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        key = relayer_key()
        dev_funding_after_commit(keys=[key], chain=chain)
    assert balance(anvil, key.address) == 0  # nothing is sent before the commit
    for callback in callbacks:
        callback()

    assert balance(anvil, key.address) == TEN_ETH
    (line,) = funding_lines(caplog, logging.INFO)
    assert key.address in line and "10 ETH" in line and f"({chain.chain_id})" in line


@pytest.mark.django_db
def test_a_key_is_topped_up_to_dev_funding_wei_and_never_past_it(anvil: str, settings: Any) -> None:
    chain = make_chain(anvil)
    settings.DEV_FUNDING_WEI = 3 * 10**18
    key = relayer_key()
    (first,) = dev_keys_fund(keys=[key], chain=chain)
    (again,) = dev_keys_fund(keys=[key], chain=chain)
    assert first.sent_wei == 3 * 10**18 and again.sent_wei == 0 and again.tx_hash is None
    assert balance(anvil, key.address) == 3 * 10**18
    settings.DEV_FUNDING_WEI = 0
    assert dev_keys_fund(keys=[relayer_key()], chain=chain) == []


@pytest.mark.django_db
def test_another_chain_not_marked_as_development_gets_nothing(
    anvils: AnvilFactory, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    chain = other_chain(anvils, is_development=False)
    nonce = funder_nonce(chain.rpc_url)
    caplog.set_level(logging.INFO, logger=FUNDING_LOGGER)
    with django_capture_on_commit_callbacks(execute=True):
        key = relayer_key()
        dev_funding_after_commit(keys=[key], chain=chain)

    assert balance(chain.rpc_url, key.address) == 0
    assert funder_nonce(chain.rpc_url) == nonce  # no transaction at all
    assert not [r for r in caplog.records if r.name == FUNDING_LOGGER]


@pytest.mark.django_db
def test_another_chain_marked_as_development_in_the_admin_is_funded(
    anvils: AnvilFactory, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    chain = other_chain(anvils, is_development=True)
    caplog.set_level(logging.INFO, logger=FUNDING_LOGGER)
    with django_capture_on_commit_callbacks(execute=True):
        key = relayer_key()
        dev_funding_after_commit(keys=[key], chain=chain)

    assert balance(chain.rpc_url, key.address) == TEN_ETH
    (line,) = funding_lines(caplog, logging.INFO)
    assert key.address in line and f"({OTHER_CHAIN_ID})" in line


@pytest.mark.django_db
def test_a_development_row_whose_node_is_another_chain_sends_nothing_and_warns(
    anvils: AnvilFactory, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    url = anvils.start(extra=["--chain-id", str(OTHER_CHAIN_ID)])
    chain = make_chain(url)  # says 31337; the node says 4242
    nonce = funder_nonce(url)
    with django_capture_on_commit_callbacks(execute=True):
        key = relayer_key()
        dev_funding_after_commit(keys=[key], chain=chain)

    assert balance(url, key.address) == 0 and funder_nonce(url) == nonce
    (warning,) = funding_lines(caplog, logging.WARNING)
    assert key.address in warning and f"is chain {OTHER_CHAIN_ID}, not 31337" in warning


@pytest.mark.django_db
def test_a_node_that_is_down_is_a_warning_saying_what_to_do_and_config_creation_still_succeeds(
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Callable[..., Any],
    local_destinations: None,
    server: ExecutorServer,
) -> None:
    make_chain(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with django_capture_on_commit_callbacks(execute=True):
        automation = automation_create(server, source={"type": "INTERVAL", "value": 60}, relayerCount=2)

    (warning,) = funding_lines(caplog, logging.WARNING)
    for address in automation.config["relayerAddress"]:
        assert address in warning
    assert "cast send" in warning and "insufficient funds" in warning


@pytest.mark.django_db
def test_many_keys_funded_at_once_all_get_their_funds(anvil: str) -> None:
    """Concurrent requests all send from eth_accounts[0]; anvil hands some the same nonce."""
    chain = make_chain(anvil)
    keys = [relayer_key() for _ in range(16)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: dev_keys_fund(keys=[key], chain=chain), keys))
    assert all(balance(anvil, key.address) == TEN_ETH for key in keys)


@pytest.mark.django_db
def test_keys_create_funds_a_relayer_key_and_no_other_purpose(
    anvil: str, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    make_chain(anvil)
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("keys", "create", "--purpose", "relayer", stdout=out)
        call_command("keys", "create", "--purpose", "operator", stdout=out)
    relayer, operator = out.getvalue().split()
    assert balance(anvil, relayer) == TEN_ETH and balance(anvil, operator) == 0


@pytest.mark.django_db
def test_a_bootstrapped_vaults_account_is_funded_as_a_relayer_key(
    anvils: AnvilFactory, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    chain = make_chain(anvils.start())
    caplog.set_level(logging.INFO, logger=FUNDING_LOGGER)
    with django_capture_on_commit_callbacks(execute=True):
        vault = chain_bootstrap(chain=chain, say=lambda line: None)
    (line,) = funding_lines(caplog, logging.INFO)
    assert vault.account.address in line
    assert balance(chain.rpc_url, vault.operator.address) == 0


@pytest.mark.django_db
def test_the_seeded_anvil_chain_is_marked_as_development(settings: Any) -> None:
    settings.CHAIN_ID = 31337
    assert chain_seed_from_env(overwrite=True).is_development
    settings.CHAIN_ID = OTHER_CHAIN_ID
    assert not chain_seed_from_env(overwrite=True).is_development


def test_only_relayer_keys_are_funded() -> None:
    operator = SigningKey(address=Account.create().address, purpose=KeyPurpose.OPERATOR)
    with pytest.raises(ValueError, match="only relayer keys"):
        dev_funding_after_commit(keys=[operator])


@pytest.mark.django_db(transaction=True)
@pytest.mark.automations
@pytest.mark.usefixtures("local_destinations")
def test_a_client_following_the_api_on_the_dev_chain_gets_its_task_relayed_without_funding_anything(
    anvil: str, server: ExecutorServer, workers: Workers, worker_env: dict[str, str]
) -> None:
    """The issue's demo path: create a config, subscribe, answer with a task. Nobody funds the
    relayer by hand; the post-execution call reports success."""
    make_chain(anvil)
    executor = server.executor
    executor.on_trigger = lambda body: executor.task(body, to=Account.create().address, data="0x")
    automation = automation_create(server, source={"type": "INTERVAL", "value": 2})
    (relayer,) = automation.config["relayerAddress"]
    assert balance(anvil, relayer) == TEN_ETH  # funded before the API answered

    automation.subscribe()
    workers.start(extra_env=LOCAL_DESTINATIONS)
    beat: ManagedProcess = beat_start({**worker_env, **LOCAL_DESTINATIONS})
    try:
        wait_until(lambda: executor.executed(), timeout=60, message="the post-execution call")
    finally:
        beat.stop()
    report = executor.executed()[0].body
    assert report["successful"] is True, report
    assert balance(anvil, relayer) < TEN_ETH  # it paid the gas
