"""The composition root: builds the adapters from settings and wires them to the core.

FastStream's part here, decided by measurement where CPU matters (``docs/performance.md``,
``python -m bench.throughput``), and used through its public API only:

- It runs the application: ``AsgiFastStream`` calls the life-cycle hooks (the ledger, the broker
  link and the engine opened and closed in order) and serves the ASGI routes (``/metrics``,
  ``/healthz``, ``/readyz``) under uvicorn; its ``KafkaBroker`` (``WaitingKafkaBroker``, which
  overrides the public ``start``) declares the two publishers, from which ``devkit.schemas``
  generates the AsyncAPI document. None of that is on an event's path.
- It stays off the two paths every event takes. Consuming: a FastStream subscriber commits before
  its handler (at-most-once) or, with any other ack policy, runs one event at a time per consumer,
  so no more in flight than partitions: 2.90 ms CPU and 103 registrations/s against the engine's
  0.60 ms and 1,595/s (fixed 50 ms Amili, ``bench/faststream_consumer.py``); so the engine consumes
  with aiokafka. Publishing: FastStream's publish path (middlewares, message and correlation ids,
  header encoding) cost about 0.1 ms CPU per result, a sixth of the service's CPU per registration;
  so results and dead letters go to aiokafka's producer through the broker link.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from prometheus_client import make_asgi_app
from pydantic import SecretStr

from service.amili.client import AmiliClient, ApiCodeCredentials, HttpSettings
from service.circuit import AmiliCircuit, CircuitState
from service.config import Settings
from service.domain.rules import TransformDefaults
from service.flow.budget import RateBudget
from service.flow.control import AmiliFlow, FlowObserver
from service.flow.limit import AdaptiveLimit, FixedLimit, LimitSettings
from service.kafka.engine import ConsumptionEngine, Processor
from service.kafka.limits import MIN_RESULT_BYTES, check_at_start
from service.kafka.link import BrokerLink
from service.kafka.pacing import paced_consumer, paced_producer, paced_transactional_producer
from service.kafka.publishing import KafkaDeadLetterPublisher, KafkaResultPublisher
from service.kafka.startup import (
    ClusterWait,
    StartupRefused,
    WaitingKafkaBroker,
    admin_client,
    missing_topics,
    wait_for_cluster,
)
from service.kafka.transactions import (
    GroupOffsets,
    LinkState,
    TransactionalDeadLetterPublisher,
    TransactionalResultPublisher,
    TransactionObserver,
    Transactions,
)
from service.ledger.factory import open_ledger
from service.ops.http import Check, HealthEndpoint, progress_check
from service.ops.metrics import Metrics, MetricsObserver
from service.ports import DeadLetterPublisher, ResultPublisher
from service.processing import InvoiceProcessor
from service.registration import Backoff, InvoiceRegistration, RegistrationPolicy

APP_NAME = "amili-registrar"


class ConfigurationError(Exception):
    """A setting is missing or wrong; the message names the env var."""


def amili_credentials(settings: Settings) -> SecretStr | ApiCodeCredentials:
    """A ready access token, or an api code and key to mint tokens with."""
    if settings.amili_api_code:
        if settings.amili_private_key is not None:
            key = settings.amili_private_key
        elif settings.amili_private_key_file:
            try:
                key = SecretStr(Path(settings.amili_private_key_file).read_text(encoding="utf-8"))
            except OSError as error:
                raise ConfigurationError(
                    f"AMILI_PRIVATE_KEY_FILE cannot be read: {error.strerror}"
                ) from error
        else:
            raise ConfigurationError("AMILI_API_CODE needs AMILI_PRIVATE_KEY or AMILI_PRIVATE_KEY_FILE")
        return ApiCodeCredentials(settings.amili_api_code, key, settings.amili_jwt_algorithm)
    if not settings.amili_api_key.get_secret_value():
        raise ConfigurationError("AMILI_API_KEY is not set (or AMILI_API_CODE with a private key)")
    return settings.amili_api_key


def amili_http_settings(settings: Settings) -> HttpSettings:
    """The HTTP client's settings towards Amili, for the service and the operator commands."""
    return HttpSettings(
        connect_timeout_seconds=settings.amili_connect_timeout_seconds,
        read_timeout_seconds=settings.amili_read_timeout_seconds,
        total_timeout_seconds=settings.amili_total_timeout_seconds,
        max_connections=settings.amili_max_connections,
        transport=settings.amili_http_transport,
    )


