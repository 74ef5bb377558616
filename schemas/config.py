"""Typed, validated configuration (DESIGN §8): one YAML file with ``${VAR}`` expansion.

The model is frozen and built once per process. Sink-specific settings are validated by each
sink's own model (the sinks own their fields); this module validates the shape they share.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.records import OBJECT_EVENTS, EventType

__all__ = [
    "ConfigError",
    "DashboardSettings",
    "EmbeddedKafka",
    "IngestSettings",
    "KafkaSettings",
    "NetBoxSettings",
    "ProcessorSettings",
    "RuleSettings",
    "SchemaRegistrySettings",
    "Settings",
    "SinkSettings",
    "expand_env",
    "load_settings",
    "parse_settings",
]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NetBoxSettings(_Model):
    """The NetBox instance that sends events."""

    id: str = Field("netbox", description="Instance id stamped on every event (netbox_id).")
    version: str = Field("4.6", description="NetBox version stamped on every event.")
    webhook_secrets: tuple[SecretStr, ...] = Field(
        (), description="Accepted webhook secrets; several allow rotation. Empty = unsigned."
    )
    api_url: str | None = Field(None, description="NetBox base URL for the change-log poller.")
    api_token: SecretStr | None = Field(None, description="NetBox API token for the poller.")


class EmbeddedKafka(_Model):
    """The local single-node broker nbstream provisions when bootstrap_servers is embedded."""

    version: str = Field("4.3.1", description="Apache Kafka release fetched from Maven Central.")
    host: str = Field("127.0.0.1", description="Loopback address the broker binds.")
    port: int = Field(19092, ge=1, le=65535, description="Client (PLAINTEXT) port.")
    controller_port: int = Field(19093, ge=1, le=65535, description="KRaft controller port.")
    data_dir: Path = Field(Path("var/kafka"), description="Log and metadata directory.")
    heap: str = Field("1g", description="JVM -Xmx for the broker.")


class KafkaSettings(_Model):
    """How to reach Kafka and how to lay out topics."""

    bootstrap_servers: str = Field("embedded", description="'embedded' or host:port,...")
    topic_prefix: str = Field("netbox.", description="Prefix of every nbstream topic.")
    partitions: int = Field(6, ge=1, description="Partitions of the raw and sink topics.")
    replication_factor: int = Field(1, ge=1, description="Replication factor of new topics.")
    client: dict[str, str] = Field(
        default_factory=dict,
        description="librdkafka/aiokafka security passthrough: security.protocol, sasl.*, ssl.*.",
    )
    embedded: EmbeddedKafka = Field(default_factory=EmbeddedKafka)  # type: ignore[arg-type]

    @property
    def is_embedded(self) -> bool:
        """Whether nbstream runs the broker itself."""
        return self.bootstrap_servers == "embedded"

    @property
    def servers(self) -> str:
        """The bootstrap list clients connect to."""
        if self.is_embedded:
            return f"{self.embedded.host}:{self.embedded.port}"
        return self.bootstrap_servers

    def librdkafka(self, **overrides: Any) -> dict[str, Any]:
        """Return a confluent-kafka client config: bootstrap, security passthrough, overrides."""
        return {"bootstrap.servers": self.servers, **self.client, **overrides}

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        if v != "embedded" and not all(re.fullmatch(r"[^\s:,]+:\d+", s) for s in v.split(",")):
            raise ValueError("must be 'embedded' or a comma-separated list of host:port")
        return v


class SchemaRegistrySettings(_Model):
    """Confluent-compatible Schema Registry; without url, Avro single-object encoding is used."""

    url: str | None = Field(None, description="Registry URL; enables the Confluent wire format.")
    client: dict[str, str] = Field(
        default_factory=dict, description="Extra SchemaRegistryClient settings (basic.auth...)."
    )


class IngestSettings(_Model):
    """The webhook receiver."""

    host: str = Field("127.0.0.1", description="Listen address.")
    port: int = Field(8080, ge=0, le=65535, description="Listen port.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger bodies get 413.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes for `nbstream ingest`.")
    produce_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for the broker's ack before answering 503."
    )


class ProcessorSettings(_Model):
    """The Faust rule processor."""

    web_port: int = Field(6066, ge=0, le=65535, description="Faust web port (/metrics); 0 = off.")
    data_dir: Path = Field(Path("var/processor"), description="Faust data directory.")
    commit_interval: float = Field(
        0.5, gt=0, description="Seconds between commits of acknowledged input offsets (a record "
        "is acknowledged once its outputs are stored); bounds what is routed again after a "
        "crash, not the latency.",
    )
    batch_size: int = Field(
        500, ge=1, description="Most raw records the agent routes and publishes as one batch.")
    batch_linger: float = Field(
        0.005, gt=0, description="Seconds the agent waits for a batch to fill before routing "
        "what it has (the processor's added latency at low rates).",
    )
    fetch_max_wait: float = Field(
        0.015, gt=0, le=1.5, description="Seconds the broker may hold a fetch of raw records "
        "while fewer than fetch_min_bytes are ready (the processor's added latency at low "
        "rates).",
    )
    fetch_min_bytes: int = Field(
        65536, ge=1, description="Bytes of raw records the broker gathers before it answers a "
        "fetch early; fewer, larger fetches cost the processor less CPU per event.",
    )
    session_timeout: float = Field(
        60.0, gt=0, description="Seconds without a heartbeat after which the group gives a "
        "processor's partitions to the others (a killed processor's are idle that long).",
    )
    heartbeat_interval: float = Field(
        3.0, gt=0, description="Seconds between the processor's heartbeats to the group "
        "coordinator; below session_timeout (a third of it or less, as Kafka advises).",
    )
    dedup_window: float = Field(
        600.0, ge=0, description="Seconds within which a repeated source_id is dropped "
        "(NetBox requeues); 0 disables dedup.",
    )
    source_type_docs: str = Field(
        "https://github.com/nbstream/nbstream/blob/main/docs/event-types.md#{event_type}",
        description="Link template stamped as source_type_docs; {event_type} is filled in.",
    )

    @model_validator(mode="after")
    def _heartbeat_below_session_timeout(self) -> ProcessorSettings:
        if self.heartbeat_interval >= self.session_timeout:
            raise ValueError(f"heartbeat_interval ({self.heartbeat_interval}) must be below "
                             f"session_timeout ({self.session_timeout})")
        return self


class DashboardSettings(_Model):
    """The live lag dashboard (``nbstream dashboard``; ``nbstream up`` starts it too)."""

    host: str = Field("127.0.0.1", description="Listen address.")
    port: int = Field(8090, ge=0, le=65535, description="Listen port; 0 = not started by up.")
    interval: float = Field(2.0, gt=0, description="Seconds between lag observations.")
    window: float = Field(
        30.0, gt=0, description="Seconds of observations a Burrow-style status is judged on.")
    history: float = Field(600.0, gt=0, description="Seconds of lag the charts show.")


class SinkSettings(BaseModel):
    """Settings every sink shares; the sink's own fields are validated by its module."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str = Field(description="Sink implementation: webhook, file, sns, pubsub, ...")
    enabled: bool = Field(True, description="Disabled sinks get no topic and no worker.")
    batch_size: int = Field(500, ge=1, le=100_000, description="Max records per write_batch.")
    batch_linger_ms: int = Field(
        1, ge=0, description="Wait this long to fill a batch (the sink's added latency at low "
        "rates; under load the consumer's prefetched records fill batches anyway).")
    metrics_port: int = Field(0, ge=0, le=65535, description="Worker /metrics port; 0 = off.")

    @property
    def options(self) -> dict[str, Any]:
        """The sink-specific fields (everything not shared)."""
        return dict(self.model_extra or {})


