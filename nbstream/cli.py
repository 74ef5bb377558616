"""The ``nbstream`` console script: one sub-command per stage and tool (DESIGN §8)."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbstream import __version__, gil
from nbstream.loader import config_path, load
from nbstream.logs import setup_logging
from schemas.config import ConfigError, Settings

if TYPE_CHECKING:
    from producers.ingest import IngestApp

__all__ = ["ingest_app", "main"]

log = logging.getLogger("nbstream")

DESCRIPTION = """\
nbstream: NetBox events on Kafka. NetBox webhooks are verified and published to the raw
topic (Avro); a Faust processor matches them against rules and routes them to one topic per
sink; sink workers deliver them (webhook, file, ...) with retries and per-object order.

Configuration: one YAML file (--config, $NBSTREAM_CONFIG, or ./nbstream.yaml) with ${VAR} and
${VAR:-default} expanded from the environment. See the README for every key.
"""

EPILOG = """\
examples:
  nbstream up                         run broker, ingest, processor and sinks in the foreground
  nbstream replay fixtures.jsonl      post captured NetBox webhooks to the running ingest
  nbstream tail netbox.sink.demo --from-beginning
  nbstream rules test event.json      which rules and sinks would this payload reach, and why
  nbstream dlq replay hook --since 2h re-deliver the last two hours' dead letters of sink hook
"""


def _settings(args: argparse.Namespace) -> Settings:
    """Load the configuration named on the command line (exits 2 with the key on error)."""
    settings: Settings = args.settings
    return settings


def cmd_up(args: argparse.Namespace) -> int:
    """Run the whole pipeline in the foreground."""
    from nbstream.admin import ensure_topics
    from nbstream.kafka_local import BrokerError
    from nbstream.supervisor import Supervisor

    settings = _settings(args)
    broker = _broker(settings) if settings.kafka.is_embedded else None
    if broker is not None:
        print(f"starting embedded Kafka {broker.version} on {broker.bootstrap_servers} ...",
              flush=True)
        try:
            broker.start()
        except BrokerError as err:
            print(f"nbstream up: {err}", file=sys.stderr)
            return 1
    code = 1
    try:
        created = ensure_topics(settings)
        print(f"topics ready ({len(created)} created) under prefix "
              f"{settings.kafka.topic_prefix!r}", flush=True)
        sup = Supervisor()
        base = [sys.executable, "-m", "nbstream", "--config", str(args.config_path.resolve()),
                "--log-level", args.log_level, "--log-format", args.log_format]
        sup.start("ingest", [*base, "ingest"])
        sup.start("processor", [*base, "process"])
        for name in settings.enabled_sinks():
            sup.start(f"sink {name}", [*base, "sink", name])
        d = settings.dashboard
        if d.port:
            sup.start("dashboard", [*base, "dashboard"])
        i = settings.ingest
        print(f"\nnbstream {__version__} is up. Send NetBox webhooks to:\n"
              f"    http://{i.host}:{i.port}/webhook\n"
              f"  health  http://{i.host}:{i.port}/healthz   metrics http://{i.host}:{i.port}"
              f"/metrics\n  sinks   {', '.join(settings.enabled_sinks()) or '(none)'}\n"
              + (f"  lag dashboard  http://{d.host}:{d.port}/\n" if d.port else "")
              + "Press Ctrl-C to stop.\n", flush=True)
        code = sup.wait()
    finally:
        if broker is not None:
            print("stopping embedded Kafka ...", flush=True)
            broker.stop()
    print("nbstream stopped.", flush=True)
    return code


def cmd_ingest(args: argparse.Namespace) -> int:
    """Run the webhook receiver under uvicorn."""
    import os

    import uvicorn

    settings = _settings(args)
    os.environ["NBSTREAM_CONFIG"] = str(args.config_path.resolve())
    uvicorn.run("nbstream.cli:ingest_app", factory=True, host=settings.ingest.host,
                port=args.port or settings.ingest.port,
                workers=args.workers or settings.ingest.workers,
                log_level=args.log_level.lower(), access_log=False, timeout_graceful_shutdown=10)
    return 0


def ingest_app() -> IngestApp:
    """Return the ingest app for uvicorn: its worker processes start here, not in ``main``."""
    from producers.ingest import app_factory

    gil.tune()
    return app_factory()


def cmd_process(args: argparse.Namespace) -> int:
    """Run the Faust rule processor; its /metrics also carries its group's consumer lag."""
    from prometheus_client import CollectorRegistry

    from nbstream.lag import GroupLagCollector, groups_of
    from processors.worker import run_processor

    settings = _settings(args)
    registry = CollectorRegistry()
    registry.register(GroupLagCollector(settings, [g for g in groups_of(settings)
                                                   if g.sink is None]))
    run_processor(settings, __version__, loglevel="warn", registry=registry)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    """Run the delivery worker of one sink."""
    from sinks.worker import run_sink

    settings = _settings(args)
    if args.name not in settings.enabled_sinks():
        print(f"nbstream sink: no enabled sink named {args.name!r} "
              f"(configured: {', '.join(settings.sinks) or 'none'})", file=sys.stderr)
        return 2
    code: int = run_sink(settings, args.name, __version__)
    return code


