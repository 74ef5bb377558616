"""Configuration: ${VAR} expansion, typed validation, errors that name the key, secret hiding."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.config import ConfigError, load_settings, parse_settings

SINKS = {"hook": {"type": "webhook", "payload_url": "http://127.0.0.1:9/x"}}


def test_defaults_are_the_embedded_pipeline() -> None:
    """An empty file is valid: embedded broker, netbox. prefix, 6 partitions, no sinks."""
    s = parse_settings({}, env={})
    assert s.kafka.is_embedded and s.kafka.servers == "127.0.0.1:19092"
    assert (s.kafka.topic_prefix, s.kafka.partitions, s.sinks, s.rules) == ("netbox.", 6, {}, ())


def test_env_expansion_with_and_without_default() -> None:
    """${VAR} takes the environment; ${VAR:-x} falls back to x; secrets stay secret."""
    s = parse_settings({"netbox": {"id": "${NB_ID}", "webhook_secrets": ["${S1:-dflt}", "${S2}"]},
                        "environment": "${ENV:-staging}"}, env={"NB_ID": "nb-7", "S2": "two"})
    assert s.netbox.id == "nb-7" and s.environment == "staging"
    assert [x.get_secret_value() for x in s.netbox.webhook_secrets] == ["dflt", "two"]
    assert "dflt" not in repr(s) and "two" not in repr(s)


@pytest.mark.parametrize(("raw", "key"), [
    ({"kafka": {"partitions": 0}}, "kafka.partitions"),
    ({"kafka": {"bootstrap_servers": "not a host"}}, "kafka.bootstrap_servers"),
    ({"ingest": {"port": "eighty"}}, "ingest.port"),
    ({"ingest": {"max_body_bytes": 10}}, "ingest.max_body_bytes"),
    ({"kafka": {"partitoins": 3}}, "kafka.partitoins"),
    ({"netbox": {"webhook_secrets": ["${UNSET_SECRET}"]}}, "netbox.webhook_secrets[0]"),
    ({"sinks": {"bad name!": {"type": "webhook"}}}, "sinks"),
    ({"sinks": {"x": {"batch_size": 5}}}, "sinks.x.type"),
    ({"sinks": SINKS, "rules": [{"name": "r", "sinks": ["nope"]}]}, "rules[0] (r)"),
    ({"sinks": SINKS, "rules": [{"name": "r", "sinks": []}]}, "rules.0.sinks"),
    ({"sinks": SINKS, "rules": [{"name": "r", "sinks": ["hook"], "object_types": ["Device"]}]},
     "rules.0.object_types"),
    ({"sinks": SINKS, "rules": [{"name": "r", "sinks": ["hook"],
                                 "event_types": ["object_renamed"]}]}, "rules.0.event_types.0"),
    ({"sinks": SINKS, "rules": [{"name": "r", "sinks": ["hook"]},
                                {"name": "r", "sinks": ["hook"]}]}, "duplicate rule name"),
    ({"processor": {"session_timeout": 3}}, "heartbeat_interval (3.0) must be below"),
])
def test_errors_name_the_key(raw: dict[str, object], key: str) -> None:
    """Each bad value is reported with its dotted key."""
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, env={})
    assert key in str(err.value)


def test_file_errors(tmp_path: Path) -> None:
    """Missing files and broken YAML are ConfigErrors naming the file."""
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_settings(listy)
