"""Policy versions: drafts, activation (one active per vault, frozen once active), diffs."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from tests.support.vaults import make_oracle, make_policy, make_protocol, make_vault, policy_values
from vaults.models import PolicyStatus, Vault, VaultPolicy
from vaults.services.policies import (
    COMPARED,
    PolicyFrozen,
    policy_activate,
    policy_diff,
    policy_draft,
)

FIRST = {
    "max_exposure_pct": Decimal(40),
    "max_risk_score": 3,
    "min_interval_seconds": 600,
    "window_start_hour": 8,
    "window_end_hour": 20,
    "max_feed_age_seconds": 120,
    "max_turnover_pct": Decimal(30),
    "approval_threshold": Decimal(5000),
    "intent_ttl_seconds": 900,
}


def first_policy(vault: Vault) -> VaultPolicy:
    oracle, _ = make_oracle()
    return make_policy(
        vault, whitelist=[make_protocol("Aave USDC"), make_protocol("Compound USDC")], oracles=[oracle], **FIRST
    )


@pytest.mark.django_db
def test_the_first_draft_of_a_vault_is_version_1_with_the_values_given() -> None:
    vault = make_vault()
    draft = policy_draft(vault=vault, whitelist=[make_protocol("Aave USDC")], **policy_values(max_risk_score=4))
    assert draft.version == 1
    assert draft.status == PolicyStatus.DRAFT
    assert draft.activated_at is None
    assert draft.max_risk_score == 4
    assert draft.max_exposure_pct == Decimal(50)
    assert draft.min_interval_seconds == 3600  # the model's default
    assert list(draft.whitelist.values_list("name", flat=True)) == ["Aave USDC"]
    assert not draft.oracles.exists()


@pytest.mark.django_db
def test_a_draft_copies_the_active_policys_values_whitelist_and_oracles() -> None:
    vault = make_vault()
    active = first_policy(vault)

    draft = policy_draft(vault=vault, max_risk_score=4)

    assert draft.version == 2
    assert draft.status == PolicyStatus.DRAFT
    for name, value in FIRST.items():
        expected = 4 if name == "max_risk_score" else value
        assert getattr(draft, name) == expected, name
    assert set(draft.whitelist.all()) == set(active.whitelist.all())
    assert set(draft.oracles.all()) == set(active.oracles.all())
    active.refresh_from_db()
    assert active.status == PolicyStatus.ACTIVE  # drafting changes nothing live


@pytest.mark.django_db
def test_a_draft_can_be_based_on_an_older_version() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    make_policy(vault, max_exposure_pct=Decimal(90), whitelist=[make_protocol("Morpho USDC")])
    v3 = policy_draft(vault=vault, based_on=v1)
    assert v3.version == 3
    assert v3.max_exposure_pct == Decimal(40)
    assert sorted(v3.whitelist.values_list("name", flat=True)) == ["Aave USDC", "Compound USDC"]


@pytest.mark.django_db
def test_activating_a_draft_retires_the_active_policy() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    v2 = policy_draft(vault=vault, max_risk_score=4)

    activated = policy_activate(policy=v2)

    v1.refresh_from_db()
    v2.refresh_from_db()
    assert activated.pk == v2.pk
    assert v2.status == PolicyStatus.ACTIVE
    assert v2.activated_at is not None
    assert v1.status == PolicyStatus.RETIRED
    assert list(vault.policies.filter(status=PolicyStatus.ACTIVE)) == [v2]


@pytest.mark.django_db
def test_activating_a_policy_of_one_vault_leaves_other_vaults_alone() -> None:
    first, second = make_vault("vault-eth-001"), make_vault("vault-eth-002")
    kept = make_policy(first)
    make_policy(second)
    make_policy(second)
    kept.refresh_from_db()
    assert kept.status == PolicyStatus.ACTIVE


@pytest.mark.django_db
def test_the_database_allows_only_one_active_policy_per_vault() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    make_policy(vault)
    with pytest.raises(IntegrityError), transaction.atomic():
        VaultPolicy.objects.filter(pk=v1.pk).update(status=PolicyStatus.ACTIVE)
    v1.refresh_from_db()
    assert v1.status == PolicyStatus.RETIRED


@pytest.mark.django_db
def test_an_active_or_retired_policy_cannot_be_activated_again() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    with pytest.raises(PolicyFrozen, match="v1 is active"):
        policy_activate(policy=v1)
    v2 = make_policy(vault)
    with pytest.raises(PolicyFrozen, match="v1 is retired"):
        policy_activate(policy=v1)
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == (PolicyStatus.RETIRED, PolicyStatus.ACTIVE)


@pytest.mark.django_db
def test_policy_diff_lists_the_changed_fields_and_nothing_else() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    v2 = policy_draft(
        vault=vault, max_risk_score=4, max_turnover_pct=Decimal("12.5"), whitelist=[make_protocol("Aave USDC")]
    )
    assert policy_diff(old=v1, new=v2) == [
        ("max_risk_score", "3", "4"),
        ("max_turnover_pct", "30.0000", "12.5"),
        ("whitelist", "Aave USDC, Compound USDC", "Aave USDC"),
    ]
    assert policy_diff(old=v1, new=policy_draft(vault=vault)) == []


@pytest.mark.django_db
def test_policy_diff_against_nothing_lists_every_compared_field() -> None:
    vault = make_vault()
    v1 = first_policy(vault)
    diff = policy_diff(old=None, new=v1)
    assert [field for field, _, _ in diff] == COMPARED
    assert all(before == "" for _, before, _ in diff)
    assert ("max_risk_score", "", "3") in diff
