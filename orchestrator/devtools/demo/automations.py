"""The automation half of `make run`'s demo: the example executor (orchestrator/devtools/
example_executor.py) registered, with a signed config and a subscription on an interval trigger.

The executor's key is the executor's own, as an author's would be: kept in a file under
VAR_DIR (mode 0600), not in the orchestrator's key manager. Re-running reuses it; a config
whose destination changed (another port) is deleted with a signed DELETE and made again."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from eth_account import Account
from eth_account.signers.local import LocalAccount

from orchestrator.automations.models import AutomationConfig, ConfigStatus, Executor, Subscription, SubscriptionStatus
from orchestrator.automations.services.configs import config_create, config_delete, config_hmac_key, executor_register
from orchestrator.automations.services.subscriptions import subscription_create
from orchestrator.automations.typed_data import kernel_action_sign

if TYPE_CHECKING:
    from django.contrib.auth.models import User

DEMO_INTERVAL_SECONDS = 20


@dataclass(frozen=True)
class DemoAutomation:
    config: AutomationConfig
    subscription: Subscription
    executor_env: dict[str, str]  # what the example executor process needs


def _executor_account() -> LocalAccount:
    path = Path(settings.VAR_DIR) / "example-executor.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(Account.create().key.hex())
    return Account.from_key(path.read_text().strip())


def _signed(account: LocalAccount, base_url: str, action: str) -> str:
    return kernel_action_sign(account, destination_url=base_url, verify_payload=True, action=action)


def automation_demo_setup(*, owner: User, port: int, chain_id: int, sub_account: str) -> DemoAutomation:
    account = _executor_account()
    base_url = f"http://127.0.0.1:{port}"
    executor = Executor.objects.filter(owner=owner, address=account.address).first() or executor_register(
        owner=owner, address=account.address, name="Example executor", metadata={"demo": True}
    )
    config = executor.configs.filter(status=ConfigStatus.ACTIVE).first()
    if config is not None and config.base_url != base_url:
        config_delete(config=config, signature=_signed(account, config.base_url, "DELETE"))
        config = None
    if config is None:
        config = config_create(
            executor=executor,
            source_type="INTERVAL",
            source_value=DEMO_INTERVAL_SECONDS,
            base_url=base_url,
            verify_payload=True,
            relayer_count=1,
            autosign=False,
            signature=_signed(account, base_url, "CREATE"),
        ).config
    subscription = config.subscriptions.filter(status=SubscriptionStatus.ACTIVE).first() or subscription_create(
        owner=owner,
        config=config,
        chain_id=chain_id,
        sub_account_address=sub_account,
        token_inputs={},
        token_limits={},
        metadata={"demo": "interval"},
        fee_token="",
        fee_amount="0",
    )
    env = {
        "EXAMPLE_EXECUTOR_PORT": str(port),
        "EXAMPLE_EXECUTOR_KEY": account.key.hex(),
        "EXAMPLE_EXECUTOR_HMAC_KEY": config_hmac_key(config),
    }
    return DemoAutomation(config=config, subscription=subscription, executor_env=env)
