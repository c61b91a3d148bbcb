"""I/O rate limiters with Firecracker's semantics: token buckets for
bandwidth (bytes) and for operations.

A TokenBucket holds at most `size` tokens and refills from empty to full
in `refill_time` seconds, so its rate is size / refill_time. It starts
full, plus a `one_time_burst` of tokens that are spent first and never
come back. Refilling is passive: the tokens owed for the time passed are
added when a request finds too few. A request larger than the whole bucket
is let through (it could never fit) and empties it, and the bucket then
owes the rest: the limiter stays blocked for as long as the refill of
those tokens takes, so the rate holds on average.

A RateLimiter pairs a bandwidth bucket and an operations bucket (either
may be absent). consume(nbytes) either takes one operation and nbytes
tokens, or takes nothing and says how long to wait: the device then stops
taking requests (it leaves them in its queue) and asks its worker for a
timer (context.worker.call_later) to look again, never a busy loop. The
guest only sees its I/O go slower. Where Firecracker re-arms a 100 ms
timer after a refused request, the wait here is the time the bucket needs
to hold the request (at least MIN_WAIT), so a device wakes up when it can
go on.

The clock is a function returning nanoseconds (time.monotonic_ns by
default); tests pass their own. Nothing here knows threads: a limiter is
used by one device worker.
"""

from __future__ import annotations

from time import monotonic_ns
from typing import Callable, Optional

NS = 1_000_000_000
MIN_WAIT = 0.001          # seconds: no timer shorter than this


