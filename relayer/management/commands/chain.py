"""./manage.py chain seed|status|bootstrap"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from relayer.models import Chain
from relayer.rpc import TRANSPORT_ERRORS, web3_for
from relayer.services.chains import chain_seed_from_env


class Command(BaseCommand):
    help = "Chains: seed the local one from the environment, show every chain's head, or bootstrap a vault."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("seed", help="Create or reset the chain CHAIN_ID at CHAIN_RPC_URL.")
        sub.add_parser("status", help="Each chain's RPC and head block.")
        boot = sub.add_parser(
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

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "seed":
            chain = chain_seed_from_env(overwrite=True)
            self.stdout.write(f"chain {chain.chain_id} ({chain.name}) at {chain.rpc_url}")
        elif action == "status":
            for chain in Chain.objects.all():
                try:
                    head = str(web3_for(chain.rpc_url).eth.block_number)
                except TRANSPORT_ERRORS as exc:
                    head = f"unreachable ({exc.__class__.__name__})"
                self.stdout.write(f"{chain.chain_id:<10} {chain.name:<15} {chain.rpc_url:<40} head={head}")
        elif action == "bootstrap":
            self.bootstrap(**options)

    def bootstrap(
        self, *, chain_id: int, vault_id: str, protocols: list[str] | None, assets: int | None, **_: Any
    ) -> None:
        # Imported here: the relayer app does not otherwise depend on vaults.
        from vaults.onchain import OnchainError
        from vaults.services.bootstrap import BootstrapError, chain_bootstrap

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
        # Failures that mean "fix the setup and rerun", reported without a traceback.
        expected: tuple[type[BaseException], ...] = (BootstrapError, OnchainError, *TRANSPORT_ERRORS)
        try:
            vault = chain_bootstrap(chain=chain, vault_id=vault_id, say=self.stdout.write, **extra)
        except expected as exc:
            raise CommandError(f"bootstrap failed: {exc}") from exc
        self.stdout.write(self.style.SUCCESS(f"vault {vault.vault_id} ready on chain {chain.chain_id}"))
