"""`manage.py chain seed|status` (relayer/management/chain.py; the command is assembled in
vaults/management/commands/chain.py, which adds `bootstrap`). No worker; anvil is real."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.core.management import find_commands, get_commands, load_command_class
from web3 import Web3

from relayer.apps import _seed_chain
from relayer.models import Chain
from tests.support.relays import closed_url, run_command


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


def test_one_app_defines_the_chain_command_so_bootstrap_never_depends_on_the_app_order() -> None:
    defining = [
        app.label for app in apps.get_app_configs() if "chain" in find_commands(str(Path(app.path) / "management"))
    ]
    assert defining == ["vaults"] and get_commands()["chain"] == "vaults"
    usage = load_command_class("vaults", "chain").create_parser("manage.py", "chain").format_help()
    assert "{seed,status,bootstrap}" in usage
