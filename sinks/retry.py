"""The retry policy: exponential backoff with jitter, bounded by attempts and elapsed time.

The defaults live here and nowhere else. A sink's ``retry`` section in the configuration
overrides them field by field (``sinks.<name>.retry.max_attempts`` ...). Deadlines are measured
on the monotonic clock, which the policy re-reads whenever the caller does not pass ``now``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

__all__ = ["RetryPolicy", "retry_policy_from_options"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long the runner keeps retrying a failed record before it dead-letters it.

    ``attempt`` counts failed deliveries so far (1 after the first failure). The delay before
    the next attempt is ``initial_delay * multiplier ** (attempt - 1)``, capped at ``max_delay``,
    spread by ``± jitter`` (a fraction) so workers do not retry in lockstep. A destination's
    ``Retry-After`` wins when it asks for longer, but no wait outlasts the ``max_elapsed``
    budget. A record is dead-lettered after ``max_attempts`` failures or once ``max_elapsed``
    seconds have passed since its first failure, whichever comes first.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")  # unknown retry keys are config errors

    initial_delay: float = 0.2
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.2
    max_attempts: int = 10
    max_elapsed: float = 300.0
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Reject values that would make the policy spin or never end."""
        if self.initial_delay < 0 or self.max_delay < 0 or self.max_elapsed < 0:
            raise ValueError("delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be a fraction in [0, 1)")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff(self, attempt: int) -> float:
        """Return the jittered exponential delay after failure number ``attempt``."""
        # Cap the exponent before multiplying: a large attempt count must not overflow a float.
        exponent = min(max(attempt, 1) - 1, 64)
        base = min(self.max_delay, self.initial_delay * self.multiplier**exponent)
        spread = base * self.jitter * (2 * self.random() - 1)
        return max(0.0, min(self.max_delay, base + spread))

    def delay(self, attempt: int, retry_after: float | None = None, elapsed: float = 0.0) -> float:
        """Return seconds to wait: the backoff, or a longer Retry-After, within max_elapsed."""
        # The destination knows best when it will recover, so its Retry-After may exceed
        # max_delay; but no wait may outlast the budget left after ``elapsed`` seconds.
        wait = self.backoff(attempt)
        if retry_after is not None and retry_after > wait:
            wait = retry_after
        return float(max(0.0, min(wait, self.max_elapsed - elapsed)))

    def exhausted(
        self, attempt: int, first_failure_monotonic: float, now: float | None = None
    ) -> bool:
        """Return whether a record that failed ``attempt`` times must now be dead-lettered."""
        if attempt >= self.max_attempts:
            return True
        current = time.monotonic() if now is None else now
        return current - first_failure_monotonic >= self.max_elapsed


_ADAPTER: TypeAdapter[RetryPolicy] = TypeAdapter(RetryPolicy)


def retry_policy_from_options(options: Mapping[str, Any] | None, where: str) -> RetryPolicy:
    """Return the policy of a sink's ``retry`` section; raise ValueError naming the key."""
    if options is None:
        return RetryPolicy()
    if not isinstance(options, Mapping):
        raise ValueError(f"{where}: must be a mapping of retry settings")
    if "random" in options:
        raise ValueError(f"{where}.random: extra inputs are not permitted")
    try:
        return _ADAPTER.validate_python(dict(options))
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"{where}{'.' + key if key else ''}: {msg}")
        raise ValueError("; ".join(problems)) from None