def _broker(settings: Settings) -> Any:
    """Return the LocalBroker described by ``kafka.embedded``."""
    from nbstream.kafka_local import LocalBroker

    e = settings.kafka.embedded
    return LocalBroker(data_dir=e.data_dir.resolve(), version=e.version, host=e.host,
                       port=e.port, controller_port=e.controller_port, heap=e.heap)


def cmd_kafka(args: argparse.Namespace) -> int:
    """Install, start, stop or inspect the local broker."""
    from nbstream.kafka_local import BrokerError, install

    broker = _broker(_settings(args))
    try:
        if args.action == "install":
            print(f"Apache Kafka {broker.version} jars in {install(broker.version)}")
        elif args.action == "start":
            pid = broker.start()
            print(f"Kafka {broker.version} serving on {broker.bootstrap_servers} (pid {pid}, "
                  f"data {broker.data_dir}, log {broker.log_file})")
        elif args.action == "stop":
            print("stopped" if broker.stop() else "not running")
        else:
            pid = broker.running_pid()
            print(f"running (pid {pid}) on {broker.bootstrap_servers}" if pid else "not running")
            return 0 if pid else 1
    except BrokerError as err:
        print(f"nbstream kafka {args.action}: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    """Create the topics the configuration needs."""
    from nbstream.admin import ensure_topics, topic_names

    settings = _settings(args)
    created = set(ensure_topics(settings))
    for name, parts in topic_names(settings).items():
        print(f"{name:50s} {parts:3d} partitions  {'created' if name in created else 'exists'}")
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    """Check the rules, or show which rules and sinks an event would reach."""
    from nbstream.rules_cmd import check, explain

    settings = _settings(args)
    if args.action == "check":
        return check(settings)
    if not args.event:
        print("nbstream rules test: give the path of a NetBox webhook payload (JSON)",
              file=sys.stderr)
        return 2
    return explain(settings, Path(args.event))


def cmd_tail(args: argparse.Namespace) -> int:
    """Print decoded records of a topic."""
    from nbstream.tail import tail

    tail(_settings(args), args.topic, from_beginning=args.from_beginning,
         max_records=args.max, idle_timeout=args.idle_timeout)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Post captured NetBox payloads to ingest, signed with the configured secret."""
    from nbstream.replay import load_bodies, replay

    settings = _settings(args)
    i = settings.ingest
    url = args.url or f"http://{i.host}:{i.port}/webhook"
    secrets = settings.netbox.webhook_secrets
    secret = secrets[0].get_secret_value() if secrets else None
    bodies = load_bodies(Path(args.file))
    statuses = replay(bodies, url, secret)
    summary = ", ".join(f"{n}× {code}" for code, n in sorted(statuses.items()))
    print(f"posted {len(bodies)} payloads to {url}: {summary}")
    return 0 if set(statuses) == {202} else 1


def _since(value: str) -> datetime:
    """Parse ``--since``: ISO 8601 (UTC if no zone) or a duration ago like ``30m``, ``2h``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither ISO 8601 nor a duration like 30m, 2h, 1d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def cmd_dlq(args: argparse.Namespace) -> int:
    """List or replay a sink's dead letters."""
    from nbstream.dlq import list_letters, replay_letters

    settings = _settings(args)
    if args.sink not in settings.sinks:
        print(f"nbstream dlq: no sink named {args.sink!r}", file=sys.stderr)
        return 2
    if args.action == "list":
        list_letters(settings, args.sink, args.json)
        return 0
    return replay_letters(settings, args.sink, args.since, args.egress_id or (), args.dry_run)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the live lag dashboard until Ctrl-C/SIGTERM."""
    import signal
    import threading

    from nbstream.dashboard import serve_dashboard

    settings = _settings(args)
    conf = settings.dashboard.model_copy(update={
        k: v for k, v in (("host", args.host), ("port", args.port), ("interval", args.interval),
                          ("window", args.window)) if v is not None})
    settings = settings.model_copy(update={"dashboard": conf})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"nbstream dashboard on http://{conf.host}:{conf.port}/ (Ctrl-C stops)", flush=True)
    serve_dashboard(settings, stop=stop)
    return 0


def cmd_lag(args: argparse.Namespace) -> int:
    """Show lag and status of every nbstream consumer group."""
    from nbstream.lag import run_lag

    return run_lag(_settings(args), as_json=args.json, watch=args.watch, window=args.window,
                   interval=args.interval)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every sub-command."""
    p = argparse.ArgumentParser(prog="nbstream", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"nbstream {__version__}")
    p.add_argument("--config", "-c", help="YAML config (default $NBSTREAM_CONFIG or "
                   "./nbstream.yaml)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["json", "text"],
                   help="json = one structured object per line (for log shippers)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Any, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        return sp

    add("up", cmd_up, "run the whole pipeline in the foreground: the embedded broker (when "
        "bootstrap_servers is 'embedded'), topics, ingest, processor and one worker per sink; "
        "Ctrl-C/SIGTERM stops everything cleanly")
    sp = add("ingest", cmd_ingest, "run the webhook receiver (POST /webhook, /healthz, /readyz, "
             "/metrics) under uvicorn")
    sp.add_argument("--workers", type=int, help="uvicorn worker processes (default: config)")
    sp.add_argument("--port", type=int, help="listen port (default: ingest.port)")
    add("process", cmd_process, "run the Faust rule processor (raw topic -> sink topics)")
    sp = add("sink", cmd_sink, "run the delivery worker of one sink")
    sp.add_argument("name", help="sink name from the config's sinks section")
    sp = add("kafka", cmd_kafka, "manage the local single-node Apache Kafka (KRaft) broker, "
             "fetched from Maven Central into ~/.cache/nbstream")
    sp.add_argument("action", choices=["install", "start", "stop", "status"])
    add("topics", cmd_topics, "create the raw, invalid, sink and dead-letter topics")
    sp = add("rules", cmd_rules, "validate the configuration ('check') or show which rules and "
             "sinks a NetBox payload reaches and why ('test EVENT.json')")
    sp.add_argument("action", choices=["check", "test"])
    sp.add_argument("event", nargs="?", help="for 'test': a NetBox webhook payload (JSON file)")
    sp = add("tail", cmd_tail, "decode a topic's records (Avro single-object or Confluent "
             "wire format) and print them as JSON lines")
    sp.add_argument("topic")
    sp.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    sp.add_argument("--max", type=int, help="stop after this many records")
    sp.add_argument("--idle-timeout", type=float, help="stop after this many idle seconds")
    sp = add("lag", cmd_lag, "lag of the processor's and every sink's consumer group: committed "
             "and end offsets, lag in messages and seconds, and a Burrow-style status per "
             "partition and group (OK, WARN, STALL, STOP, REWIND) over a sliding window; exits "
             "1 when any group is not OK")
    sp.add_argument("--json", action="store_true", help="one JSON document per report")
    sp.add_argument("--watch", action="store_true", help="keep observing and reporting")
    sp.add_argument("--window", type=float, default=10.0,
                    help="seconds of observations a status is judged on (default 10)")
    sp.add_argument("--interval", type=float, default=2.0,
                    help="seconds between observations (default 2)")
    sp = add("dashboard", cmd_dashboard, "serve a live page of every group's lag in messages "
             "and seconds over time, delivery rate, errors, dead letters and status; "
             "/api/state is its JSON, /metrics its status gauges (for alert rules)")
    sp.add_argument("--host", help="listen address (default: dashboard.host)")
    sp.add_argument("--port", type=int, help="listen port (default: dashboard.port, 8090)")
    sp.add_argument("--interval", type=float, help="seconds between observations (default 2)")
    sp.add_argument("--window", type=float, help="seconds a status is judged on (default 30)")
    sp = add("dlq", cmd_dlq, "inspect ('list') or re-deliver ('replay') a sink's dead letters; "
             "a replay keeps each record's egress_id, so receivers can deduplicate")
    sp.add_argument("action", choices=["list", "replay"])
    sp.add_argument("sink", help="sink name")
    sp.add_argument("--json", action="store_true", help="list: one JSON object per letter")
    sp.add_argument("--since", type=_since, help="replay: only letters whose last failure is at "
                    "or after this time (ISO 8601, or a duration ago such as 30m, 2h, 1d)")
    sp.add_argument("--egress-id", action="append", help="replay: only this egress id "
                    "(repeatable)")
    sp.add_argument("--dry-run", action="store_true", help="replay: show what would be sent")
    sp = add("replay", cmd_replay, "post NetBox webhook payloads (a captured .jsonl, or one "
             ".json payload) to ingest, signed with the first configured webhook secret")
    sp.add_argument("file")
    sp.add_argument("--url", help="ingest URL (default: from the ingest section)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    gil.tune()
    setup_logging(args.log_level, args.log_format, process=args.command)
    args.config_path = config_path(args.config)
    try:
        if args.config_path.exists() or args.config is not None:
            args.settings = load(args.config_path)
        else:
            args.settings = _default_settings()
    except ConfigError as err:
        print(f"nbstream: invalid configuration {args.config_path}: {err}", file=sys.stderr)
        return 2
    code: int = args.func(args)
    return code


def _default_settings() -> Settings:
    """Settings when no config file exists: the embedded broker, no sinks, no rules."""
    from schemas.config import parse_settings

    return parse_settings({})


if __name__ == "__main__":
    sys.exit(main())
