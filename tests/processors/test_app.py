"""The processor's Faust app takes its settings from nbstream's configuration only."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.app import create_app
from schemas.config import parse_settings


def test_faust_environment_variables_do_not_override_the_configuration(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Names Faust reads by default; BROKER_URL is also Celery's.
    monkeypatch.setenv("BROKER_URL", "kafka://elsewhere.invalid:9092")
    monkeypatch.setenv("APP_DATADIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("BROKER_COMMIT_INTERVAL", "99")
    monkeypatch.setenv("TOPIC_PARTITIONS", "1")
    monkeypatch.setenv("BROKER_SESSION_TIMEOUT", "120")
    settings = parse_settings({
        "kafka": {"bootstrap_servers": "10.0.0.1:9092,10.0.0.2:9093", "topic_prefix": "t.",
                  "partitions": 6},
        "netbox": {"id": "nb"},
        "processor": {"data_dir": str(tmp_path / "processor"), "commit_interval": 0.5,
                      "session_timeout": 8, "heartbeat_interval": 1},
    }, env={})

    conf = create_app(settings).conf

    assert [str(url) for url in conf.broker] == ["kafka://10.0.0.1:9092",
                                                  "kafka://10.0.0.2:9093"]
    assert Path(conf.datadir) == tmp_path / "processor"
    assert conf.broker_commit_interval == 0.5
    assert conf.topic_partitions == 6
    assert (conf.broker_session_timeout, conf.broker_heartbeat_interval) == (8, 1)
