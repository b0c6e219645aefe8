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

import pytest
from django.conf import settings

from tests.conftest import ARTIFACTS, free_port
from tests.factories import TokenFactory, VaultPolicyFactory
from tests.support.servers import web_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.stack]

SEED = 20261204
MAX_EXAMPLES = 25  # per operation and phase


@pytest.mark.timeout(600)
def test_the_live_api_keeps_every_promise_of_its_openapi_schema(worker_env: dict[str, str], tmp_path: Path) -> None:
    token = TokenFactory.create(user__username="fuzz-client").key
    VaultPolicyFactory.create()  # a vault with an active policy, so the vault answers carry data
    port = free_port()
    web = web_server(port, worker_env)
    report = ARTIFACTS / "schemathesis"
    try:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
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
                "PYTHONPATH": str(settings.BASE_DIR),
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
