"""The composition root: builds the adapters from settings and wires them to the core."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from faststream import FastStream
from faststream.kafka import KafkaBroker
from pydantic import SecretStr

from service.amili.client import AmiliClient, ApiCodeCredentials, HttpSettings
from service.config import Settings
from service.domain.transform import TransformDefaults
from service.kafka.app import RecordProcessor, subscribe_processor
from service.kafka.publishing import KafkaDeadLetterPublisher, KafkaResultPublisher
from service.processing import Backoff, InvoiceProcessor


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


@dataclass
class Registrar:
    """The wired service: ``await registrar.app.run()`` or start/stop it around a test."""

    app: FastStream
    broker: KafkaBroker
    amili: AmiliClient
    processor: InvoiceProcessor


def build_registrar(
    settings: Settings,
    *,
    around_processor: Callable[[RecordProcessor], RecordProcessor] | None = None,
) -> Registrar:
    """Wire the service. ``around_processor`` wraps the processor the consumer feeds, as a
    middleware would (tests use it to stop the service at a chosen point)."""
    credentials = amili_credentials(settings)
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        graceful_timeout=settings.shutdown_grace_seconds,
        client_id="amili-registrar",
        logger=logging.getLogger("service.kafka.faststream"),
    )
    results = broker.publisher(
        settings.registration_result_topic,
        title="registration-result",
        description="The outcome of each invoice (CloudEvents, structured mode), keyed by creditor/invoice",
    )
    broker.publisher(
        settings.dead_letter_topic,
        title="dead-letter",
        description="Events that cannot be processed, untouched, with dlq.* headers saying why",
    )
    amili = AmiliClient(
        settings.amili_base_url,
        credentials,
        HttpSettings(
            connect_timeout_seconds=settings.amili_connect_timeout_seconds,
            read_timeout_seconds=settings.amili_read_timeout_seconds,
            total_timeout_seconds=settings.amili_total_timeout_seconds,
            max_connections=settings.amili_max_connections,
            transport=settings.amili_http_transport,
        ),
    )
    backoff = Backoff(initial_seconds=settings.retry_initial_seconds, max_seconds=settings.retry_max_seconds)
    processor = InvoiceProcessor(
        amili=amili,
        results=KafkaResultPublisher(results),
        dead_letters=KafkaDeadLetterPublisher(broker, settings.dead_letter_topic),
        defaults=TransformDefaults(
            account=settings.amili_default_account, creditor=settings.amili_default_creditor
        ),
        backoff=backoff,
    )
    subscribe_processor(
        broker,
        topic=settings.invoice_created_topic,
        group_id=settings.consumer_group_id,
        processor=around_processor(processor) if around_processor else processor,
        backoff=backoff,
    )
    app = FastStream(broker, after_shutdown=[amili.aclose])
    return Registrar(app=app, broker=broker, amili=amili, processor=processor)
