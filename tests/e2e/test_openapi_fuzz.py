"""The live app against its own OpenAPI schema: schemathesis loads /api/schema/ from a running
web server and sends what the schema calls valid and invalid to every operation, with every
check it has (no 500, only documented statuses, answers that match their serializers, valid data
accepted, invalid data refused, auth enforced, 405 for undocumented methods, and its stateful
phase chaining the operations). A fixed seed and a bounded number of examples per operation keep
it repeatable and under a few minutes; any failure fails the test with schemathesis's report,
whose `curl` lines reproduce each request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model

from orchestrator.infra.tokens import api_token_issue
from tests.conftest import ARTIFACTS, free_port
from tests.factories import VaultPolicyFactory
from tests.support.automations import api_client, signed_config_body
from tests.support.servers import web_server
from vaults.services.access import vault_grant

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.stack]

SEED = 20261204
MAX_EXAMPLES = 25  # per operation and phase


def _seeded(settings: Any) -> tuple[str, dict[str, str]]:
    """An API client's token, and the ids of what it may read: a vault granted to it (with an
    active policy), an executor with an active config, and a subscription to it."""
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = True  # the config is made here, in-process
    client = api_client("fuzz-client")
    user = get_user_model().objects.get(username="fuzz-client")
    vault = VaultPolicyFactory.create().vault
    vault_grant(client=user, vault=vault)
    body = signed_config_body(client, base_url="https://executor.example")
    config = client.post("/v1/config", body, format="json")
    assert config.status_code == 201, config.content
    sub = client.post(
        "/v1/subscriptions",
        {"registryID": body["registryID"], "chainId": vault.chain_id, "subAccountAddress": "0x" + "ab" * 20},
        format="json",
    )
    assert sub.status_code == 201, sub.content
    token = api_token_issue(user=user)  # a new one: only the hash of api_client's is stored
    return token, {
        "vault_id": vault.vault_id,
        "registry_id": body["registryID"],
        "config_id": config.json()["id"],
        "sub_id": sub.json()["id"],
    }


def _config(ids: dict[str, str]) -> str:
    """schemathesis.toml: each path id is one of the seeded ones half of the time, so the
    operations answer real objects (and their serializers are checked against them) as well as
    404s for generated ids."""
    lines = []
    for name, value in ids.items():
        lines += [f"[dictionaries.{name}]", f'values = ["{value}"]', ""]
    lines.append("[parameters]")
    lines += [f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}' for name in ids]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(600)
def test_the_live_api_keeps_every_promise_of_its_openapi_schema(
    worker_env: dict[str, str], tmp_path: Path, settings: Any
) -> None:
    token, ids = _seeded(settings)
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(ids))
    port = free_port()
    web = web_server(port, worker_env)
    report = ARTIFACTS / "schemathesis"
    try:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                f"--config-file={config}",
                "run",
                f"http://127.0.0.1:{port}/api/schema/",
                "--checks=all",
                f"--seed={SEED}",
                f"--max-examples={MAX_EXAMPLES}",
                # One worker: hypothesis's lambda descriptions are not thread-safe on Python 3.11.
                "--workers=1",
                "--request-timeout=30",
                "--wait-for-schema=60",
                f"--header=Authorization: Token {token}",
                "--report=junit",
                f"--report-dir={report}",
            ],
            # Not the checkout: schemathesis keeps the failures it found under .schemathesis/ in
            # its working directory and tries them first next time; each run starts clean.
            cwd=tmp_path,
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "tests.e2e.openapi_hooks",
                "PYTHONPATH": str(django_settings.BASE_DIR),
                "NO_COLOR": "1",
            },
            capture_output=True,
            text=True,
            timeout=540,
        )
    finally:
        web.stop()
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "No issues found" in run.stdout or " passed" in run.stdout, run.stdout
