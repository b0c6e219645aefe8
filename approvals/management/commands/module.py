"""./manage.py module install --vault ID [--module ADDRESS] [--version N] [--validator ADDRESS]
./manage.py module commit --vault ID --version N

Both propose a Safe transaction that the Safe's owners then sign in the admin (the printed page);
nothing changes on chain or in the vault before it executes (approvals/policy_commits.py).
`install` without --module deploys one first, on a development chain only. Here and not in
`chain` (vaults): proposing a Safe transaction is Flow B's, and vaults imports no approvals."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import reverse

from approvals.policy_commits import module_install_propose, policy_commit_propose
from orchestrator.infra.errors import DomainError
from relayer.rpc import TRANSPORT_ERRORS, web3_for
from vaults.models import PolicyStatus, SafeTransaction, Vault, VaultPolicy
from vaults.module.contract import ModuleError, module_deploy_dev


class Command(BaseCommand):
    help = "A Safe vault's policy module: install it, or commit a policy version to it (the owners sign)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        install = actions.add_parser(
            "install", help="Propose enabling a VaultPolicyModule on the vault's Safe with a policy committed."
        )
        install.add_argument("--vault", required=True, metavar="ID", help='Like "vault-eth-002".')
        install.add_argument(
            "--module", default="", metavar="ADDRESS", help="A deployed module; default: deploy one (development)."
        )
        install.add_argument("--version", type=int, help="The policy version to commit; default: the active one.")
        install.add_argument("--validator", default="", metavar="ADDRESS", help="The module's validator, if any.")
        commit = actions.add_parser("commit", help="Propose committing a draft to the vault's module.")
        commit.add_argument("--vault", required=True, metavar="ID")
        commit.add_argument("--version", type=int, required=True, help="The draft's version.")

    def handle(self, *args: str, action: str, **options: Any) -> None:
        try:
            row = getattr(self, f"action_{action}")(**options)
        except (DomainError, ModuleError) as exc:
            raise CommandError(getattr(exc, "message", str(exc))) from exc
        except TRANSPORT_ERRORS as exc:
            raise CommandError(f"the chain did not answer: {exc}") from exc
        sign = settings.PUBLIC_BASE_URL + reverse("admin:vaults_safetransaction_sign", args=[row.pk])
        self.stdout.write(f"Safe nonce {row.nonce}: {row.summary}")
        self.stdout.write(self.style.SUCCESS(f"awaits the owners' signatures: {sign}"))

    def action_install(
        self, *, vault: str, module: str, version: int | None, validator: str, **_: object
    ) -> SafeTransaction:
        held = _vault(vault)
        policy = _policy(held, version)
        if not module:
            if not held.chain.counts_as_development:
                raise CommandError(f"chain {held.chain.chain_id} is not a development chain: deploy and pass --module")
            w3 = web3_for(held.chain.rpc_url)
            module = module_deploy_dev(
                w3, deployer=w3.eth.accounts[0], safe=held.safe_address, operator=held.operator.address
            )
            self.stdout.write(f"deployed VaultPolicyModule {module} for the Safe {held.safe_address}")
        return module_install_propose(
            vault=held, module_address=module, policy=policy, validator=validator or None, proposed_by=None
        )

    def action_commit(self, *, vault: str, version: int, **_: object) -> SafeTransaction:
        return policy_commit_propose(policy=_policy(_vault(vault), version), proposed_by=None)


def _vault(vault_id: str) -> Vault:
    vault = Vault.objects.select_related("chain", "operator").filter(vault_id=vault_id).first()
    if vault is None:
        raise CommandError(f"no vault {vault_id}")
    return vault


def _policy(vault: Vault, version: int | None) -> VaultPolicy:
    policies = vault.policies.all()
    policy = (
        policies.filter(version=version).first() if version else policies.filter(status=PolicyStatus.ACTIVE).first()
    )
    if policy is None:
        raise CommandError(
            f"{vault.vault_id} has no policy v{version}" if version else f"{vault.vault_id} has no active policy"
        )
    return policy
