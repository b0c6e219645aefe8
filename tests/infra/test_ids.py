"""orchestrator/infra/ids.py: version 7 UUIDs, ordered by the millisecond they were made in."""

from __future__ import annotations

import time
import uuid

from orchestrator.infra.ids import uuid7
from relayer.models import RelayTransaction


def test_a_uuid7_is_version_7_of_the_rfc_variant_and_carries_its_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid7()
    after = time.time_ns() // 1_000_000
    assert made.version == 7 and made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after


def test_later_milliseconds_sort_later_and_none_repeat() -> None:
    first = [uuid7() for _ in range(1000)]
    time.sleep(0.002)
    later = [uuid7() for _ in range(1000)]
    assert max(first) < min(later)
    assert len(set(first + later)) == 2000


def test_a_relay_request_gets_one_by_default() -> None:
    assert RelayTransaction().pk.version == 7
