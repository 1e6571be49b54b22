"""``ccpulse``: the operator's command line (OPERATIONS.md).

Every command turns a wrong setting or an unreachable service into one line on
stderr and a non-zero exit, never a traceback.

The top layer: it wires the worker (``streams``), the user commands
(``ccpulse.commands``) and the developer tools (``ccpulse.tools``) into one parser;
none of them imports it back (tests/test_structure.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from ccpulse.commands import arguments
from ccpulse.commands.errors import CommandError
from ccpulse.commands.preflight import check_clickhouse_reachable, check_web_port
from ccpulse.config import ConfigError, Settings, load_settings


def _settings() -> Settings:
    return load_settings()


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    check_web_port(settings)
    if args.role != "compute":
        check_clickhouse_reachable(settings)
    from sinks.clickhouse import ClickHouseUnavailable
    from streams.app import create_app
    from streams.topics import KafkaUnavailable, PartitionMismatch, ensure_topics

    try:
        ensure_topics(settings)
    except (KafkaUnavailable, PartitionMismatch) as exc:
        raise CommandError(str(exc)) from None
    Path(settings.state_dir, "faust").mkdir(parents=True, exist_ok=True)
    if args.role == "writer" and not settings.clickhouse.enabled:
        raise CommandError("--role writer: ClickHouse is disabled in the settings ([clickhouse] enabled = false)")
    app = create_app(settings, args.role)
    writer = app.pipeline.writer  # type: ignore[attr-defined]
    if writer is not None:
        try:
            writer.open()
        except ClickHouseUnavailable as exc:
            raise CommandError(str(exc)) from None
    import faust

    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True)
    # Faust's progress spinner sets the root logger to DEBUG, which makes every
    # debug call in aiokafka and Faust build a record: a tenth of the worker's time.
    worker.spinner = None
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    finally:
        if writer is not None:
            writer.close()
        sys.stdout.flush()
        sys.stderr.flush()
        # Faust has stopped every service and committed by now, but aiokafka's
        # consumer thread can outlive the loop and keep the interpreter alive.
        os._exit(code)
    return code


def cmd_simulate(args: argparse.Namespace) -> int:
    from ccpulse.commands import simulate, simulate_channels

    settings = _settings()
    try:
        cfg, duration, speed = simulate.config_from_args(args)
        channels = {c.strip() for c in args.channels.split(",") if c.strip()}
        unknown = channels - {"voice", "chat", "ticket"}
        if unknown or not channels:
            raise ValueError(f"--channels: {','.join(sorted(unknown)) or 'nothing'} is not voice, chat or ticket")
        if args.scenario:
            from ccpulse.commands import scenarios
            voice, chat, ticket = scenarios.configs_from_args(args, seed=cfg.seed, start=cfg.start)
        else:
            voice = cfg
            chat = simulate_channels.ChatConfig(rate=args.chat_rate, seed=cfg.seed, start=cfg.start)
            ticket = simulate_channels.TicketConfig(rate=args.ticket_rate, seed=cfg.seed, start=cfg.start)
        voice, chat, ticket = (c if family in channels else None
                               for c, family in ((voice, "voice"), (chat, "chat"), (ticket, "ticket")))
        if voice is None and chat is None and ticket is None:
            raise ValueError(f"--scenario {args.scenario}: none of its channels is in --channels {args.channels}")
        events = simulate_channels.generate_mixed_events(voice, chat, ticket, duration)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    from ccpulse.commands.publish import input_topics, publish_events

    sent = asyncio.run(publish_events(settings, events, speed))
    print(f"published {sent} events to {', '.join(input_topics(settings).values())}", file=sys.stderr)
    return 0


def cmd_kafka(args: argparse.Namespace) -> int:
    from ccpulse.commands import local_kafka

    settings = _settings()
    state = Path(settings.state_dir) / "kafka"
    try:
        if args.action == "start":
            info = local_kafka.start(state, port=args.port, fresh=args.fresh)
            print(info.bootstrap)
            print(f"broker pid {info.pid}, log {info.log_path}; "
                  f"export CCPULSE_KAFKA_BOOTSTRAP={info.bootstrap}", file=sys.stderr)
        elif args.action == "stop":
            stopped = local_kafka.stop(state)
            print("stopped" if stopped else "no local broker was running", file=sys.stderr)
        else:
            info = local_kafka.status(state)
            if info is None:
                print("no local broker running", file=sys.stderr)
                return 1
            print(info.bootstrap)
    except local_kafka.LocalKafkaError as exc:
        raise CommandError(str(exc)) from None
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    """Write (or --check) the Prometheus SLA rules generated from the config's [targets]."""
    from ccpulse.alert_rules import generate

    text = generate(_settings())
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    if args.check:
        try:
            current = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if current != text:
            raise CommandError(f"{path} is out of date with the config's [targets]: run `ccpulse rules`")
        print(f"{path} is up to date", file=sys.stderr)
        return 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"{path}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ccpulse.commands.demo import run_demo

    return run_demo(_settings(), duration=args.duration, rate=args.rate, agents=args.agents,
                    scenario=args.scenario, scenarios_file=args.scenarios_file)


