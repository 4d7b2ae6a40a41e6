"""A tiny deterministic random stream per request: a counter hashed with a key.

`random.Random` carries about 5 KB of state; 100,000 outstanding requests each with their own
would cost half a gigabyte. This stream costs a key and a counter, and its draws depend only on
(simulator seed, epoch, submit number, draw number), so a seeded run repeats.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")
_TWO_53 = float(1 << 53)


class Draws:
    """Random numbers from BLAKE2b(key, counter)."""

    __slots__ = ("_counter", "_key")

    def __init__(self, key: str) -> None:
        self._key = hashlib.blake2b(key.encode(), digest_size=16).digest()
        self._counter = 0

    def bits(self, count: int) -> int:
        """`count` (at most 512) random bits as an int."""
        self._counter += 1
        digest = hashlib.blake2b(
            self._counter.to_bytes(8, "little"), key=self._key, digest_size=64
        ).digest()
        return int.from_bytes(digest, "little") >> (512 - count)

    def random(self) -> float:
        """A float in [0, 1)."""
        return self.bits(53) / _TWO_53

    def uniform(self, low: float, high: float) -> float:
        """A float in [low, high)."""
        return low + (high - low) * self.random()

    def randint(self, low: int, high: int) -> int:
        """An int in [low, high] (slight modulo bias is irrelevant here)."""
        return low + self.bits(64) % (high - low + 1)

    def choice(self, items: Sequence[T]) -> T:
        """One of `items`."""
        return items[self.bits(64) % len(items)]

    def lognormvariate(self, mu: float, sigma: float) -> float:
        """exp(N(mu, sigma)), by Box-Muller."""
        u1 = 1.0 - self.random()
        u2 = self.random()
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        return math.exp(mu + sigma * z)
