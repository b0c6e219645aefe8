"""factory_boy factories for the rows tests build most.

Defaults follow the builders in tests/support (make_vault, make_policy, make_run, ...), so a builder
and its factory make the same row. Rows with invariants of their own go through the service that
keeps them: keys through the key manager (sealed private keys), policies through
policy_draft/policy_activate (versions, one active policy per vault), users through create_user.
The shared singletons (chain 31337, a protocol by name) are got or created, never duplicated."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone
from eth_account import Account
from factory.django import DjangoModelFactory

from orchestrator.engine.models import Phase, StepKind, StepRun, StepStatus, WorkflowRun, WorkflowTransition
from orchestrator.infra.models import Heartbeat
from orchestrator.infra.tokens import api_token_issue
from relayer.keys import key_manager
from relayer.models import Chain, SigningKey
from vaults.models import OracleKey, Protocol, Vault, VaultPolicy
from vaults.services.policies import policy_activate, policy_draft

User = get_user_model()

# The ERC-20 a test vault allocates; nothing reads it on a chain.
ASSET = "0x" + "a5" * 20


# --- people -------------------------------------------------------------------------------------


class UserFactory(DjangoModelFactory[Any]):
    """A user made by `create_user`: no usable password unless one is given. `staff` and
    `superuser` are traits; `groups` takes group names (the groups the migrations create)."""

    class Meta:
        model = User
        skip_postgeneration_save = True

    class Params:
        staff = factory.Trait(is_staff=True)
        superuser = factory.Trait(is_staff=True, is_superuser=True)

    username = factory.Sequence(lambda n: f"user-{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = None

    @classmethod
    def _create(cls, model_class: Any, *args: Any, **kwargs: Any) -> Any:
        return model_class.objects.create_user(*args, **kwargs)

    @factory.post_generation
    def groups(user: Any, create: bool, extracted: list[str] | None, **kwargs: Any) -> None:
        if create and extracted:
            user.groups.set(Group.objects.filter(name__in=extracted))


@dataclass(frozen=True)
class IssuedToken:
    """An API token as its client holds it: `key` is the raw token for `Authorization: Token ...`;
    the database holds only its hash (orchestrator/infra/tokens.py)."""

    user: Any
    key: str


class TokenFactory(factory.Factory[IssuedToken]):
    """An API token issued through api_token_issue (what `manage.py create_api_client` hands out)
    for a new user by default. Replaces any token the user had."""

    class Meta:
        model = IssuedToken

    user = factory.SubFactory(UserFactory)

    @classmethod
    def _create(cls, model_class: type[IssuedToken], *args: Any, user: Any, **kwargs: Any) -> IssuedToken:
        return model_class(user=user, key=api_token_issue(user=user))

    @classmethod
    def _build(cls, model_class: type[IssuedToken], *args: Any, **kwargs: Any) -> IssuedToken:
        raise TypeError("A token exists only once issued: use TokenFactory.create().")


# --- chains and keys ----------------------------------------------------------------------------


class ChainFactory(DjangoModelFactory[Chain]):
    """Chain 31337, got or created: nothing talks to it unless a test points it at a node, so its
    RPC URL leads nowhere (tests/support/vaults.py's make_chain)."""

    class Meta:
        model = Chain
        django_get_or_create = ("chain_id",)

    chain_id = 31337
    name = "anvil-test"
    rpc_url = "http://127.0.0.1:9"


class NodeChainFactory(ChainFactory):
    """Chain 31337 pointed at a running node with the relayer's short timings, updated in place if
    it exists (tests/support/relays.py's make_chain): pass rpc_url."""

    class Meta:
        django_get_or_create = ()

    confirmations = 1
    poll_interval = 0.2
    stuck_after = 2.0

    @classmethod
    def _create(cls, model_class: Any, *args: Any, chain_id: int = 31337, **kwargs: Any) -> Chain:
        chain, _ = Chain.objects.update_or_create(chain_id=chain_id, defaults=kwargs)
        return chain


class SigningKeyFactory(DjangoModelFactory[SigningKey]):
    """A key made and sealed by the key manager. A relayer key on a development chain is funded
    after commit, as the key manager does for any."""

    class Meta:
        model = SigningKey

    purpose = "relayer"
    label = "test"

    @classmethod
    def _create(cls, model_class: Any, *args: Any, purpose: str = "relayer", label: str = "", **kwargs: Any) -> Any:
        assert not args and not kwargs, f"the key manager sets these itself: {sorted(kwargs)}"
        return key_manager().create_key(purpose=purpose, label=label)


# --- vaults -------------------------------------------------------------------------------------


class VaultFactory(DjangoModelFactory[Vault]):
    """A vault on chain 31337 with its own account and operator keys. The default id is
    make_vault's, "vault-eth-001": a second vault in a test needs a vault_id of its own."""

    class Meta:
        model = Vault

    vault_id = "vault-eth-001"
    name = factory.LazyAttribute(lambda vault: f"Vault {vault.vault_id}")
    chain = factory.SubFactory(ChainFactory)
    account = factory.SubFactory(
        SigningKeyFactory,
        purpose="relayer",
        label=factory.LazyAttribute(lambda key: f"{key.factory_parent.vault_id} account"),
    )
    operator = factory.SubFactory(
        SigningKeyFactory,
        purpose="operator",
        label=factory.LazyAttribute(lambda key: f"{key.factory_parent.vault_id} operator"),
    )
    asset_address = ASSET


class ProtocolFactory(DjangoModelFactory[Protocol]):
    """A protocol by name on chain 31337, got or created (a fresh address the first time)."""

    class Meta:
        model = Protocol
        django_get_or_create = ("chain", "name")

    chain = factory.SubFactory(ChainFactory)
    name = "Aave USDC"
    address = factory.LazyFunction(lambda: Account.create().address)


class OracleKeyFactory(DjangoModelFactory[OracleKey]):
    """An allow-listed oracle address. To sign feeds, create the account and pass its address:
    `account = Account.create(); OracleKeyFactory.create(address=account.address)`."""

    class Meta:
        model = OracleKey

    address = factory.LazyFunction(lambda: Account.create().address)
    name = "oracle"
    active = True


class VaultPolicyFactory(DjangoModelFactory[VaultPolicy]):
    """A new policy version through the policy services: active (the previous active one retired)
    unless `active=False`, which leaves it a draft. `whitelist` and `oracles` take iterables."""

    class Meta:
        model = VaultPolicy

    vault = factory.SubFactory(VaultFactory)
    active = True
    max_exposure_pct = Decimal(50)
    max_risk_score = 5
    approval_threshold = Decimal(10**12)

    @classmethod
    def _create(cls, model_class: Any, *args: Any, vault: Vault, active: bool = True, **values: Any) -> VaultPolicy:
        draft = policy_draft(vault=vault, **values)
        return policy_activate(policy=draft) if active else draft


# --- workflow runs ------------------------------------------------------------------------------


class WorkflowRunFactory(DjangoModelFactory[WorkflowRun]):
    """A run row as the engine leaves it, written directly: nothing dispatches it. Kind
    `test.effects` (tests/support/workflows.py), phase submitting, at its first step."""

    class Meta:
        model = WorkflowRun

    kind = "test.effects"
    idempotency_key = factory.LazyFunction(lambda: f"key-{uuid.uuid4()}")
    correlation_id = factory.LazyFunction(lambda: uuid.uuid4().hex)
    phase = Phase.SUBMITTING


class WorkflowTransitionFactory(DjangoModelFactory[WorkflowTransition]):
    """A journal entry of a run (append-only: a test backdates one with a queryset update)."""

    class Meta:
        model = WorkflowTransition

    run = factory.SubFactory(WorkflowRunFactory)
    from_phase = ""
    to_phase = Phase.SUBMITTING
    reason = "started"
    actor = "engine"
    correlation_id = factory.LazyAttribute(lambda transition: transition.run.correlation_id)


class StepRunFactory(DjangoModelFactory[StepRun]):
    """One attempt of a forward step, done, started a second ago and finished 12 ms later."""

    class Meta:
        model = StepRun

    run = factory.SubFactory(WorkflowRunFactory)
    index = 0
    name = "reserve"
    kind = StepKind.FORWARD
    attempt = 1
    status = StepStatus.DONE
    started_at = factory.LazyFunction(lambda: timezone.now() - timedelta(seconds=1))
    finished_at = factory.LazyAttribute(lambda step: step.started_at + timedelta(milliseconds=12))


class HeartbeatFactory(DjangoModelFactory[Heartbeat]):
    """The last sign of life of a process: `beat` or `worker:<hostname>`, now by default."""

    class Meta:
        model = Heartbeat

    name = "beat"
    at = factory.LazyFunction(timezone.now)
