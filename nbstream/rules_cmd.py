"""``nbstream rules check`` and ``rules test EVENT.json``: explain routing without Kafka."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from processors.rules import RuleEngine
from producers.normalize import NotANetBoxEvent, normalize
from schemas.config import Settings

__all__ = ["check", "explain"]


def check(settings: Settings, out: TextIO | None = None) -> int:
    """Print a summary of the (already validated) sinks and rules; return 0."""
    out = out or sys.stdout
    engine = RuleEngine(settings.rules)
    sinks = settings.enabled_sinks()
    out.write(f"configuration OK: {len(sinks)} enabled sink(s), {len(engine.rules)} enabled "
              f"rule(s)\n")
    for name, sink in settings.sinks.items():
        out.write(f"  sink {name:20s} type={sink.type}{'' if sink.enabled else ' (disabled)'}\n")
    for r in engine.rules:
        types = ", ".join(sorted(r.object_types)) or "all object types"
        events = ", ".join(sorted(e.value for e in r.event_types))
        cond = "with conditions" if r.conditions is not None else "no conditions"
        out.write(f"  rule {r.name:20s} {types}; {events}; {cond} -> {', '.join(r.sinks)}\n")
    unused = set(sinks) - {s for r in engine.rules for s in r.sinks}
    if unused:
        out.write(f"  note: no enabled rule routes to {', '.join(sorted(unused))}\n")
    return 0


def explain(settings: Settings, path: Path, out: TextIO | None = None) -> int:
    """Print which rules and sinks the NetBox payload in ``path`` reaches, and why not.

    Accepts a bare payload or a captured webhook line (an object with a ``body``). Returns 0
    when at least one sink is reached, 1 when none is, 2 when the payload is not a NetBox event.
    """
    out = out or sys.stdout
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    if isinstance(doc, dict) and isinstance(doc.get("body"), str):
        text = doc["body"]
        doc = json.loads(text)
    try:
        event = normalize(doc, text, settings.netbox, datetime.now(UTC))
    except NotANetBoxEvent as err:
        out.write(f"not a NetBox event: {err}\n")
        return 2
    out.write(f"event {event.event_type.value} on {event.object_key} "
              f"(NetBox event {event.netbox_event!r}, source_id {event.source_id})\n")
    engine = RuleEngine(settings.rules)
    data = json.loads(event.data) if event.data else None
    reached: dict[str, list[str]] = {}
    for v in engine.explain(event.object_type, event.event_type, data):
        mark = "MATCH" if v.matched else "skip "
        out.write(f"  {mark} {v.rule:24s} {v.reason}\n")
        if v.matched:
            for s in v.sinks:
                reached.setdefault(s, []).append(v.rule)
    if not reached:
        out.write("reaches no sink\n")
        return 1
    for sink, rules in reached.items():
        out.write(f"  -> sink {sink} (rules: {', '.join(rules)})\n")
    return 0
