"""The sink registry: lazy type lookup, settings validated with errors naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from schemas.config import SinkSettings
from sinks.base import SinkConfigError, SinkContext
from sinks.file import FileSettings, FileSink
from sinks.registry import (
    SINK_TYPES,
    create_sink,
    load_sink_class,
    sink_retry_policy,
    validate_sink_settings,
)
from sinks.webhook import WebhookSettings, WebhookSink


def sink(**fields: object) -> SinkSettings:
    """Return a sink section as the config loader would."""
    return SinkSettings.model_validate(fields)


def test_builtin_types_resolve() -> None:
    """file and webhook are importable without extras."""
    assert load_sink_class("webhook") is WebhookSink
    assert load_sink_class("file") is FileSink
    assert {"webhook", "file", "sns", "pubsub", "servicebus", "mqtt"} <= set(SINK_TYPES)


def test_registry_imports_nothing_until_asked() -> None:
    """Importing the registry does not import any sink module (optional SDKs stay unloaded)."""
    code = "import sys, sinks.registry; print(any(m in sys.modules for m in " \
           "('sinks.webhook', 'sinks.file', 'aiohttp')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_type_names_the_key_and_the_known_types() -> None:
    """An unknown type is an error at sinks.<name>.type listing what exists."""
    with pytest.raises(SinkConfigError, match=r"sinks\.x\.type: unknown sink type 'kafka'.*"
                                              r"file, mqtt, pubsub, servicebus, sns, webhook"):
        validate_sink_settings("x", sink(type="kafka"))


@pytest.mark.parametrize(("type_", "sdk"), [("sns", "boto3"), ("pubsub", "google.pubsub_v1"),
                                            ("servicebus", "azure.servicebus"),
                                            ("mqtt", "paho")])
def test_unavailable_type_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, type_: str, sdk: str
) -> None:
    """A type whose SDK is missing says which extra installs it (the SDK is hidden here)."""
    # None in sys.modules makes an import raise ImportError; hide the SDK's already-loaded
    # submodules too, which would otherwise be returned without touching the parent.
    for name in [m for m in sys.modules if m == sdk or m.startswith(sdk + ".")] + [sdk]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, f"sinks.{type_}", raising=False)
    with pytest.raises(SinkConfigError, match=rf"sinks\.alerts\.type: .*nbstream\[{type_}\]"):
        validate_sink_settings("alerts", sink(type=type_))


def test_valid_settings_become_the_sinks_model() -> None:
    """Sink-specific fields are validated by the sink's own model; shared ones are left out."""
    options = validate_sink_settings("hooks", sink(
        type="webhook", batch_size=10, payload_url="https://h/x", secret="s",
        retry={"max_attempts": 3}))
    assert isinstance(options, WebhookSettings)
    assert options.payload_url == "https://h/x" and options.http_method == "POST"


@pytest.mark.parametrize(("fields", "key"), [
    ({"type": "webhook"}, r"sinks\.hooks\.payload_url: Field required"),
    ({"type": "webhook", "payload_url": "https://h", "http_method": "TRACE"},
     r"sinks\.hooks\.http_method"),
    ({"type": "webhook", "payload_url": "https://h", "timeout": 0}, r"sinks\.hooks\.timeout"),
    ({"type": "webhook", "payload_url": "https://h", "paylod": 1}, r"sinks\.hooks\.paylod"),
    ({"type": "file"}, r"sinks\.hooks\.path"),
])
def test_invalid_settings_name_the_key(fields: dict[str, object], key: str) -> None:
    """Every problem names sinks.<name>.<field>; the error is a ValueError for the loader."""
    with pytest.raises(ValueError, match=key):
        validate_sink_settings("hooks", sink(**fields))


def test_retry_section_is_the_runners() -> None:
    """``retry`` configures the runner's policy and is not passed to the sink's model."""
    settings = sink(type="file", path="/tmp/x", retry={"max_attempts": 2})  # noqa: S108
    assert isinstance(validate_sink_settings("a", settings), FileSettings)
    assert sink_retry_policy("a", settings).max_attempts == 2
    with pytest.raises(SinkConfigError, match=r"sinks\.a\.retry\.bogus"):
        sink_retry_policy("a", sink(type="file", path="x", retry={"bogus": 1}))


def test_create_sink_builds_an_unopened_sink() -> None:
    """create_sink validates and constructs with the given context."""
    context = SinkContext(environment="test", sink="a")
    made = create_sink("a", sink(type="file", path="out.jsonl"), context)
    assert isinstance(made, FileSink) and made.name == "a" and made.context is context