def kafka_security(settings: Settings) -> tuple[BaseSecurity | None, dict[str, Any]]:
    """The connection security for FastStream's broker and for aiokafka's clients."""
    protocol = settings.kafka_security_protocol
    ssl_context = create_ssl_context() if protocol.endswith("SSL") else None
    consumer: dict[str, Any] = {"security_protocol": protocol, "ssl_context": ssl_context}
    if not protocol.startswith("SASL"):
        return (BaseSecurity(ssl_context=ssl_context) if ssl_context else None), consumer
    username = settings.kafka_sasl_username or ""
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    consumer |= {
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": username,
        "sasl_plain_password": password,
    }
    kind = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    security = kind[settings.kafka_sasl_mechanism](username, password, ssl_context=ssl_context)
    return security, consumer


def check_claim_lease(settings: Settings) -> None:
    """A claim must outlast the longest attempt at Amili (a look-up, then a POST, each up to the
    total timeout): otherwise another replica may take it over, look the invoice up while the
    first POST is still being processed at Amili, find nothing and POST it a second time."""
    longest_attempt = settings.longest_amili_attempt_seconds
    if settings.claim_lease_seconds <= longest_attempt:
        raise ConfigurationError(
            f"CLAIM_LEASE_SECONDS ({settings.claim_lease_seconds:g}) must be longer than one attempt "
            f"at Amili can last: a look-up and a POST, twice AMILI_TOTAL_TIMEOUT_SECONDS "
            f"({longest_attempt:g} s)"
        )


@dataclass(frozen=True)
class ShutdownBudget:
    """How a stop spends SHUTDOWN_GRACE_SECONDS: most of it waiting for events in flight, the rest
    (5 s at most) committing, leaving the group and flushing the producer, which a broker that is
    away would otherwise hold for its own timeouts."""

    drain_seconds: float
    close_seconds: float
    flush_seconds: float

    @classmethod
    def of(cls, grace_seconds: float) -> ShutdownBudget:
        closing = min(5.0, grace_seconds / 3)
        return cls(grace_seconds - closing, closing * 2 / 3, closing / 3)


def instance_id() -> str:
    """Who holds a claim in the ledger: this process, recognisably."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# The collector runs when tracked objects alive exceed this many more than at its last run.
# Python's 700 is less than what 128 events in flight keep alive, so it ran every 7 events and
# walked them all, a tenth of the CPU per event; the service leaves almost no cycles behind (a
# few dozen per 20,000 events), so collecting seldom costs no memory.
YOUNG_GENERATION_THRESHOLD = 10_000


def freeze_long_lived_objects() -> None:
    """Once started, move everything alive (modules, validators, clients, the broker) out of
    the cyclic garbage collector's reach, and let it run seldom from then on.

    Otherwise each full collection walks them all again: with many events in flight, full
    collections come every second or so and that walk cost about a tenth of the CPU per event.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, older, oldest)


@dataclass
class Registrar:
    """The wired service: ``async with registrar.app:`` runs it (uvicorn serves it in ``run``)."""

    app: AsgiFastStream
    broker: KafkaBroker
    amili: AmiliClient
    circuit: AmiliCircuit
    engine: ConsumptionEngine
    flow: AmiliFlow


def amili_flow(settings: Settings, observer: FlowObserver | None = None) -> AmiliFlow:
    """The flow control towards Amili the settings ask for. The initial and lowest limits are
    taken within ``MAX_IN_FLIGHT``, so that a small ``MAX_IN_FLIGHT`` needs no other setting."""
    limit: FixedLimit | AdaptiveLimit
    if settings.amili_concurrency == "fixed":
        limit = FixedLimit(settings.max_in_flight)
    else:
        initial = min(settings.amili_initial_limit, settings.max_in_flight)
        limit = AdaptiveLimit(
            LimitSettings(
                initial=initial,
                minimum=min(settings.amili_min_limit, initial),
                maximum=settings.max_in_flight,
                algorithm=settings.amili_limit_algorithm,
                tolerance=settings.amili_latency_tolerance,
            )
        )
    return AmiliFlow(limit, budget=RateBudget() if settings.amili_rate_budget else None, observer=observer)


def result_producer(settings: Settings, security: dict[str, Any]) -> partial[AIOKafkaProducer]:
    """How a producer of results and dead letters is made, transactional or not (a transactional id
    is added per partition)."""
    return partial(
        AIOKafkaProducer,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        # Results finishing together share a produce request (fewer round trips and syscalls).
        linger_ms=settings.kafka_linger_ms,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        max_request_size=settings.kafka_max_request_bytes,
        # A transaction's records for a partition in one batch, not a chain of 16 KiB batches each
        # waiting for the one before it to be sent (measured: a transaction took 154 ms, 82-95 ms
        # with this, docs/performance.md). The start check holds the result topic to at least this.
        max_batch_size=MIN_RESULT_BYTES,
        client_id=APP_NAME,
        **security,
    )