class RuleSettings(_Model):
    """A routing rule (DESIGN §7)."""

    name: str = Field(pattern=_NAME, description="Unique rule name.")
    object_types: tuple[str, ...] = Field((), description="app_label.model list; empty = all.")
    event_types: tuple[EventType, ...] = Field(OBJECT_EVENTS, description="Event types matched.")
    conditions: Any = Field(None, description="NetBox ConditionSet JSON; empty = always.")
    sinks: tuple[str, ...] = Field(min_length=1, description="Sinks the matched events go to.")
    enabled: bool = True

    @field_validator("object_types")
    @classmethod
    def _object_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for t in v:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*", t):
                raise ValueError(f"{t!r} is not an object type like 'dcim.device'")
        return v


class Settings(_Model):
    """The whole configuration of one nbstream deployment."""

    netbox: NetBoxSettings = Field(default_factory=NetBoxSettings)  # type: ignore[arg-type]
    environment: str = Field("production", description="Stamped as egress_environment.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)  # type: ignore[arg-type]
    schema_registry: SchemaRegistrySettings = Field(
        default_factory=SchemaRegistrySettings  # type: ignore[arg-type]
    )
    ingest: IngestSettings = Field(default_factory=IngestSettings)  # type: ignore[arg-type]
    processor: ProcessorSettings = Field(
        default_factory=ProcessorSettings  # type: ignore[arg-type]
    )
    dashboard: DashboardSettings = Field(
        default_factory=DashboardSettings  # type: ignore[arg-type]
    )
    sinks: dict[str, SinkSettings] = Field(default_factory=dict)
    rules: tuple[RuleSettings, ...] = ()

    @field_validator("sinks")
    @classmethod
    def _sink_names(cls, v: dict[str, SinkSettings]) -> dict[str, SinkSettings]:
        for name in v:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"sink name {name!r} must match {_NAME}")
        return v

    @model_validator(mode="after")
    def _rules_name_sinks(self) -> Settings:
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(f"rules[{i}] ({rule.name}): duplicate rule name")
            seen.add(rule.name)
            for s in rule.sinks:
                if s not in self.sinks:
                    raise ValueError(f"rules[{i}] ({rule.name}): sinks names unknown sink {s!r}")
        return self

    def enabled_sinks(self) -> dict[str, SinkSettings]:
        """Return the sinks that get a topic and a worker."""
        return {n: s for n, s in self.sinks.items() if s.enabled}


def expand_env(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string; raise ConfigError if unset."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{where or '<root>'}: environment variable {name} is not set")

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: expand_env(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [expand_env(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _format_errors(err: ValidationError) -> str:
    """Return one line per problem, each naming its dotted key."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)


def parse_settings(raw: Any, env: Mapping[str, str] | None = None) -> Settings:
    """Validate an already-loaded YAML document; raise ConfigError naming the key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("<root>: the configuration must be a mapping of sections")
    expanded = expand_env(raw, os.environ if env is None else env)
    try:
        return Settings.model_validate(expanded)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_settings(path: Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read, expand and validate the YAML file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_settings(raw, env)
