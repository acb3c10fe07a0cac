"""The service's Prometheus metrics (prometheus-client), named by Prometheus conventions.

No label carries an invoice number or any other unbounded value.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.circuit import AmiliCircuit
from service.domain.outcomes import Outcome
from service.flow.control import AmiliFlow, FlowObserver
from service.kafka.engine import EngineObserver, outcome_label
from service.kafka.link import LinkObserver
from service.kafka.transactions import TransactionObserver
from service.processing import Handled, ProcessingObserver
from service.registration import RegistrationObserver

NAMESPACE = "registrar"
UNKNOWN_FIELD_LABELS = 100
ERROR_LABELS = 20
"""Exception class names a processing error is counted by; beyond them, ``other``."""
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TIME_TO_RESULT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_EVENT_AGE_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 24 * 3600, 7 * 24 * 3600)

# The finite label values known in advance: each series exists at 0 from the start, so that a rate,
# an alert or a panel sees the first event (a counter born with it has no earlier sample to rise
# from) and shows 0 rather than nothing. ``other`` stands for the bounded labels' overflow.
EVENT_OUTCOMES = (*(outcome.value for outcome in Outcome), "dead_lettered")
REGISTRATION_OUTCOMES = (*(outcome.value for outcome in Outcome), "adopted")
RETRY_REASONS = ("unavailable", "rate_limited", "outcome_unknown", "unauthorized", "misconfigured")
DEAD_LETTER_RULES = (
    "too_large", "empty", "undecodable", "json", "attribute", "content_type", "cloudevents_attributes",
    "type", "data_schema", "gave_up", "processing_error",
)  # fmt: skip
LEDGER_OPERATIONS = ("claim", "renew", "finish", "release", "mark_published")
KAFKA_OPERATIONS = ("produce", "commit", "connect", "probe", "transaction")
TRANSACTION_OUTCOMES = ("committed", "failed", "refused")
AMILI_ENDPOINTS = ("register", "find", "get", "case")
AMILI_STATUS_CLASSES = ("2xx", "4xx", "5xx", "timeout", "error")
OVERFLOW_LABEL = "other"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_consumed = Counter(
            "events_consumed", "Inbound events handled, by outcome", ["outcome"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.registrations = Counter(
            "registrations", "Registrations by outcome (registered, adopted, rejected, conflict, failed)",
            ["outcome"], namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.amili_request_duration = Histogram(
            "amili_request_duration_seconds", "Duration of Amili calls", ["endpoint", "status_class"],
            namespace=NAMESPACE, registry=r, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.retries = Counter(
            "retries", "Retried Amili calls, by reason", ["reason"], namespace=NAMESPACE, registry=r
        )
        self.dead_letters = Counter(
            "dead_letters", "Events sent to the dead-letter topic, by rule", ["reason"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.events_in_flight = Gauge(
            "events_in_flight", "Events taken from Kafka and not yet finished (at most MAX_EVENTS_HELD)",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.registrations_in_flight = Gauge(
            "registrations_in_flight",
            "Invoices at Amili, each from its first call to Amili's final answer (at most the limit)",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.circuit_state = Gauge(
            "circuit_state", "Circuit towards Amili: 0 closed, 1 half-open, 2 open",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.auth_ok = Gauge(
            "amili_auth_ok", "1 while Amili accepts the credentials, 0 after it refused them",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.config_ok = Gauge(
            "amili_config_ok", "1 unless Amili answered 404/405/400 at the registrations path "
            "(a wrong AMILI_BASE_URL: consumption paused until it answers as it should)",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.time_to_result = Histogram(
            "time_to_result_seconds",
            "From the engine taking the inbound record from Kafka to its result being published",
            namespace=NAMESPACE, registry=r, buckets=_TIME_TO_RESULT_BUCKETS,
        )  # fmt: skip
        self.event_age_at_result = Histogram(
            "event_age_at_result_seconds",
            "From the inbound event's own time (the producer's clock) to its result being published: "
            "includes the time it waited in Kafka, and any skew of the producer's clock",
            namespace=NAMESPACE, registry=r, buckets=_EVENT_AGE_BUCKETS,
        )  # fmt: skip
        self.results_published = Counter(
            "results_published", "registration-result events published, by outcome", ["outcome"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.consumer_lag = Gauge(
            "consumer_lag", "End offset minus committed offset", ["topic", "partition"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.oldest_unfinished = Gauge(
            "oldest_unfinished_event_seconds",
            "Per partition, how long the event its commits wait for has been under way (0: none)",
            ["topic", "partition"], namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.ledger_errors = Counter(
            "ledger_errors", "Failed ledger operations", ["operation"], namespace=NAMESPACE, registry=r
        )
        self.last_progress = Gauge(
            "last_progress_timestamp_seconds", "Unix time the consume loop last finished an event or idled",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.kafka_broker_up = Gauge(
            "kafka_broker_up",
            "1 while the Kafka broker is reachable, 0 during an outage (consumption paused, sends waiting)",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.kafka_last_produce = Gauge(
            "kafka_last_produce_timestamp_seconds", "Unix time a record was last acknowledged by the broker",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.kafka_last_commit = Gauge(
            "kafka_last_commit_timestamp_seconds", "Unix time offsets were last committed",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.kafka_errors = Counter(
            "kafka_errors", "Failed broker operations (produce, commit, connect, probe, transaction)",
            ["operation"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.kafka_sends_waiting = Gauge(
            "kafka_sends_waiting", "Results and dead letters waiting for the broker to come back",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.kafka_transactions = Counter(
            "kafka_transactions", "Transactions tried (KAFKA_TRANSACTIONS): committed, failed (tried "
            "again), refused (a record too large: tried again truncated)", ["outcome"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.kafka_transaction_events = Counter(
            "kafka_transaction_events", "Events whose results, dead letters and offset were committed",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.kafka_transaction_duration = Histogram(
            "kafka_transaction_duration_seconds", "From a transaction's begin to its commit",
            buckets=_LATENCY_BUCKETS, namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.kafka_transactional_producers = Gauge(
            "kafka_transactional_producers", "Transactional producers: one per consumed partition",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.dead_letter_failures = Counter(
            "dead_letter_failures", "Dead letters that could not be sent (tried again: the partition waits)",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.processing_errors = Counter(
            "processing_errors", "Exceptions on an event's path (a fault of ours, or of the ledger or "
            "broker beneath it): the event is tried again, then dead-lettered (processing_error)",
            ["error"], namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.unknown_fields = Counter(
            "unknown_fields", "Fields in invoice-created data the service does not know (ignored), by "
            "path with list indexes as []; beyond 100 paths they count as field=\"other\"", ["field"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.amili_concurrency_limit = Gauge(
            "amili_concurrency_limit", "Invoices allowed at Amili at once now (at most MAX_IN_FLIGHT)",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.amili_min_latency = Gauge(
            "amili_min_latency_seconds", "Lowest Amili call latency measured lately, the adaptive limit's "
            "reference (NaN until measured)",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.amili_creditors_sharing = Gauge(
            "amili_creditors_sharing", "1 while a light creditor meets a backlog at the fair gate (and "
            "for a second after): the limit then keeps no queue at Amili, else 0",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.amili_rate_limited = Counter(
            "amili_rate_limited", "Amili calls answered 429 (rate limited)", namespace=NAMESPACE, registry=r
        )
        self.amili_rate_budget_wait = Counter(
            "amili_rate_budget_wait_seconds", "Time calls waited for Amili's rate budget (X-RateLimit-*, "
            "Retry-After) before going out",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.registrations_waiting = Gauge(
            "registrations_waiting", "Invoices waiting for a place at Amili (in turn of their creditors)",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.build_info = Gauge(
            "build_info", "Always 1: the service's version and its runtime's, as labels",
            ["version", "python", "faststream", "aiokafka"], namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.build_info.labels(
            _version("amili-registrar"),
            platform.python_version(),
            _version("faststream"),
            _version("aiokafka"),
        ).set(1)
        self.auth_ok.set(1)
        self.config_ok.set(1)
        self.kafka_broker_up.set(1)
        self._label_known_values()

    def _label_known_values(self) -> None:
        """Create each known label value's series at 0 (see ``EVENT_OUTCOMES`` and the others)."""
        for outcome in EVENT_OUTCOMES:
            self.events_consumed.labels(outcome)
        for outcome in REGISTRATION_OUTCOMES:
            self.registrations.labels(outcome)
        for outcome in Outcome:
            self.results_published.labels(outcome.value)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        for rule in DEAD_LETTER_RULES:
            self.dead_letters.labels(rule)
        for operation in LEDGER_OPERATIONS:
            self.ledger_errors.labels(operation)
        for operation in KAFKA_OPERATIONS:
            self.kafka_errors.labels(operation)
        for outcome in TRANSACTION_OUTCOMES:
            self.kafka_transactions.labels(outcome)
        for endpoint in AMILI_ENDPOINTS:
            for status_class in AMILI_STATUS_CLASSES:
                self.amili_request_duration.labels(endpoint, status_class)
        self.processing_errors.labels(error=OVERFLOW_LABEL)
        self.unknown_fields.labels(OVERFLOW_LABEL)