def kafka_transactions(
    settings: Settings,
    security: dict[str, Any],
    link: LinkState | None,
    backoff: Backoff,
    observer: TransactionObserver | None = None,
) -> Transactions:
    """The transactional producers, one per consumed partition, when KAFKA_TRANSACTIONS is on."""
    producer = result_producer(settings, security)
    admin = partial(admin_client, settings, security)
    return Transactions(
        paced_transactional_producer(producer),
        offsets=GroupOffsets(admin, settings.consumer_group_id),
        group_id=settings.consumer_group_id,
        id_prefix=settings.transactional_id_prefix,
        link=link,
        interval_seconds=settings.kafka_transaction_interval_ms / 1000,
        max_events=settings.kafka_transaction_max_events,
        timeout_seconds=settings.kafka_request_timeout_seconds,
        # Two heartbeats: a consumer the group has left behind learns it by then.
        reinit_delay_seconds=2 * max(0.1, settings.kafka_session_timeout_ms / 3000),
        backoff=Backoff(initial_seconds=backoff.initial_seconds, max_seconds=5.0),
        observer=observer,
    )


def build_registrar(
    settings: Settings,
    *,
    around_processor: Callable[[Processor], Processor] | None = None,
) -> Registrar:
    """Wire the service. ``around_processor`` wraps what the engine feeds, as a middleware would
    (tests use it to stop the service at a chosen point)."""
    credentials = amili_credentials(settings)
    check_claim_lease(settings)
    metrics = Metrics()
    observer = MetricsObserver(metrics)
    broker_security, consumer_security = kafka_security(settings)
    # FastStream runs the application (life cycle, ASGI routes) and documents the topics in the
    # AsyncAPI schema; results and dead letters go through the broker link, consumption through the
    # engine.
    cluster_wait = ClusterWait()

    async def before_connect() -> None:
        topics = await wait_for_cluster(settings, consumer_security, state=cluster_wait)
        if not settings.kafka_allow_auto_create_topics and (problem := missing_topics(settings, topics)):
            raise StartupRefused(problem)
        await check_size_limits()

    broker = WaitingKafkaBroker(
        settings.kafka_bootstrap_servers,
        before_connect=before_connect,
        graceful_timeout=settings.shutdown_grace_seconds,
        client_id=APP_NAME,
        logger=logging.getLogger("service.kafka.faststream"),
        security=broker_security,
    )
    broker.publisher(
        settings.registration_result_topic,
        title="registration-result",
        description="The outcome of each invoice (CloudEvents, structured mode), keyed creditor/invoice",
    )
    broker.publisher(
        settings.dead_letter_topic,
        title="dead-letter",
        description="Events that cannot be processed, untouched, with dlq.* headers saying why",
    )
    flow = amili_flow(settings, observer)
    observer.watch_flow(flow)
    amili = AmiliClient(
        settings.amili_base_url,
        credentials,
        amili_http_settings(settings),
        flow=flow,
        observe=observer.amili_request,
    )
    ledger = open_ledger(settings.ledger_url.get_secret_value())
    circuit = AmiliCircuit(
        failure_threshold=settings.circuit_failure_threshold,
        open_seconds=settings.circuit_open_seconds,
        unauthorized_retry_seconds=settings.unauthorized_retry_seconds,
        on_change=observer.circuit_changed,
    )
    backoff = Backoff(initial_seconds=settings.retry_initial_seconds, max_seconds=settings.retry_max_seconds)
    clock = lambda: datetime.now(UTC)  # noqa: E731
    registration = InvoiceRegistration(
        amili=amili,
        ledger=ledger,
        circuit=circuit,
        owner=instance_id(),
        clock=clock,
        policy=RegistrationPolicy(
            backoff=backoff,
            max_attempts=settings.max_attempts,
            lease=timedelta(seconds=settings.claim_lease_seconds),
            max_in_flight=settings.max_in_flight,
            longest_attempt=timedelta(seconds=settings.longest_amili_attempt_seconds),
        ),
        observer=observer,
        places=flow.gate,
    )
    link = BrokerLink(
        paced_producer(result_producer(settings, consumer_security)),
        topics=[settings.registration_result_topic, settings.dead_letter_topic],
        request_timeout_seconds=settings.kafka_request_timeout_seconds,
        observer=observer,
    )
    metrics.kafka_sends_waiting.set_function(lambda: link.waiting)
    transactions = (
        kafka_transactions(settings, consumer_security, link, backoff, observer)
        if settings.kafka_transactions
        else None
    )
    results: ResultPublisher
    dead_letters: DeadLetterPublisher
    if transactions is not None:
        results = TransactionalResultPublisher(settings.registration_result_topic)
        dead_letters = TransactionalDeadLetterPublisher(settings.dead_letter_topic)
    else:
        results = KafkaResultPublisher(link, settings.registration_result_topic)
        dead_letters = KafkaDeadLetterPublisher(link, settings.dead_letter_topic)
    processor = InvoiceProcessor(
        registration=registration,
        ledger=ledger,
        results=results,
        dead_letters=dead_letters,
        defaults=TransformDefaults(
            account=settings.amili_default_account,
            creditor=settings.amili_default_creditor,
            id_number_check=settings.id_number_check,
        ),
        clock=clock,
        backoff=backoff,
        observer=observer,
        unknown_fields=settings.unknown_fields,
        max_event_bytes=settings.max_event_bytes,
    )
    # No max_partition_fetch_bytes after MAX_EVENT_BYTES: the broker sends a partition's first
    # batch whole however large it is (fetch v3 on, which aiokafka speaks), so a record over the
    # fetch size still comes, to be dead-lettered as too_large rather than stall its partition.
    consumer = paced_consumer(
        partial(
            AIOKafkaConsumer,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=settings.consumer_group_id,
            client_id=APP_NAME,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.max_in_flight,
            request_timeout_ms=settings.kafka_request_timeout_ms,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.kafka_session_timeout_ms // 3),
            # With transactions, what upstream producers aborted is not processed either.
            isolation_level="read_committed" if settings.kafka_transactions else "read_uncommitted",
            **consumer_security,
        )
    )
    shutdown = ShutdownBudget.of(settings.shutdown_grace_seconds)
    engine = ConsumptionEngine(
        consumer=consumer,
        topic=settings.invoice_created_topic,
        processor=around_processor(processor) if around_processor else processor,
        max_events=max(settings.max_events_held, settings.max_events_running),
        max_active=settings.max_events_running,
        # An Amili outage and a Kafka outage alike pause consumption until they are over.
        accepting=lambda: circuit.accepting and link.up,
        drain_seconds=shutdown.drain_seconds,
        close_seconds=shutdown.close_seconds,
        commit_timeout_seconds=settings.kafka_request_timeout_seconds,
        backoff=backoff,
        observer=observer,
        broker=link,
        transactions=transactions,
    )

    async def check_size_limits() -> None:
        refusals = await check_at_start(settings, consumer_security)
        if refusals:
            raise ConfigurationError("; ".join(refusal.line for refusal in refusals))

    async def kafka_connected() -> tuple[bool, str]:
        if cluster_wait.detail:
            return False, cluster_wait.detail
        if not link.up:
            return False, f"broker unreachable for {link.down_seconds:.0f}s"
        return engine.connected, "consuming" if engine.connected else "not connected"

    async def ledger_reachable() -> tuple[bool, str]:
        await ledger.ping()
        return True, "reachable"

    async def credentials_accepted() -> tuple[bool, str]:
        return circuit.authorized, "accepted" if circuit.authorized else "refused by Amili"

    async def amili_configured() -> tuple[bool, str]:
        # e.g. "POST https://host/prefix/invoice--registrations answered 404: check AMILI_BASE_URL"
        problem = circuit.config_error
        return problem is None, problem or "ok"

    async def circuit_not_open() -> tuple[bool, str]:
        state = circuit.state
        return state is not CircuitState.OPEN, state.name.lower()

    readiness: dict[str, Check] = {
        "kafka": kafka_connected,
        "ledger": ledger_reachable,
        "credentials": credentials_accepted,
        "amili_config": amili_configured,
        "circuit": circuit_not_open,
    }

    async def consume_loop_running() -> tuple[bool, str]:
        failure = engine.loop_failure
        return failure is None, failure or "running"

    liveness: dict[str, Check] = {
        "consume_loop": progress_check(
            lambda: engine.last_progress, stale_after_seconds=settings.liveness_stale_seconds
        ),
        "consume_loop_running": consume_loop_running,
    }
    app = AsgiFastStream(
        broker,
        asgi_routes=[
            ("/metrics", make_asgi_app(metrics.registry)),
            ("/healthz", HealthEndpoint(liveness)),
            ("/readyz", HealthEndpoint(readiness)),
        ],
        logger=logging.getLogger("service.app"),
        # The broker is waited for, and the topics and their size limits checked, when FastStream
        # starts it (WaitingKafkaBroker): after the health endpoints answer.
        on_startup=[ledger.open],
        # With transactions a result recorded but not committed belongs to an event whose offset
        # was not committed either: that event publishes it again, in its transaction.
        after_startup=[
            link.start,
            *([] if transactions is not None else [processor.publish_pending]),
            engine.start,
            freeze_long_lived_objects,
        ],
        on_shutdown=[engine.stop],
        after_shutdown=[
            processor.settle,
            partial(link.stop, shutdown.flush_seconds),
            amili.aclose,
            ledger.close,
        ],
    )
    return Registrar(app=app, broker=broker, amili=amili, circuit=circuit, engine=engine, flow=flow)
