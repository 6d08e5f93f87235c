"""Token-bucket rate limiter on an injectable clock, so pacing is testable without real time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class SystemClock:
    """Real monotonic time and asyncio sleep."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class FakeClock:
    """A clock that only moves when slept on; every sleep is recorded for assertions."""

    t: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class TokenBucket:
    """Allows `rate` tokens per second with bursts up to `burst`; rate 0 means unlimited."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        now: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        clock = SystemClock()
        self.rate = rate
        # A small burst keeps pacing smooth yet lets batched publishing amortise the sleeps.
        self.burst = burst if burst is not None else max(1.0, rate / 20)
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        self._now = now or clock.now
        self._sleep = sleep or clock.sleep
        self._tokens = self.burst
        self._last = self._now()

    @classmethod
    def with_clock(cls, rate: float, clock: FakeClock | SystemClock, burst: float | None = None):
        """A bucket reading and sleeping on `clock`."""
        return cls(rate, burst, now=clock.now, sleep=clock.sleep)

    def _refill(self) -> None:
        t = self._now()
        self._tokens = min(self.burst, self._tokens + (t - self._last) * self.rate)
        self._last = t

    def try_acquire(self, n: float = 1) -> float:
        """Take `n` tokens if available and return 0, else take nothing and return the wait."""
        if self.rate == 0:
            return 0.0
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.burst}")
        self._refill()
        # The epsilon absorbs float rounding so a just-long-enough sleep is not followed by
        # a second, microscopic one.
        if self._tokens >= n - 1e-9:
            self._tokens = max(0.0, self._tokens - n)
            return 0.0
        return (n - self._tokens) / self.rate

    async def acquire(self, n: float = 1) -> None:
        """Wait until `n` tokens are available, then take them."""
        while (wait := self.try_acquire(n)) > 0:
            await self._sleep(wait)
