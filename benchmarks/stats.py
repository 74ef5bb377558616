"""The one result shape every benchmark reports: runs of a figure, their median, min and max.

A benchmark module measures a figure (events/s, a latency percentile) ``runs`` times and returns
``Figure`` rows; ``benchmarks/run.py`` collects them into ``results.json`` and the table in
``docs/performance.md``. The machine is shared and noisy, so a figure is always the median of
several runs, with its spread.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Figure", "percentile"]


def percentile(samples: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) of ``samples`` by the nearest-rank method."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Figure:
    """One measured figure: stage (ingest, processor...), case, unit and the value of each run."""

    stage: str
    case: str
    metric: str
    unit: str
    runs: tuple[float, ...]
    target: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        """The figure quoted: the median of the runs."""
        return statistics.median(self.runs)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Figure:
        """Return the Figure of one ``results.json`` entry (``as_dict``'s output)."""
        return cls(doc["stage"], doc["case"], doc["metric"], doc["unit"], tuple(doc["runs"]),
                   doc.get("target", ""), doc.get("notes", {}))

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form written to ``results.json``."""
        doc = asdict(self)
        doc["runs"] = list(self.runs)
        doc.update(median=self.median, min=min(self.runs), max=max(self.runs))
        return doc

