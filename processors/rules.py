"""Rule matching: which rules, and so which sinks, an event reaches (DESIGN §7). Pure; no Faust.

Rules are indexed by (object type, event type) on first sight of each pair, so an event is
only tested against the rules that can match it: 100 rules do not cost 100 evaluations.
A condition that raises is "no match" for that rule, reported so the caller counts it, and
logged once per rule.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from processors.conditions import ConditionSet, InvalidCondition, build_condition_set
from schemas.config import RuleSettings
from schemas.records import EventType

__all__ = ["CompiledRule", "Match", "RuleEngine", "RuleError", "Verdict"]

log = logging.getLogger(__name__)


class RuleError(ValueError):
    """A rule that cannot be built; the message names the rule."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A validated rule with its conditions built once."""

    name: str
    object_types: frozenset[str]
    event_types: frozenset[EventType]
    conditions: ConditionSet | None
    sinks: tuple[str, ...]

    def selects(self, object_type: str, event_type: EventType) -> bool:
        """Return whether the rule's object and event types cover this event."""
        return event_type in self.event_types and (
            not self.object_types or object_type in self.object_types
        )


@dataclass(slots=True)
class Match:
    """The outcome of matching one event: sink -> rule names, and the conditions that raised."""

    sinks: dict[str, list[str]] = field(default_factory=dict)
    errors: list[tuple[str, InvalidCondition]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why one rule did or did not match one event (for ``nbstream rules test``)."""

    rule: str
    matched: bool
    reason: str
    sinks: tuple[str, ...]


class RuleEngine:
    """Matches events against the enabled rules."""

    def __init__(self, rules: Sequence[RuleSettings]) -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(_compile(r) for r in rules if r.enabled)
        self._index: dict[tuple[str, EventType], tuple[CompiledRule, ...]] = {}
        self._logged: set[str] = set()

    def candidates(self, object_type: str, event_type: EventType) -> tuple[CompiledRule, ...]:
        """Return the rules whose object and event types cover this pair (cached)."""
        key = (object_type, event_type)
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = tuple(
                r for r in self.rules if r.selects(object_type, event_type)
            )
        return found

    def match(self, object_type: str, event_type: EventType, data_json: str | None) -> Match:
        """Return the sinks this event goes to with the rules that route it there.

        ``data_json`` is parsed only when a candidate rule has conditions.
        """
        result = Match()
        rules = self.candidates(object_type, event_type)
        if not rules:
            return result
        data: Any = _UNPARSED
        for rule in rules:
            if rule.conditions is not None:
                if data is _UNPARSED:
                    data = json.loads(data_json) if data_json else None
                try:
                    if not rule.conditions.eval(data):
                        continue
                except InvalidCondition as err:
                    result.errors.append((rule.name, err))
                    self._log_once(rule.name, err)
                    continue
            for sink in rule.sinks:
                result.sinks.setdefault(sink, []).append(rule.name)
        return result

    def explain(self, object_type: str, event_type: EventType, data: Any) -> list[Verdict]:
        """Return, for every enabled rule, whether it matches this event and why."""
        verdicts = []
        for r in self.rules:
            if r.object_types and object_type not in r.object_types:
                reason, ok = f"object type {object_type} not in {sorted(r.object_types)}", False
            elif event_type not in r.event_types:
                types = sorted(e.value for e in r.event_types)
                reason, ok = f"event type {event_type.value} not in {types}", False
            elif r.conditions is None:
                reason, ok = "matched (no conditions)", True
            else:
                try:
                    ok = r.conditions.eval(data)
                    reason = "conditions true" if ok else "conditions false"
                except InvalidCondition as err:
                    reason, ok = f"condition raised: {err}", False
            verdicts.append(Verdict(r.name, ok, reason, r.sinks))
        return verdicts

    def _log_once(self, rule: str, err: InvalidCondition) -> None:
        """Log a rule's first evaluation error; later ones are only counted."""
        if rule not in self._logged:
            self._logged.add(rule)
            log.error("rule %s: condition evaluation failed, treated as no match: %s", rule, err,
                      extra={"rule": rule})


_UNPARSED: Any = object()


def _compile(rule: RuleSettings) -> CompiledRule:
    """Build one rule; raise RuleError naming it if its conditions are invalid."""
    try:
        conditions = build_condition_set(rule.conditions)
    except ValueError as err:
        raise RuleError(f"rules.{rule.name}.conditions: {err}") from None
    return CompiledRule(
        name=rule.name,
        object_types=frozenset(rule.object_types),
        event_types=frozenset(rule.event_types),
        conditions=conditions,
        sinks=rule.sinks,
    )
