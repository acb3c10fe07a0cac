"""The development commands of ``amili-registrar``: ``emulator``, ``kafka``, ``produce``, ``demo`` and
``chaos``.

``service.cli`` registers them on its parser when ``devkit`` is installed (``register``), so they
read as the service's own subcommands; their work is imported only when one of them runs, so that
building the parser stays cheap for every other command.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from service.config import Settings

COMMANDS = ("emulator", "kafka", "produce", "demo", "chaos")


def _emulator(args: argparse.Namespace) -> int:
    import uvicorn

    from devkit.emulator.app import create_app
    from devkit.emulator.settings import EmulatorSettings

    settings = EmulatorSettings()
    if args.port is not None:
        settings = settings.model_copy(update={"port": args.port})
    if args.store is not None:
        settings = settings.model_copy(update={"store_path": str(args.store)})
    # A held-back answer ("store, then never answer") must not hold the emulator's exit for long.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=settings.access_log,
        proxy_headers=False,  # it serves loopback only; no proxy to trust
        timeout_graceful_shutdown=5,
    )
    return 0


def _kafka(args: argparse.Namespace) -> int:
    from devkit.localkafka import LocalKafka, LocalKafkaError, default_version

    kafka = LocalKafka(name=args.name, version=args.version or default_version(), port=args.port)
    try:
        if args.action == "start":
            print(kafka.start())
        elif args.action == "stop":
            print("stopped" if kafka.stop() else "not running")
        else:
            status = kafka.status()
            if not status:
                print("not running")
                return 1
            print(" ".join(f"{key}={value}" for key, value in status.items()))
    except LocalKafkaError as error:
        print(f"amili-registrar kafka: {error}", file=sys.stderr)
        return 1
    return 0


def _produce(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from devkit.produce import create_missing_topics, produce
    from service.bootstrap import kafka_security
    from service.operator.event_files import read_events
    from service.operator.kafka_tools import quiet_aiokafka

    settings = Settings()
    try:
        events = read_events(args.file)
    except OSError as error:
        print(f"amili-registrar produce: cannot read {args.file}: {error.strerror or error}", file=sys.stderr)
        return 1
    except ValueError as error:  # JSONDecodeError included
        print(f"amili-registrar produce: {args.file} is not JSON or NDJSON: {error}", file=sys.stderr)
        return 1
    bootstrap = args.bootstrap or settings.kafka_bootstrap_servers
    topic = args.topic or settings.invoice_created_topic
    # The service refuses to start on missing topics (KAFKA_ALLOW_AUTO_CREATE_TOPICS): the topics
    # it reads and writes are made here, as an operator would make them.
    topics = {topic: 3, settings.registration_result_topic: 3, settings.dead_letter_topic: 1}
    # The service's own connection settings: KAFKA_SECURITY_PROTOCOL, TLS, SASL.
    _, security = kafka_security(settings)

    async def send() -> int:
        async with asyncio.timeout(args.timeout):
            for created in await create_missing_topics(bootstrap, topics, security=security):
                print(f"created topic {created}")
        return await produce(
            bootstrap, topic, events, binary=args.binary, timeout_seconds=args.timeout, security=security
        )

    # The failure is said once, below; aiokafka would say it again for every connection attempt.
    try:
        with quiet_aiokafka():
            sent = asyncio.run(send())
    except (KafkaError, OSError, TimeoutError) as error:
        reason = str(error) or error.__class__.__name__
        print(
            f"amili-registrar produce: Kafka at {bootstrap} did not take the events: {reason}",
            file=sys.stderr,
        )
        return 1
    print(f"sent {sent} event(s)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from devkit.demo import run_demo
    from devkit.localkafka import LocalKafkaError

    try:
        return asyncio.run(run_demo(kafka_version=args.kafka_version, events_file=args.file))
    except LocalKafkaError as error:
        print(f"amili-registrar demo: {error}", file=sys.stderr)
        return 1


def _chaos(args: argparse.Namespace) -> int:
    from devkit.chaos.run import ChaosError, ChaosOptions, run_chaos
    from devkit.localkafka import LocalKafkaError

    # The run's own broker unless one is named (--kafka-bootstrap, or KAFKA_BOOTSTRAP_SERVERS set).
    settings = Settings()
    configured = "kafka_bootstrap_servers" in settings.model_fields_set
    options = ChaosOptions(
        invoices=args.invoices,
        kill_every_min=args.kill_every_min,
        kill_every_max=args.kill_every_max,
        seed=args.seed,
        ledger=args.ledger,
        postgres_dsn=args.postgres_dsn,
        kafka_bootstrap=args.kafka_bootstrap or (settings.kafka_bootstrap_servers if configured else None),
        timeout_seconds=args.timeout,
        rate=args.rate,
        workdir=args.workdir,
        replicas=args.replicas,
        kills=not args.no_kills,
        broker_outage=args.broker_outage,
        outage_after=args.outage_after,
        outage_signal=args.outage_signal,
        conflict_share=args.conflicts,
        amili_faults=not args.no_amili_faults,
        transactions=args.transactions,
        freeze=args.freeze,
        freeze_after=args.freeze_after,
    )
    try:
        return asyncio.run(run_chaos(options))
    except (ChaosError, LocalKafkaError) as error:
        print(f"amili-registrar chaos: {error}", file=sys.stderr)
        return 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the development commands (``COMMANDS``, in that order) to ``amili-registrar``'s parser."""
    emulator = commands.add_parser(
        "emulator",
        help="run the Amili emulator",
        description="Serve the Amili emulator on loopback; configured by AMILI_EMULATOR_* env vars.",
    )
    emulator.add_argument("--port", type=int, help="port to listen on (AMILI_EMULATOR_PORT)")
    emulator.add_argument("--store", type=Path, help="file that keeps registrations across restarts")
    emulator.set_defaults(handler=_emulator)

    kafka = commands.add_parser(
        "kafka",
        help="start, stop or inspect a local Kafka broker",
        description="A single-node KRaft broker from Apache Kafka's jars (fetched once with Maven).",
    )
    kafka.add_argument("action", choices=["start", "stop", "status"])
    kafka.add_argument("--name", default="default", help="which local broker (default: default)")
    kafka.add_argument("--version", help="Apache Kafka version (LOCAL_KAFKA_VERSION, default 3.9.2)")
    kafka.add_argument("--port", type=int, default=9092, help="broker port on 127.0.0.1 (default 9092)")
    kafka.set_defaults(handler=_kafka)

    produce = commands.add_parser(
        "produce",
        help="send events from a JSON or NDJSON file",
        description="Send invoice-created events (CloudEvents, or bare invoices to wrap) to Kafka, "
        "connecting as the service does (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, TLS).",
    )
    produce.add_argument("file", type=Path, help="a JSON array, a JSON object or NDJSON")
    produce.add_argument("--topic", help="topic (default: INVOICE_CREATED_TOPIC)")
    produce.add_argument("--binary", action="store_true", help="CloudEvents binary mode (ce_* headers)")
    produce.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)")
    produce.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the broker (default 30)"
    )
    produce.set_defaults(handler=_produce)

    demo = commands.add_parser(
        "demo",
        help="run everything locally with sample invoices",
        description="Start a local broker, the emulator and the service; send sample invoices; "
        "print each result; stop everything.",
    )
    demo.add_argument("--kafka-version", help="Apache Kafka version for the local broker")
    demo.add_argument("--file", type=Path, help="events to send instead of the samples")
    demo.set_defaults(handler=_demo)

    chaos = commands.add_parser(
        "chaos",
        help="send many invoices while killing the service and injecting Amili faults",
        description="Send N invoices (5% re-sent, 1% poison) to a local broker while the service is "
        "SIGKILLed and restarted at random and the Amili emulator injects 5% 5xx, 2% store-then-timeout "
        "and 1% 429; then check one registration and one result per invoice and a dead letter per "
        "poison event. Optionally several replicas in one group, and a broker outage mid-run (the "
        "service's log lines and CPU meanwhile are checked). Exits 1 if a check fails.",
    )
    chaos.add_argument("--invoices", type=int, default=2000, help="invoices to send (default 2000)")
    chaos.add_argument(
        "--kill-every-min",
        type=float,
        default=2.0,
        help="shortest life of the service: s after its first work (default 2)",
    )
    chaos.add_argument(
        "--kill-every-max",
        type=float,
        default=6.0,
        help="longest life of the service: s after its first work (default 6)",
    )
    chaos.add_argument("--seed", type=int, default=1, help="seed of events, kills and faults (default 1)")
    chaos.add_argument("--ledger", choices=["sqlite", "postgres"], default="sqlite", help="default sqlite")
    chaos.add_argument(
        "--postgres-dsn", help="with --ledger postgres: a server to create a database in (default: local)"
    )
    chaos.add_argument(
        "--kafka-bootstrap", help="use this broker (default: KAFKA_BOOTSTRAP_SERVERS, else a local one)"
    )
    chaos.add_argument(
        "--timeout", type=float, default=1800.0, help="give up waiting for results after s (default 1800)"
    )
    chaos.add_argument("--rate", type=float, default=250.0, help="events sent per second (0: at once)")
    chaos.add_argument("--workdir", type=Path, help="where logs, ledger and Amili's store go (default: new)")
    chaos.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="service instances in one consumer group, each with its own log (default 1; more need "
        "--ledger postgres)",
    )
    chaos.add_argument(
        "--no-kills", action="store_true", help="never SIGKILL the service (a replica that exits is counted)"
    )
    chaos.add_argument(
        "--broker-outage",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop the run's own broker mid-run for this long, then start it again on the same port "
        "and data (default 0: none)",
    )
    chaos.add_argument(
        "--outage-after",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="when the outage starts, counted from the first result or dead letter (default 10)",
    )
    chaos.add_argument(
        "--outage-signal",
        choices=["term", "kill"],
        default="term",
        help="how the broker is stopped: SIGTERM (controlled shutdown) or SIGKILL (default term)",
    )
    chaos.add_argument(
        "--conflicts",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of invoices re-sent under their number with other content: a conflict result (default 0)",
    )
    chaos.add_argument(
        "--no-amili-faults",
        action="store_true",
        help="no 5xx, hangs or 429 at the emulator (its latency stays)",
    )
    chaos.add_argument(
        "--transactions",
        action="store_true",
        help="run the service with KAFKA_TRANSACTIONS=true and read its topics with read_committed: "
        "every event must then have exactly one result or dead-letter record",
    )
    chaos.add_argument(
        "--freeze",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="freeze one replica (SIGSTOP) this long, then let it go on (SIGCONT); longer than the "
        "session timeout (6 s here) to have its partitions given to the others",
    )
    chaos.add_argument(
        "--freeze-after",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="when to freeze: this long after the first result or dead letter (default 10)",
    )
    chaos.set_defaults(handler=_chaos)
