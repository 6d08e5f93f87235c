"""Deterministic UUIDv7 ids from a seeded RNG and simulated time, so a seed reproduces every id."""

from __future__ import annotations

import random
import uuid

_MS_MASK = (1 << 48) - 1


def seeded_uuid7(unix_ms: int, rng: random.Random) -> str:
    """A valid RFC 9562 UUIDv7: 48-bit ms time, version 7, variant 10, 74 seeded random bits."""
    if not 0 <= unix_ms <= _MS_MASK:
        raise ValueError(f"timestamp out of UUIDv7 range: {unix_ms}")
    rand_a = rng.getrandbits(12)
    rand_b = rng.getrandbits(62)
    value = (unix_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))
