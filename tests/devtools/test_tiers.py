"""The suite's two tiers (tests/conftest.py): `make test-fast` runs the tests not marked `stack`, and
such a test that starts a process or an executor server fails instead of slowing the tier down."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.devtools.processes import ManagedProcess
from tests.conftest import STACK_FIXTURES, AnvilFactory, StackInFastTier
from tests.support.executor_server import Executor, ExecutorServer


def sleeper(tmp_path: Path) -> ManagedProcess:
    return ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(30)"], log_path=tmp_path / "s.log")


def test_a_fast_test_that_starts_a_process_fails_naming_itself_and_the_way_out(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    assert request.node.get_closest_marker("stack") is None
    process = sleeper(tmp_path)
    with pytest.raises(StackInFastTier) as refused:
        process.start()
    assert process.proc is None  # nothing was started
    message = str(refused.value)
    assert request.node.nodeid in message and "(sleeper)" in message
    assert "@pytest.mark.stack" in message and all(name in message for name in STACK_FIXTURES)


def test_a_fast_test_that_starts_an_executor_server_fails() -> None:
    server = ExecutorServer(Executor())
    try:
        with pytest.raises(StackInFastTier, match="starts an executor server"):
            server.start()
        assert not server.thread.is_alive()
    finally:
        server.httpd.server_close()


def test_a_test_that_requests_a_stack_fixture_is_in_the_stack_tier(
    request: pytest.FixtureRequest, anvils: AnvilFactory
) -> None:
    assert request.node.get_closest_marker("stack") is not None
    assert not anvils.nodes  # requested, not used: the request alone decides


@pytest.mark.relayer
def test_a_test_with_a_suites_marker_is_in_the_stack_tier(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("stack") is not None


@pytest.mark.stack
def test_a_test_marked_stack_by_hand_may_start_a_process(tmp_path: Path) -> None:
    process = sleeper(tmp_path).start()
    try:
        assert process.alive
    finally:
        process.stop(timeout=5)