class TokenBucket:
    """`size` tokens refilled in `refill_time` seconds, plus a one-time burst."""

    def __init__(self, size: int, refill_time: float, one_time_burst: int = 0,
                 clock: Callable[[], int] = monotonic_ns) -> None:
        if size <= 0 or refill_time <= 0 or one_time_burst < 0:
            raise ValueError("a token bucket needs a positive size and refill time")
        self.size = int(size)
        self.refill_ns = max(1, round(refill_time * NS))
        self.clock = clock
        self.budget = self.size
        self.one_time_burst = int(one_time_burst)
        self.debt = 0                  # tokens taken beyond an empty bucket (an oversize request)
        self._last = clock()
        self._remainder = 0            # token fractions (size * ns) not yet credited

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.size * NS / self.refill_ns

    def _refill(self) -> None:
        now = self.clock()
        elapsed, self._last = max(0, now - self._last), now
        if self.budget >= self.size and not self.debt:
            self._remainder = 0
            return
        owed, self._remainder = divmod(elapsed * self.size + self._remainder, self.refill_ns)
        paid = min(owed, self.debt)
        self.debt -= paid
        self.budget = min(self.size, self.budget + owed - paid)

    def reduce(self, tokens: int) -> bool:
        """Takes `tokens` (the one-time burst first) and returns True, or
        takes nothing and returns False. A request larger than the whole
        bucket is taken as soon as no debt is left: it empties the bucket
        and leaves the rest as a debt the refill pays first."""
        from_burst = min(self.one_time_burst, tokens)
        needed = tokens - from_burst
        if needed:
            self._refill()
            if self.debt:
                return False
            if needed > self.size:
                self.debt, self.budget = needed - self.budget, 0
            elif needed > self.budget:
                return False
            else:
                self.budget -= needed
        self.one_time_burst -= from_burst
        return True

    def give_back(self, tokens: int) -> None:
        """Returns tokens taken by a request that did not go ahead after all."""
        self._refill()
        paid = min(tokens, self.debt)
        self.debt -= paid
        self.budget = min(self.size, self.budget + tokens - paid)

    def wait_for(self, tokens: int) -> float:
        """Seconds until reduce(tokens) can succeed (0 if it can now)."""
        needed = tokens - min(self.one_time_burst, tokens)
        if not needed:
            return 0.0
        self._refill()
        missing = self.debt + (0 if needed > self.size else max(0, needed - self.budget))
        if missing <= 0:
            return 0.0
        return max(0, -(-(missing * self.refill_ns - self._remainder) // self.size)) / NS

    def save(self) -> dict:
        self._refill()
        return {"budget": self.budget, "one_time_burst": self.one_time_burst, "debt": self.debt}

    def load(self, budget: int, one_time_burst: int, debt: int) -> None:
        self.budget, self.one_time_burst, self.debt = budget, one_time_burst, debt
        self._last, self._remainder = self.clock(), 0

    def __repr__(self) -> str:
        return (f"TokenBucket(size={self.size}, refill={self.refill_ns / NS:g}s, budget={self.budget}, "
                f"burst={self.one_time_burst}, debt={self.debt})")


class RateLimiter:
    """A bandwidth bucket and an operations bucket; either may be None (no limit)."""

    def __init__(self, bandwidth: Optional[TokenBucket] = None, ops: Optional[TokenBucket] = None) -> None:
        self.bandwidth = bandwidth
        self.ops = ops
        self.throttled = 0             # requests refused for now (each waited)

    @classmethod
    def from_rates(cls, bytes_per_second: Optional[int] = None, ops_per_second: Optional[int] = None,
                   burst: float = 0.1, clock: Callable[[], int] = monotonic_ns) -> Optional["RateLimiter"]:
        """A limiter for the rates given, each bucket holding `burst`
        seconds' worth of tokens (Firecracker's size = rate * burst and
        refill_time = size / rate, about `burst`); None when no rate is given."""
        if not bytes_per_second and not ops_per_second:
            return None

        def bucket(rate):
            if not rate:
                return None
            size = max(2, round(rate * max(burst, 2 * MIN_WAIT)))   # room for what a MIN_WAIT refills
            return TokenBucket(size, size / rate, clock=clock)      # the rate exactly, whatever the rounding
        return cls(bucket(bytes_per_second), bucket(ops_per_second))

    def consume(self, nbytes: int, ops: int = 1) -> float:
        """Takes `ops` operations and `nbytes` bytes and returns 0, or takes
        nothing and returns the seconds to wait before trying again."""
        if self.ops is not None and not self.ops.reduce(ops):
            self.throttled += 1
            return max(MIN_WAIT, self.ops.wait_for(ops))
        if self.bandwidth is not None and nbytes and not self.bandwidth.reduce(nbytes):
            if self.ops is not None:
                self.ops.give_back(ops)
            self.throttled += 1
            return max(MIN_WAIT, self.bandwidth.wait_for(nbytes))
        return 0.0

    def give_back(self, nbytes: int, ops: int = 1) -> None:
        """Returns what consume() took for a request that did not go ahead."""
        if self.ops is not None:
            self.ops.give_back(ops)
        if self.bandwidth is not None and nbytes:
            self.bandwidth.give_back(nbytes)

    def save_state(self) -> dict:
        return {name: bucket.save() for name, bucket in (("bandwidth", self.bandwidth), ("ops", self.ops))
                if bucket is not None}

    def restore_state(self, reader) -> None:
        """From a pyvmm.devices.state.StateReader over save_state()'s dict."""
        for name, bucket in (("bandwidth", self.bandwidth), ("ops", self.ops)):
            if bucket is None:
                continue
            fields = reader.nested(name)
            if not isinstance(fields, dict) or set(fields) != {"budget", "one_time_burst", "debt"} or not all(
                    isinstance(value, int) and not isinstance(value, bool) and value >= 0
                    for value in fields.values()) or fields["budget"] > bucket.size:
                raise reader.fail(name, f"{fields!r} is not a token bucket's state")
            bucket.load(fields["budget"], fields["one_time_burst"], fields["debt"])
        reader.finish()

    def __repr__(self) -> str:
        return f"RateLimiter(bandwidth={self.bandwidth!r}, ops={self.ops!r})"
