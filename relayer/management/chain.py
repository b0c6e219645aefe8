"""The relayer's half of `./manage.py chain`: `seed` and `status`.

The command itself is vaults/management/commands/chain.py: it subclasses `ChainCommand` and
adds `bootstrap`, which deploys a vault. The relayer imports no vaults, and only one app
defines `chain`, so `manage.py chain ...` does not depend on the order of INSTALLED_APPS."""

from __future__ import annotations

from argparse import _SubParsersAction
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from relayer.models import Chain
from relayer.rpc import TRANSPORT_ERRORS, web3_for
from relayer.services.chains import chain_seed_from_env


class ChainCommand(BaseCommand):
    help = "Chains: seed the local one from the environment, or show every chain's head."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("seed", help="Create or reset the chain CHAIN_ID at CHAIN_RPC_URL.")
        actions.add_parser("status", help="Each chain's RPC and head block.")
        self.add_actions(actions)

    def add_actions(self, actions: _SubParsersAction[CommandParser]) -> None:
        """Where a subclass adds its own actions; each runs the method `action_<name>`."""

    def handle(self, *args: str, action: str, **options: Any) -> None:
        getattr(self, f"action_{action}")(**options)

    def action_seed(self, **_: object) -> None:
        chain = chain_seed_from_env(overwrite=True)
        self.stdout.write(f"chain {chain.chain_id} ({chain.name}) at {chain.rpc_url}")

    def action_status(self, **_: object) -> None:
        for chain in Chain.objects.all():
            try:
                head = str(web3_for(chain.rpc_url).eth.block_number)
            except TRANSPORT_ERRORS as exc:
                head = f"unreachable ({exc.__class__.__name__})"
            self.stdout.write(f"{chain.chain_id:<10} {chain.name:<15} {chain.rpc_url:<40} head={head}")
