"""Token buckets and rate limiters (Firecracker's semantics) on a clock the
tests move: no KVM, no sleeping."""

import pytest
from hypothesis import example, given, settings, strategies as st

from pyvmm.devices.ratelimit import MIN_WAIT, NS, RateLimiter, TokenBucket
from pyvmm.devices.state import DeviceStateError, StateReader


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += round(seconds * NS)


def test_a_bucket_starts_full_and_refills_at_its_rate():
    clock = Clock()
    bucket = TokenBucket(1000, 1.0, clock=clock)
    assert bucket.rate == 1000
    assert bucket.reduce(1000)
    assert not bucket.reduce(1)
    assert bucket.wait_for(1) == pytest.approx(0.001)
    clock.advance(0.5)
    assert bucket.reduce(500) and not bucket.reduce(1)
    clock.advance(10)                       # never more than its size
    assert bucket.reduce(1000) and not bucket.reduce(1)


def test_a_refused_request_takes_nothing():
    clock = Clock()
    bucket = TokenBucket(100, 1.0, one_time_burst=10, clock=clock)
    assert bucket.reduce(60)                # 10 from the burst, 50 from the bucket
    assert not bucket.reduce(51)
    assert bucket.reduce(50) and bucket.budget == 0 and bucket.one_time_burst == 0


def test_the_one_time_burst_is_spent_first_and_never_comes_back():
    clock = Clock()
    bucket = TokenBucket(100, 1.0, one_time_burst=300, clock=clock)
    assert bucket.reduce(300) and bucket.budget == 100
    assert bucket.reduce(100) and not bucket.reduce(1)
    clock.advance(100)
    assert bucket.one_time_burst == 0 and bucket.reduce(100) and not bucket.reduce(1)


def test_a_request_larger_than_the_bucket_goes_through_and_leaves_a_debt():
    clock = Clock()
    bucket = TokenBucket(100, 1.0, clock=clock)
    assert bucket.reduce(250)               # could never fit: taken, 150 owed
    assert bucket.debt == 150 and not bucket.reduce(1)
    assert bucket.wait_for(1) == pytest.approx(1.51)
    clock.advance(1.5)
    assert not bucket.reduce(1)
    clock.advance(0.01)
    assert bucket.reduce(1)


def test_the_limiter_takes_both_buckets_or_neither():
    clock = Clock()
    limiter = RateLimiter.from_rates(bytes_per_second=1000, ops_per_second=10, burst=1.0, clock=clock)
    assert limiter.consume(600) == 0
    wait = limiter.consume(600)             # bytes refused: the operation is given back
    assert wait == pytest.approx(0.2) and limiter.ops.budget == 9 and limiter.throttled == 1
    for _ in range(9):
        assert limiter.consume(0) == 0
    assert limiter.consume(0) == pytest.approx(0.1)
    assert RateLimiter.from_rates(None, None) is None


def test_waits_are_never_shorter_than_a_timer_is_worth():
    clock = Clock()
    limiter = RateLimiter.from_rates(ops_per_second=1_000_000, burst=0.001, clock=clock)
    while limiter.consume(0) == 0:
        pass
    assert limiter.consume(0) >= MIN_WAIT


@settings(max_examples=200, deadline=None)
@given(rate=st.integers(1000, 100_000_000), burst=st.sampled_from([0.001, 0.01, 0.1, 0.5, 1.0]),
       sizes=st.lists(st.integers(1, 1 << 20), min_size=1, max_size=20),
       work=st.integers(0, 50_000), ops=st.one_of(st.none(), st.integers(1, 100_000)))
@example(rate=100_000_000, burst=1.0, sizes=[1], work=0, ops=None)     # 10^8 requests a second
def test_a_greedy_device_gets_the_configured_rate(rate, burst, sizes, work, ops):
    """A device that sends as fast as it may and sleeps exactly as told gets
    the configured bandwidth over a long run (the first full bucket and the
    last request apart), and its timer always finds room for the request it
    waited for (one wait per bucket at most: no busy loop)."""
    clock = Clock()
    limiter = RateLimiter.from_rates(rate, ops, burst, clock=clock)
    duration = max(200 * burst, 200 * max(sizes) / rate)
    sent = requests = 0
    index = 0
    while clock.now < duration * NS and requests < 20_000:   # a cap for tiny requests at a high rate
        size = sizes[index % len(sizes)]
        for attempt in range(3):
            wait = limiter.consume(size)
            if not wait:
                break
            clock.advance(wait)
        assert not wait, "the request did not fit after waiting for each bucket"
        sent += size
        requests += 1
        index += 1
        clock.now += work                       # the device's own time per request
    elapsed = clock.now / NS
    slack = limiter.bandwidth.size + max(sizes)
    # The bucket's refill time is whole nanoseconds: its rate is the one
    # configured within one part in 10^6, which a long run shows.
    assert limiter.bandwidth.rate == pytest.approx(rate, rel=1e-6)
    rate = limiter.bandwidth.rate
    assert sent <= rate * elapsed + slack
    if ops is None:
        assert sent >= rate * elapsed - slack - work * rate / NS * requests
    else:
        assert requests <= ops * elapsed + limiter.ops.size + 1


def test_a_limiters_state_round_trips_and_is_checked():
    clock = Clock()
    limiter = RateLimiter.from_rates(1000, 10, 1.0, clock=clock)
    limiter.consume(700)
    saved = limiter.save_state()
    other = RateLimiter.from_rates(1000, 10, 1.0, clock=clock)
    other.restore_state(StateReader(saved, "limiter"))
    assert other.save_state() == saved
    assert other.consume(300) == 0 and other.consume(1) > 0
    for damaged in ({"bandwidth": {"budget": 5000, "one_time_burst": 0, "debt": 0}, "ops": saved["ops"]},
                    {"bandwidth": saved["bandwidth"]},
                    {**saved, "extra": 1},
                    {"bandwidth": {"budget": -1, "one_time_burst": 0, "debt": 0}, "ops": saved["ops"]}):
        with pytest.raises(DeviceStateError):
            other.restore_state(StateReader(damaged, "limiter"))
