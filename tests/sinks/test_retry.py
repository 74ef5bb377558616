"""The retry policy: backoff growth, jitter bounds, Retry-After, exhaustion, config parsing."""

from __future__ import annotations

import pytest

from sinks.retry import RetryPolicy, retry_policy_from_options


def test_defaults_live_in_the_policy() -> None:
    """The documented defaults."""
    p = RetryPolicy()
    assert (p.initial_delay, p.multiplier, p.max_delay, p.jitter, p.max_attempts,
            p.max_elapsed) == (0.2, 2.0, 30.0, 0.2, 10, 300.0)


def test_backoff_grows_and_is_capped() -> None:
    """Without jitter the delay doubles from initial_delay up to max_delay."""
    p = RetryPolicy(jitter=0.0)
    assert [p.delay(a) for a in range(1, 11)] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6,
                                                 30.0, 30.0]
    assert p.delay(10_000) == 30.0  # no float overflow on absurd attempt counts


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
def test_jitter_stays_within_its_fraction(draw: float) -> None:
    """Jitter spreads the delay by at most ±jitter of it, and never past max_delay."""
    p = RetryPolicy(jitter=0.2, random=lambda: draw)
    assert 0.64 - 1e-9 <= p.delay(3) <= 0.96 + 1e-9
    assert p.delay(20) <= p.max_delay


def test_retry_after_wins_when_longer_but_not_past_the_budget() -> None:
    """A longer Retry-After is honoured even beyond max_delay, within max_elapsed's remainder."""
    p = RetryPolicy(jitter=0.0)
    assert p.delay(1, retry_after=0.05) == 0.2
    assert p.delay(1, retry_after=45.0) == 45.0
    assert p.delay(1, retry_after=45.0, elapsed=290.0) == 10.0
    assert p.delay(5, elapsed=400.0) == 0.0


def test_exhausted_by_attempts_or_elapsed_time() -> None:
    """Exhaustion comes from max_attempts or from max_elapsed since the first failure."""
    p = RetryPolicy(max_attempts=3, max_elapsed=60.0)
    assert not p.exhausted(2, first_failure_monotonic=100.0, now=150.0)
    assert p.exhausted(3, first_failure_monotonic=100.0, now=101.0)
    assert p.exhausted(1, first_failure_monotonic=100.0, now=160.0)


def test_exhausted_rereads_the_monotonic_clock() -> None:
    """Without ``now`` the policy reads the monotonic clock itself."""
    p = RetryPolicy(max_elapsed=1.0)
    assert p.exhausted(1, first_failure_monotonic=-1e9)
    assert not RetryPolicy(max_elapsed=1e9).exhausted(1, first_failure_monotonic=0.0)


@pytest.mark.parametrize("bad", [
    {"multiplier": 0.5}, {"jitter": 1.0}, {"max_attempts": 0}, {"initial_delay": -1},
])
def test_invalid_policies_are_rejected(bad: dict[str, float]) -> None:
    """Values that would spin or never end are refused."""
    with pytest.raises(ValueError):
        RetryPolicy(**bad)  # type: ignore[arg-type]


def test_options_override_defaults_and_errors_name_the_key() -> None:
    """A sink's retry section overrides field by field; problems name sinks.<name>.retry.<key>."""
    p = retry_policy_from_options({"max_attempts": 3, "max_elapsed": "60"}, "sinks.a.retry")
    assert (p.max_attempts, p.max_elapsed, p.initial_delay) == (3, 60.0, 0.2)
    assert retry_policy_from_options(None, "sinks.a.retry") == RetryPolicy()
    with pytest.raises(ValueError, match=r"sinks\.a\.retry\.maximum"):
        retry_policy_from_options({"maximum": 3}, "sinks.a.retry")
    with pytest.raises(ValueError, match=r"sinks\.a\.retry\.jitter"):
        retry_policy_from_options({"jitter": "lots"}, "sinks.a.retry")
    with pytest.raises(ValueError, match=r"sinks\.a\.retry: max_attempts must be at least 1"):
        retry_policy_from_options({"max_attempts": 0}, "sinks.a.retry")
    with pytest.raises(ValueError, match=r"sinks\.a\.retry: must be a mapping"):
        retry_policy_from_options([1], "sinks.a.retry")  # type: ignore[arg-type]
