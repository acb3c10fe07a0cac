"""How the service's aiokafka clients connect, and how its producers of results are made: kept
apart from the composition root so that the transactional producers' process
(``service.kafka.producer_process``) makes its producers without importing the whole service."""

from __future__ import annotations

from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.helpers import create_ssl_context

from service.config import Settings
from service.kafka.limits import MIN_RESULT_BYTES

APP_NAME = "amili-registrar"


def client_security(settings: Settings) -> dict[str, Any]:
    """The connection security of aiokafka's clients."""
    protocol = settings.kafka_security_protocol
    ssl_context = create_ssl_context() if protocol.endswith("SSL") else None
    security: dict[str, Any] = {"security_protocol": protocol, "ssl_context": ssl_context}
    if protocol.startswith("SASL"):
        security |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username or "",
            "sasl_plain_password": (
                settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
            ),
        }
    return security


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
