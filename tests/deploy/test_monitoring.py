"""The monitoring shipped in deploy/: Prometheus config and alert rules (checked and unit-tested by
the real promtool, then loaded by a real Prometheus scraping a real dashboard), and the Grafana
dashboard (only documented metrics, the provisioned datasource)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka import Producer

from nbstream.admin import ensure_topics
from nbstream.kafka_local import LocalBroker
from schemas.config import parse_settings
from schemas.topics import Topics
from tests.conftest import free_port
from tests.e2e.harness import nbstream_processes
from tests.e2e.test_metrics import documented
from tests.sinks.records import produce_records, synthetic_record

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
METRIC = re.compile(r"\b(nbstream_[a-z_]+?)(?:_bucket|_count|_sum)?\b")


def tool(name: str) -> str:
    """Return the path of a Prometheus binary (installed by `make test`)."""
    path = shutil.which(name)
    assert path, f"{name} is installed by `make test` (scripts/ensure-system-deps.sh)"
    return path


def test_promtool_checks_the_config_and_the_alert_rules_pass_their_unit_tests() -> None:
    """Each alert fires on the series that should raise it, after its `for`, and only then."""
    check = subprocess.run([tool("promtool"), "check", "config", "prometheus.yml"],
                           cwd=PROMETHEUS, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "6 rules found" in check.stdout + check.stderr
    test = subprocess.run([tool("promtool"), "test", "rules", "alerts.test.yml"],
                          cwd=PROMETHEUS, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr


def test_prometheus_scrapes_every_compose_service_on_its_configured_port() -> None:
    """Every nbstream service of docker-compose.yml is a scrape target at the port its config
    serves metrics on."""
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    targets = {t for job in scrape for sc in job["static_configs"] for t in sc["targets"]}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    conf = yaml.safe_load((ROOT / "deploy" / "nbstream.compose.yaml").read_text())
    want = {f"ingest:{conf['ingest']['port']}", f"processor:{conf['processor']['web_port']}",
            f"dashboard:{conf['dashboard']['port']}"}
    want |= {f"sink-{n}:{s['metrics_port']}" for n, s in conf["sinks"].items()}
    assert targets == want
    assert {t.split(":")[0] for t in targets} <= set(compose)
    for service in ("prometheus", "grafana"):
        assert service in compose
    assert "./deploy/prometheus:/etc/prometheus:ro" in compose["prometheus"]["volumes"]


def test_grafana_dashboard_uses_documented_metrics_and_the_provisioned_datasource() -> None:
    """Every query names only metrics the README documents; lag, status, rates and errors are
    all on it; every panel uses the provisioned Prometheus."""
    dash = json.loads((GRAFANA / "dashboards" / "nbstream.json").read_text())
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" /
                             "prometheus.yml").read_text())["datasources"][0]
    known = set().union(*documented().values())
    used: set[str] = set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            names = set(METRIC.findall(target["expr"]))
            assert names and names <= known, (panel["title"], names - known)
            used |= names
    for needed in ("nbstream_consumer_lag_messages", "nbstream_consumer_lag_seconds",
                   "nbstream_consumer_group_status", "nbstream_sink_delivered_total",
                   "nbstream_sink_failed_total", "nbstream_sink_dead_lettered_total"):
        assert needed in used, needed
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" /
                               "nbstream.yml").read_text())["providers"][0]
    grafana = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


def query(port: int, promql: str) -> list[dict[str, Any]]:
    """Return the result vector of an instant query."""
    doc = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql},
                    timeout=5).json()
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


@pytest.mark.kafka
def test_real_prometheus_scrapes_the_dashboard_and_raises_the_stop_alert(
    kafka_broker: LocalBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """A sink with a backlog and no worker: the dashboard says STOP (3), a real Prometheus
    scrapes it, and NbstreamConsumerStopped goes pending with the group's labels."""
    dash_port, prom_port = free_port(), free_port()
    config = {
        "kafka": {"bootstrap_servers": kafka_broker.bootstrap_servers,
                  "topic_prefix": topic_prefix, "partitions": 1},
        "sinks": {"idle": {"type": "file", "path": str(tmp_path / "idle.jsonl")}},
        "dashboard": {"port": dash_port, "interval": 0.5, "window": 3},
    }
    ensure_topics(parse_settings(config, env={}))
    topics = Topics(topic_prefix)
    produce_records(Producer({"bootstrap.servers": kafka_broker.bootstrap_servers}),
                    topics.sink("idle"), (synthetic_record(obj, 1, "idle") for obj in range(5)))

    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{"job_name": "nbstream-dashboard",
                            "static_configs": [{"targets": [f"127.0.0.1:{dash_port}"]}]}],
    }))
    with nbstream_processes(config, tmp_path, ["dashboard"]), \
            (tmp_path / "prometheus.log").open("wb") as log:
        prom = subprocess.Popen(
            [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            alerts: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not alerts:
                assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                time.sleep(1)
                try:
                    alerts = query(prom_port, 'ALERTS{alertname="NbstreamConsumerStopped"}')
                except httpx.HTTPError:
                    continue
            status = query(prom_port, "nbstream_consumer_group_status")
        finally:
            prom.terminate()
            prom.wait(timeout=30)
    group = topics.sink_group("idle")
    assert {(s["metric"]["group"], s["value"][1]) for s in status} >= {(group, "3")}, status
    assert alerts, "NbstreamConsumerStopped never went pending"
    labels = alerts[0]["metric"]
    assert labels["group"] == group and labels["role"] == "sink idle"
    assert labels["alertstate"] in ("pending", "firing") and labels["severity"] == "critical"
