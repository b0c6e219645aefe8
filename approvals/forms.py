"""The admin's forms for proposals: an operator's new proposal, an approver's decision."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib.auth import get_user_model

from approvals.models import RebalanceProposal
from approvals.services import proposal_create
from vaults.models import PolicyStatus, Vault

ALLOCATION_HELP = (
    'One protocol per line as "Protocol name: percent" (for example "Aave USDC: 50"), or a JSON '
    "object; the percentages sum to 100."
)


def allocation_parse(text: str) -> dict[str, str]:
    """`Name: pct` lines (a trailing % is allowed) or a JSON object, as {name: pct}. Only the
    shape is checked here: proposal_create judges names and numbers. Raises ValidationError."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise forms.ValidationError("The JSON must be an object of protocol name to percent.")
        return {str(name).strip(): str(pct).strip() for name, pct in data.items()}
    allocation: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, pct = line.rpartition(":")
        name, pct = name.strip(), pct.strip().removesuffix("%").strip()
        if not sep or not name or not pct:
            raise forms.ValidationError(f'Line {number}: write "Protocol name: percent".')
        if name in allocation:
            raise forms.ValidationError(f"Line {number}: {name} appears twice.")
        allocation[name] = pct
    if not allocation:
        raise forms.ValidationError("Give at least one protocol and its percentage.")
    return allocation


class ProposalAddForm(forms.Form):
    """What an operator proposes. The vault's active policy applies; the service validates
    quorum, approvers and allocation, and its ProposalInvalid becomes a form error."""

    vault = forms.ModelChoiceField(queryset=Vault.objects.select_related("chain"))
    approvers = forms.ModelMultipleChoiceField(
        queryset=get_user_model().objects.filter(is_active=True, is_staff=True).order_by("username"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Who decides (not you). None chosen: the vault's designated approvers.",
    )
    quorum = forms.IntegerField(
        required=False,
        help_text="How many approvals execute the rebalance. Empty: the vault's quorum.",
    )
    allocation = forms.CharField(
        label="Proposed allocation",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60, "placeholder": "Aave USDC: 50\nMorpho USDC: 50"}),
        help_text=ALLOCATION_HELP,
    )

    def clean_allocation(self) -> dict[str, str]:
        return allocation_parse(self.cleaned_data["allocation"])

    def proposal_create(self, *, proposer: Any) -> RebalanceProposal:
        """Raises ProposalInvalid (the caller shows it as a form error)."""
        data = self.cleaned_data
        vault: Vault = data["vault"]
        approvers = list(data["approvers"]) or None
        return proposal_create(
            vault=vault,
            policy=vault.policies.filter(status=PolicyStatus.ACTIVE).first(),
            allocation=data["allocation"],
            proposer=proposer,
            approvers=approvers,
            quorum=data["quorum"],
        )


class DecisionForm(forms.Form):
    comment = forms.CharField(
        required=False,
        # No max_length: an invalid form would drop the comment while the decision still counts;
        # the browser stops at 2000 and the service keeps the first 2000 characters.
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60, "maxlength": 2000}),
        help_text="Optional; the other approvers and the proposer see it.",
    )
