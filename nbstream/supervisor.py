"""Runs the pipeline's stages as child processes and stops them all cleanly (``nbstream up``)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)


@dataclass
class Supervisor:
    """Starts named children, waits until one exits or a signal arrives, then stops the rest."""

    grace: float = 30.0
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _stopping: bool = False

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        """Start child ``name`` running ``argv``."""
        self.children[name] = subprocess.Popen(  # noqa: S603 - argv is built by nbstream itself
            list(argv), env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL
        )
        log.info("started %s (pid %d)", name, self.children[name].pid,
                 extra={"child": name, "pid": self.children[name].pid})

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """Ask for shutdown; the wait loop does the stopping."""
        log.info("received %s, stopping", signal.Signals(signum).name)
        self._stopping = True

    def wait(self) -> int:
        """Block until SIGINT/SIGTERM or a child's exit; stop all; return the exit code."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        code = 0
        while not self._stopping:
            for name, proc in self.children.items():
                rc = proc.poll()
                if rc is not None:
                    log.error("%s exited with %d; stopping the pipeline", name, rc,
                              extra={"child": name, "returncode": rc})
                    self._stopping, code = True, 1
                    break
            time.sleep(0.2)
        self.stop_all()
        return code

    def stop_all(self) -> None:
        """SIGTERM every live child (last started first), then SIGKILL after the grace period."""
        for name, proc in reversed(list(self.children.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                log.info("stopping %s", name)
        deadline = time.monotonic() + self.grace
        for name, proc in reversed(list(self.children.items())):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", name, self.grace)
                proc.kill()
                proc.wait()
        sys.stdout.flush()
