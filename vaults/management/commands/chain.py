"""./manage.py chain seed|status|bootstrap

`seed` and `status` are the relayer's (relayer/management/chain.py); `bootstrap` is added here
because it deploys a vault, and the relayer imports no vaults."""

from __future__ import annotations

from argparse import _SubParsersAction
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from relayer.management.chain import ChainCommand
from relayer.models import Chain
from relayer.rpc import TRANSPORT_ERRORS
from relayer.services.chains import chain_seed_from_env
from vaults.onchain import OnchainError
from vaults.services.bootstrap import BootstrapError, chain_bootstrap


class Command(ChainCommand):
    help = "Chains: seed the local one from the environment, show every chain's head, or bootstrap a vault."

    def add_actions(self, actions: _SubParsersAction[CommandParser]) -> None:
        boot = actions.add_parser(
            "bootstrap",
            help="Deploy a test asset and protocol vaults to a local anvil and create a funded vault.",
        )
        boot.add_argument("--chain-id", type=int, default=settings.CHAIN_ID)
        boot.add_argument("--vault-id", default="vault-eth-001")
        boot.add_argument(
            "--protocol",
            action="append",
            dest="protocols",
            metavar="NAME",
            help='A protocol vault to deploy (repeatable); default "Aave USDC", "Compound USDC", "Morpho USDC".',
        )
        boot.add_argument("--assets", type=int, help="Base units of the asset the vault holds.")
        boot.add_argument(
            "--safe-owner",
            action="append",
            dest="safe_owners",
            metavar="ADDRESS",
            help="Hold the funds in a Safe with this owner (repeatable): the approvers' wallet addresses.",
        )
        boot.add_argument("--threshold", type=int, default=0, help="The Safe's threshold: the quorum.")

    def action_bootstrap(
        self,
        *,
        chain_id: int,
        vault_id: str,
        protocols: list[str] | None,
        assets: int | None,
        safe_owners: list[str] | None,
        threshold: int,
        **_: object,
    ) -> None:
        chain = Chain.objects.filter(chain_id=chain_id).first()
        if chain is None and chain_id == settings.CHAIN_ID:
            chain = chain_seed_from_env(overwrite=False)
        if chain is None:
            raise CommandError(f"no chain {chain_id}: add it in the admin or run `chain seed`")
        extra: dict[str, Any] = {}
        if protocols:
            extra["protocols"] = tuple(protocols)
        if assets is not None:
            extra["assets"] = assets
        if safe_owners:
            extra["safe_owners"] = tuple(safe_owners)
            extra["safe_threshold"] = threshold or len(safe_owners)
        # Failures that mean "fix the setup and rerun", reported without a traceback.
        expected: tuple[type[BaseException], ...] = (BootstrapError, OnchainError, *TRANSPORT_ERRORS)
        try:
            vault = chain_bootstrap(chain=chain, vault_id=vault_id, say=self.stdout.write, **extra)
        except expected as exc:
            raise CommandError(f"bootstrap failed: {exc}") from exc
        self.stdout.write(self.style.SUCCESS(f"vault {vault.vault_id} ready on chain {chain.chain_id}"))
