"""The demo's second vault, held by a Safe whose owners are the three demo approvers' wallets
(threshold 2), and a proposal that waits for two of their signatures.

The demo approvers get development wallets (keys held by the development key manager, on the
development chain only), so the demo can be clicked through without a browser extension; an
approver may register their own browser wallet instead, but only the wallets the Safe was
created with own it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from approvals.models import ProposalStatus, RebalanceProposal
from approvals.safe_proposals import NothingToSign
from approvals.services import proposal_create, proposals_expire
from approvals.wallets import dev_wallet_enable, wallet_of
from orchestrator.devtools.demo.vaults import demo_policy
from vaults.models import OracleKey, Vault
from vaults.services.bootstrap import chain_bootstrap

SAFE_VAULT_ID = "vault-eth-002"
SAFE_THRESHOLD = 2
# Two targets: after one executes, the next start proposes the other (one equal to what the Safe
# holds would have nothing to sign).
SAFE_ALLOCATIONS = (
    {"Aave USDC": "40", "Compound USDC": "30", "Morpho USDC": "30"},
    {"Aave USDC": "30", "Compound USDC": "30", "Morpho USDC": "40"},
)


@dataclass(frozen=True)
class DemoSafe:
    vault: Vault
    proposal: RebalanceProposal
    proposal_created: bool


def demo_safe_setup(*, template: Vault, approvers: list[Any], proposer: Any, oracle_name: str) -> DemoSafe:
    """Gives each approver a development wallet unless they have a wallet, creates the Safe
    vault (reused on a rerun), its policy, and a pending proposal unless one is pending."""
    chain = template.chain
    for user in approvers:
        if wallet_of(user) is None:
            dev_wallet_enable(user=user, chain=chain)
    owners = [wallet_of(user) or "" for user in approvers]
    vault = chain_bootstrap(
        chain=chain,
        vault_id=SAFE_VAULT_ID,
        safe_owners=tuple(owners),
        safe_threshold=SAFE_THRESHOLD,
        say=lambda _: None,
    )
    demo_policy(vault, oracles=list(OracleKey.objects.filter(name=oracle_name)), approval_threshold=0)
    # One past its expiry is closed here rather than shown as waiting (beat would close it soon).
    proposals_expire()
    pending = RebalanceProposal.objects.filter(vault=vault, status=ProposalStatus.PENDING).first()
    if pending is not None:
        return DemoSafe(vault, pending, proposal_created=False)
    for allocation in SAFE_ALLOCATIONS:
        try:
            proposal = proposal_create(vault=vault, allocation=allocation, proposer=proposer)
        except NothingToSign:
            continue
        return DemoSafe(vault, proposal, proposal_created=True)
    raise NothingToSign(f"the Safe of {vault.vault_id} holds every demo allocation")
