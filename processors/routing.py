"""Turns a matched NetBox event into one SinkRecord per sink (DESIGN §3, §6). Pure; no Faust."""

from __future__ import annotations

from dataclasses import dataclass

from processors.rules import Match
from schemas.identity import egress_id
from schemas.records import NetBoxEvent, SinkRecord

__all__ = ["RecordFactory"]


@dataclass(frozen=True, slots=True)
class RecordFactory:
    """Builds SinkRecords with the deployment's stamps (environment, docs link, version)."""

    environment: str
    docs_template: str
    version: str

    def records(self, event: NetBoxEvent, match: Match) -> list[SinkRecord]:
        """Return one record per matched sink, each carrying the rules that routed it."""
        docs = self.docs_template.format(event_type=event.event_type.value)
        return [
            SinkRecord(
                source_id=event.source_id,
                source_timestamp=event.source_timestamp,
                source_type=event.event_type,
                source_type_docs=docs,
                netbox_id=event.netbox_id,
                netbox_version=event.netbox_version,
                egress_environment=self.environment,
                egress_id=egress_id(event.source_id, sink),
                egress_version=self.version,
                sink=sink,
                rules=tuple(rules),
                object_type=event.object_type,
                object_key=event.object_key,
                message=event.message,
            )
            for sink, rules in match.sinks.items()
        ]
