"""The service's Prometheus metrics (prometheus-client), named by Prometheus conventions.

No label carries an invoice number or any other unbounded value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

NAMESPACE = "registrar"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TIME_TO_RESULT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


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
            "events_in_flight", "Events taken from Kafka and not yet finished",
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
        self.time_to_result = Histogram(
            "event_to_result_seconds", "From the inbound event's time to its result being published",
            namespace=NAMESPACE, registry=r, buckets=_TIME_TO_RESULT_BUCKETS,
        )  # fmt: skip
        self.results_published = Counter(
            "results_published", "registration-result events published, by outcome", ["outcome"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.consumer_lag = Gauge(
            "consumer_lag", "End offset minus committed offset", ["topic", "partition"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.ledger_errors = Counter(
            "ledger_errors", "Failed ledger operations", ["operation"], namespace=NAMESPACE, registry=r
        )
        self.last_progress = Gauge(
            "last_progress_timestamp_seconds", "Unix time the consume loop last finished an event or idled",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.auth_ok.set(1)
