"""The interpreter's thread switch interval in nbstream's processes.

Every stage runs its asyncio loop on the main thread beside Kafka clients' threads: librdkafka's
delivery reports (ingest, the processor's publisher), the sink worker's consumer polled on a
thread of its own, and Faust's aiokafka consumer thread. Each callback and each step of those
threads needs the GIL, and under load the loop holds it: CPython makes the holder let go only
after the switch interval, 5 ms by default, so those threads got the GIL once per 5 ms, one
callback at a time. The processor's acknowledgements then lagged by up to a second and its
agent stalled on them; at 1 ms it routed ~5 % more events per second (docs/performance.md).
"""

from __future__ import annotations

import sys

__all__ = ["SWITCH_INTERVAL", "tune"]

# Seconds a thread may hold the GIL while another waits for it (CPython's default is 0.005).
SWITCH_INTERVAL = 0.001


def tune() -> None:
    """Set this process's switch interval; call once at start-up, before threads start."""
    sys.setswitchinterval(SWITCH_INTERVAL)