class OneLineParser(argparse.ArgumentParser):
    """Refuses a wrong argument in one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def tcp_port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ccpulse.commands import simulate

    parser = OneLineParser(prog="ccpulse", description="Real-time contact-center KPIs.")
    sub = parser.add_subparsers(dest="command", required=True)

    # Every argument is checked by its type here, before a command starts anything.
    demo = sub.add_parser("demo", help="run broker, worker, embedded ClickHouse and simulator together")
    demo.add_argument("--duration", type=arguments.positive_float, default=None, help="stop after this many seconds")
    demo.add_argument("--rate", type=arguments.positive_float, default=1.0,
                      help="calls per second (default %(default)s)")
    demo.add_argument("--agents", type=arguments.positive_int, default=26, help="agents per queue (default %(default)s)")
    from ccpulse.commands import scenarios as demo_scenarios

    demo_scenarios.add_scenario_argument(demo)
    demo.set_defaults(func=cmd_demo)

    worker = sub.add_parser("worker", help="the Faust worker (all agents)")
    worker.add_argument("--role", default="all", choices=["all", "compute", "writer"],
                        help="all stages (default); compute: no ClickHouse writes; writer: only the "
                             "ClickHouse writes (run one next to compute workers on the embedded store)")
    worker.add_argument("--loglevel", default="warn", choices=["crit", "error", "warn", "info", "debug"])
    worker.set_defaults(func=cmd_worker)

    sim = sub.add_parser("simulate", help="publish realistic call, chat and ticket events")
    simulate.add_arguments(sim)
    from ccpulse.commands import scenarios

    scenarios.add_scenario_argument(sim)
    sim.add_argument("--channels", default="voice,chat,ticket",
                     help="which channels to simulate (default %(default)s)")
    sim.add_argument("--chat-rate", type=arguments.positive_float, default=0.5,
                     help="chats per second (default %(default)s)")
    sim.add_argument("--ticket-rate", type=arguments.positive_float, default=0.2,
                     help="tickets per second (default %(default)s)")
    sim.set_defaults(func=cmd_simulate)

    from ccpulse.commands import replay

    rep = sub.add_parser("replay", help="publish a historical export as lifecycle events")
    replay.add_arguments(rep)
    rep.set_defaults(func=lambda args: replay.run_from_args(args, _settings()))

    kafka = sub.add_parser("kafka", help="the local single-node Kafka broker")
    kafka.add_argument("action", choices=["start", "stop", "status"])
    kafka.add_argument("--port", type=tcp_port, default=None, help="listener port (default 9092 if free)")
    kafka.add_argument("--fresh", action="store_true", help="wipe the broker's data first")
    kafka.set_defaults(func=cmd_kafka)

    from ccpulse.alert_rules import DEFAULT_PATH

    rules = sub.add_parser("rules", help="write the Prometheus SLA rules generated from the config's [targets]")
    rules.add_argument("--output", default=DEFAULT_PATH, help="where to write them, - for stdout "
                       "(default %(default)s)")
    rules.add_argument("--check", action="store_true",
                       help="only check that the file is up to date (exit 1 if not)")
    rules.set_defaults(func=cmd_rules)

    from ccpulse.commands import connect
    connect.add_parser(sub, _settings)

    from ccpulse.tools import bench
    bench.add_parser(sub)
    from ccpulse.tools import chaos
    chaos.add_parser(sub)
    from ccpulse.tools import same_day
    same_day.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CommandError, ValueError) as exc:
        print(f"ccpulse {args.command}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # `python -m ccpulse.cli` (the demo's and the tests' way) runs this file as __main__;
    # CommandError lives in ccpulse.commands.errors, so every command raises this copy's.
    sys.exit(main())