class MetricsObserver(
    RegistrationObserver, ProcessingObserver, EngineObserver, LinkObserver, FlowObserver, TransactionObserver
):
    """Feeds the metrics from the hooks of the core and the engine."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._unknown_field_labels: set[str] = set()
        self._error_labels: set[str] = set()

    # registration
    def retry(self, reason: str) -> None:
        self._m.retries.labels(reason).inc()

    def registration(self, outcome: str) -> None:
        self._m.registrations.labels(outcome).inc()

    def ledger_error(self, operation: str) -> None:
        self._m.ledger_errors.labels(operation).inc()

    def registrations_in_flight(self, count: int) -> None:
        self._m.registrations_in_flight.set(count)

    # processing
    def dead_letter(self, rule: str) -> None:
        self._m.dead_letters.labels(rule).inc()

    def result_published(
        self, outcome: str, event_time: datetime | None, since_taken: float | None = None
    ) -> None:
        self._m.results_published.labels(outcome).inc()
        if since_taken is not None:
            self._m.time_to_result.observe(since_taken)
        if event_time is not None:
            self._m.event_age_at_result.observe(max(0.0, (datetime.now(UTC) - event_time).total_seconds()))

    def unknown_fields(self, paths: tuple[str, ...]) -> None:
        for path in paths:
            label = re.sub(r"\[\d+\]", "[]", path)
            if label not in self._unknown_field_labels:
                if len(self._unknown_field_labels) >= UNKNOWN_FIELD_LABELS:
                    label = "other"
                else:
                    self._unknown_field_labels.add(label)
            self._m.unknown_fields.labels(label).inc()

    # engine
    def in_flight(self, count: int) -> None:
        self._m.events_in_flight.set(count)

    def handled(self, handled: Handled, seconds: float) -> None:
        self._m.events_consumed.labels(outcome_label(handled)).inc()

    def lag(self, topic: str, partition: int, lag: int) -> None:
        self._m.consumer_lag.labels(topic, str(partition)).set(lag)

    def oldest_unfinished(self, topic: str, partition: int, seconds: float) -> None:
        self._m.oldest_unfinished.labels(topic, str(partition)).set(round(seconds, 3))

    def progress(self) -> None:
        self._m.last_progress.set_to_current_time()

    def dead_letter_failed(self) -> None:
        self._m.dead_letter_failures.inc()

    def processing_failed(self, error: BaseException) -> None:
        name = type(error).__name__
        if name not in self._error_labels and len(self._error_labels) >= ERROR_LABELS:
            name = "other"
        self._error_labels.add(name)
        self._m.processing_errors.labels(error=name).inc()

    # the broker link
    def broker_up(self, up: bool) -> None:
        self._m.kafka_broker_up.set(1 if up else 0)

    def produced(self) -> None:
        self._m.kafka_last_produce.set_to_current_time()

    def committed(self) -> None:
        self._m.kafka_last_commit.set_to_current_time()

    def kafka_error(self, operation: str) -> None:
        self._m.kafka_errors.labels(operation).inc()

    # transactions
    def transaction(self, outcome: str, events: int, seconds: float) -> None:
        self._m.kafka_transactions.labels(outcome).inc()
        if outcome == "committed":
            self._m.kafka_transaction_events.inc(events)
            self._m.kafka_transaction_duration.observe(seconds)
            self._m.kafka_last_produce.set_to_current_time()

    def producers(self, count: int) -> None:
        self._m.kafka_transactional_producers.set(count)

    # the flow towards Amili
    def rate_limited(self) -> None:
        self._m.amili_rate_limited.inc()

    def budget_waited(self, seconds: float) -> None:
        self._m.amili_rate_budget_wait.inc(seconds)

    def watch_flow(self, flow: AmiliFlow) -> None:
        self._m.amili_concurrency_limit.set_function(lambda: flow.limit)
        self._m.amili_min_latency.set_function(
            lambda: flow.min_latency if flow.min_latency is not None else float("nan")
        )
        self._m.registrations_waiting.set_function(lambda: flow.gate.waiting)
        self._m.amili_creditors_sharing.set_function(lambda: 1.0 if flow.shared else 0.0)

    # the Amili client and the circuit
    def amili_request(self, endpoint: str, status_class: str, seconds: float) -> None:
        self._m.amili_request_duration.labels(endpoint, status_class).observe(seconds)

    def circuit_changed(self, circuit: AmiliCircuit) -> None:
        self._m.circuit_state.set(int(circuit.state))
        self._m.auth_ok.set(1 if circuit.authorized else 0)
        self._m.config_ok.set(1 if circuit.config_error is None else 0)
