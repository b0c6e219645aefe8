"""The demo data `manage.py up` creates: an admin, an API client (granted the demo vault), the
approvers and their waiting proposal, and the example executor's registration. Each step is safe
to run again on the data a previous run kept: it reports what it found instead of creating it
twice."""

from __future__ import annotations

import io
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command

from orchestrator.devtools.processes import ManagedProcess

ADMIN_USERNAME = "admin"
API_CLIENT = "demo-client"
# The example executor listens on 127.0.0.1 over plain http: a local demo, not production.
LOCAL_DESTINATIONS = ("AUTOMATION_ALLOW_INSECURE_DESTINATIONS", "AUTOMATION_ALLOW_PRIVATE_DESTINATIONS")


@dataclass(frozen=True)
class DemoAccounts:
    admin_password: str | None  # None: the admin existed, its password was not changed
    token: str
    note: str


@dataclass(frozen=True)
class DemoApprovers:
    logins: list[str]  # "approver1 / <password>"
    proposal: str  # "PROP-..., waiting for 2 of 3 approvers"
    safe_proposal: str  # "PROP-... of vault-eth-002 (Safe 0x...), waiting for 2 of 3 owners' signatures"
    module_vault: str  # "vault-eth-003 (Safe 0x...): Flow A through its policy module 0x..."
    note: str


@dataclass(frozen=True)
class DemoExecutor:
    process: ManagedProcess
    summary: str
    note: str


def demo_accounts() -> DemoAccounts:
    users = get_user_model().objects
    password: str | None = None
    if not users.filter(username=ADMIN_USERNAME).exists():
        # Random and shown once: a fixed demo password would end up on a reachable machine.
        password = secrets.token_urlsafe(12)
        users.create_superuser(ADMIN_USERNAME, email="", password=password)
    # The same logic as `manage.py create_api_client demo-client --rotate`: token on stdout. Only
    # its hash is stored, so each start issues a new one to show (the previous one stops working).
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_client", API_CLIENT, "--rotate", stdout=out, stderr=err)
    admin_note = "admin created" if password else "admin exists"
    client_note = "client created" if err.getvalue().startswith("Created") else "client exists, new token"
    return DemoAccounts(admin_password=password, token=out.getvalue().strip(), note=f"{admin_note}, {client_note}")


def demo_client_grant(vault: Any) -> bool:
    """Lets the demo API client read the demo vault (as an operator would in the admin, or with
    `create_api_client --vault`): without a grant its token sees no vault. Returns whether the
    grant is new."""
    from vaults.services.access import vault_grant

    users = get_user_model().objects
    client = users.get(username=API_CLIENT)
    _, created = vault_grant(client=client, vault=vault, granted_by=users.filter(username=ADMIN_USERNAME).first())
    return created


def demo_approvers(vault: Any) -> DemoApprovers:
    from orchestrator.devtools.demo.approvals import demo_approvers_setup

    # Proposing logs at INFO ("notify ..."): here that would break the progress line.
    logging.getLogger("approvals").setLevel(logging.WARNING)
    admin = get_user_model().objects.get(username=ADMIN_USERNAME)
    demo = demo_approvers_setup(vault=vault, proposer=admin)
    unchanged = "(unchanged; reset it with `manage.py changepassword {}`)"
    logins = [f"{name} / {password or unchanged.format(name)}" for name, password in demo.passwords.items()]
    waiting = demo.proposal
    quorum = f"{waiting.quorum_required} of {waiting.approvers.count()}"
    created = sum(1 for password in demo.passwords.values() if password)
    state = "proposed" if demo.proposal_created else "pending"
    from orchestrator.devtools.demo.approvals import DEMO_APPROVERS
    from orchestrator.devtools.demo.safe import demo_safe_setup
    from orchestrator.devtools.demo.vaults import DEMO_ORACLE_NAME

    # The three demo approvers, not whoever the waiting proposal names (one made in the admin
    # may name others, who must not get a key of the server's); by name, so the owners' order
    # (part of the Safe's address) is the same on every start.
    owners = list(get_user_model().objects.filter(username__in=DEMO_APPROVERS).order_by("username"))
    safe = demo_safe_setup(template=vault, approvers=owners, proposer=admin, oracle_name=DEMO_ORACLE_NAME)
    signed = safe.proposal
    from orchestrator.devtools.demo.module import demo_module_setup

    module = demo_module_setup(template=vault, approvers=owners, proposer=admin, oracle_name=DEMO_ORACLE_NAME)
    return DemoApprovers(
        logins=logins,
        proposal=f"{waiting.proposal_id}, waiting for {quorum} approvers",
        safe_proposal=(
            f"{signed.proposal_id} of {safe.vault.vault_id} (Safe {safe.vault.safe_address}), waiting for "
            f"{signed.quorum_required} of {signed.approvers.count()} owners' signatures"
        ),
        module_vault=(
            f"{module.vault.vault_id} (Safe {module.vault.safe_address}): automated rebalances as one "
            f"executeIntent through its policy module {module.module} ({module.state})"
        ),
        note=f"{created} approver(s) created, {waiting.proposal_id} {state}, Safe vault {safe.vault.vault_id}",
    )


def local_destinations_env() -> dict[str, str]:
    """The children may call hooks on 127.0.0.1 over http (the example executor), unless the
    developer said otherwise."""
    return {name: "1" for name in LOCAL_DESTINATIONS if name not in os.environ}


def demo_executor(*, vault: Any, port: int, env: dict[str, str], log_path: Path) -> DemoExecutor:
    """Registers the example executor (a signed config, an interval subscription for the demo
    vault's account) and returns its process, not yet started. Its relayer key is funded on the
    development chain when the config creates it."""
    from orchestrator.devtools.demo.automations import automation_demo_setup

    for name in local_destinations_env():  # as in the children
        setattr(settings, name, True)
    client = get_user_model().objects.get(username=API_CLIENT)
    demo = automation_demo_setup(
        owner=client, port=port, chain_id=vault.chain.chain_id, sub_account=vault.account.address
    )
    argv = [sys.executable, "-m", "orchestrator.devtools.example_executor"]
    env = env | demo.executor_env
    process = ManagedProcess("executor", argv, log_path=log_path, env=env, ready_text="listening on")
    sub = demo.subscription
    every = demo.config.interval_seconds
    return DemoExecutor(
        process=process,
        summary=f"{sub.id} (every {every} s), logs at /v1/{sub.id}/logs",
        note=f"subscription {str(sub.id)[:8]}, every {every} s",
    )
