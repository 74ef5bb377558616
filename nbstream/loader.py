"""Loads and fully validates a configuration: shape (schemas), sink fields (sinks), rules."""

from __future__ import annotations

import os
from pathlib import Path

from schemas.config import ConfigError, Settings, load_settings

__all__ = ["DEFAULT_CONFIG", "config_path", "load"]

DEFAULT_CONFIG = Path("nbstream.yaml")


def config_path(cli_value: str | None) -> Path:
    """Return the config path: ``--config``, else ``$NBSTREAM_CONFIG``, else ``nbstream.yaml``."""
    return Path(cli_value or os.environ.get("NBSTREAM_CONFIG") or DEFAULT_CONFIG)


def load(path: Path) -> Settings:
    """Return validated Settings; raise ConfigError naming the key for any problem.

    Besides the shared shape, each sink's own fields are validated by its module, and every
    rule's conditions are built once, so a bad config fails here and not mid-stream.
    """
    from processors.rules import RuleEngine, RuleError
    from sinks.registry import validate_sink_settings

    settings = load_settings(path)
    for name, sink in settings.sinks.items():
        try:
            validate_sink_settings(name, sink)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    try:
        RuleEngine(settings.rules)
    except RuleError as err:
        raise ConfigError(str(err)) from None
    return settings
