"""Fixtures of the relayer's tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from relayer.keys import master_keys
from tests.support.relays import Configure, b64_key


@pytest.fixture
def master(settings: Any) -> Iterator[Configure]:
    """Sets KEY_MASTER_KEYS (starting with a fresh version-1 key) and clears the cache;
    `master("2:<base64>,1:<base64>")` sets it again. `master_keys()` is cached, so the cache is
    cleared after every change. The key manager's tests use it for every test."""

    def configure(raw: str) -> None:
        settings.KEY_MASTER_KEYS = raw
        master_keys.cache_clear()

    configure(f"1:{b64_key()}")
    yield configure
    # The settings fixture restores KEY_MASTER_KEYS after this; the cache must not outlive it.
    master_keys.cache_clear()
