"""Time-ordered UUIDs (version 7, RFC 9562) for primary keys written at a high rate.

A version 4 key lands on a random page of its primary-key index, and so does every new version
of its row that is not a heap-only update: after each checkpoint the first change to each of
those pages writes the whole page (8 kB) to the WAL, and every commit waits for the WAL to reach
the disk. Keys made in the same millisecond share a page. (Python's uuid module has uuid7 from
3.14 on.)"""

from __future__ import annotations

import os
import time
import uuid

_RAND_B = (1 << 62) - 1


def uuid7() -> uuid.UUID:
    """48 bits of Unix time in milliseconds, the version, 12 random bits, the variant, 62 random
    bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | rand & _RAND_B
    return uuid.UUID(int=value)
