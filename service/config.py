"""Configuration from environment variables: the only place the service reads them.

Every setting's env var is its field name in upper case (``KAFKA_BOOTSTRAP_SERVERS``). The
development tools' settings (the Amili emulator's ``AMILI_EMULATOR_*``) are theirs, in ``devkit``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _topic_name(name: str) -> str:
    # Kafka's own rule (kafka.common.internals.Topic); caught here rather than by a broker that
    # answers every request for it with an error, ten times a second.
    if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"{name!r} is not a Kafka topic name: 1 to 249 of a-z A-Z 0-9 . _ -")
    return name


def _bootstrap_servers(value: str) -> str:
    servers = [part.strip() for part in value.split(",")]
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(
                f"{value!r} is not a list of host:port, comma separated (as kafka-0:9092,kafka-1:9092)"
            )
    return ",".join(servers)


def _base_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{value!r} is not an http(s) URL such as https://api.example.com")
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError as error:
        raise ValueError(f"{value!r} has an invalid port") from error
    return value.strip().rstrip("/")


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


TopicName = Annotated[str, AfterValidator(_topic_name)]
Port = Annotated[int, Field(ge=1, le=65535)]


def settings_problems(error: ValidationError) -> str:
    """What is wrong with the environment, in one line naming each variable; the values of
    secret settings are never repeated."""
    problems = []
    for issue in error.errors(include_url=False):
        name = str(issue["loc"][0]).upper() if issue["loc"] else "settings"
        message = issue["msg"].removeprefix("Value error, ")
        shown = ""
        if "input" in issue and not isinstance(issue["input"], dict) and "is not" not in message:
            secret = name in _SECRET_SETTINGS
            shown = f" (got {'[hidden]' if secret else repr(issue['input'])})"
        problems.append(f"{name}: {message}{shown}")
    return "; ".join(problems)


class Settings(BaseSettings):
    """The service's settings."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    kafka_bootstrap_servers: Annotated[str, AfterValidator(_bootstrap_servers)] = Field(
        default="127.0.0.1:9092", description="Kafka bootstrap servers, host:port comma separated"
    )
    invoice_created_topic: TopicName = Field(default="invoice-created", description="Topic consumed")
    registration_result_topic: TopicName = Field(
        default="registration-result", description="Topic the outcome of each invoice goes to"
    )
    dead_letter_topic: TopicName = Field(
        default="invoice-created.dead-letter",
        description="Topic for events that cannot be processed, with the reason in headers",
    )
    consumer_group_id: str = Field(
        default="amili-registrar", min_length=1, description="Kafka consumer group"
    )

    amili_base_url: Annotated[str, AfterValidator(_base_url)] = Field(
        default="http://127.0.0.1:8080", description="Base URL of the Amili API (no trailing path)"
    )
    amili_api_key: SecretStr = Field(
        default=SecretStr(""), description="Access token sent in the x-api-key header (required)"
    )
    amili_api_code: str | None = Field(
        default=None, description="Api code to mint JWTs for; instead of AMILI_API_KEY"
    )
    amili_private_key: SecretStr | None = Field(
        default=None, description="PEM private key registered with Amili for the api code"
    )
    amili_private_key_file: str | None = Field(
        default=None, description="File holding that PEM private key (instead of AMILI_PRIVATE_KEY)"
    )
    amili_jwt_algorithm: Literal["ES256", "ES384", "ES512", "RS256", "RS384", "RS512"] = Field(
        default="ES256", description="Signature algorithm of the minted JWTs"
    )
    amili_default_account: str | None = Field(
        default=None, description="Account id used when an event carries none"
    )
    amili_default_creditor: str | None = Field(
        default=None, description="Creditor id used when an event carries none"
    )
    id_number_check: Literal["strict", "warn", "off"] = Field(
        default="strict",
        description="How a Swedish id number (customer.id_number) is checked: strict = an invalid "
        "one rejects the invoice; warn = the invoice is registered with the id number as given and "
        "the registration-result carries a warning naming the field and the problem; off = no check",
    )
    unknown_fields: Literal["ignore", "reject"] = Field(
        default="ignore",
        description="Fields in invoice-created data the invoice does not know: ignore = dropped, the "
        "event processed, counted in registrar_unknown_fields_total and named in a debug log; "
        "reject = the event gets a rejected result naming each unknown field",
    )
    amili_http_transport: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp", description="HTTP client towards Amili: aiohttp (directly) or httpx (its own pool)"
    )
    amili_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    amili_read_timeout_seconds: float = Field(default=30.0, gt=0)
    amili_total_timeout_seconds: float = Field(default=45.0, gt=0)
    amili_max_connections: int = Field(default=200, ge=1)

    ledger_url: SecretStr = Field(
        default=SecretStr("sqlite:///registrar-ledger.db"),
        description="The ledger: sqlite:///relative.db, sqlite:////absolute.db or postgresql://user:pass@host/db",
    )
    max_in_flight: int = Field(
        default=128,
        ge=1,
        description="Invoices at Amili at once in one instance, each from its first call to its final answer",
    )
    amili_concurrency: Literal["adaptive", "fixed"] = Field(
        default="adaptive",
        description="How many invoices may be at Amili at once: adaptive = learnt from Amili's latency "
        "and 429s, between AMILI_MIN_LIMIT and MAX_IN_FLIGHT; fixed = always MAX_IN_FLIGHT",
    )
    amili_limit_algorithm: Literal["gradient", "aimd"] = Field(
        default="gradient", description="How the adaptive limit moves (docs/performance.md compares them)"
    )
    amili_initial_limit: int = Field(
        default=32, ge=1, description="The adaptive limit at start (at most MAX_IN_FLIGHT)"
    )
    amili_min_limit: int = Field(
        default=2, ge=1, description="The adaptive limit never goes below this (at most the initial limit)"
    )
    amili_latency_tolerance: float = Field(
        default=1.25,
        ge=1.0,
        description="Latency up to this many times the lowest measured is not taken for Amili's congestion",
    )
    amili_rate_budget: bool = Field(
        default=True,
        description="Keep to the rate limit Amili announces in X-RateLimit-* (calls wait for the "
        "window's reset instead of being refused); false: only 429s slow the instance down",
    )
    max_events_held: int = Field(
        default=25_000,
        ge=1,
        description="Events one instance reads ahead and holds unfinished (about 3.4 KB each while they "
        "wait): how far another creditor's events can be behind a backlog and still be handled in turn",
    )
    max_attempts: int = Field(
        default=10,
        ge=1,
        description="Failed attempts of one invoice, while Amili is otherwise healthy, before it gives up",
    )
    claim_lease_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a claim in the ledger holds before another instance may take it over",
    )
    circuit_failure_threshold: int = Field(
        default=5, ge=1, description="Transient failures in a row (across invoices) that open the circuit"
    )
    circuit_open_seconds: float = Field(
        default=5.0, ge=0, description="How long the circuit stays open before a probe"
    )
    unauthorized_retry_seconds: float = Field(
        default=30.0, ge=0, description="How often refused credentials are tried again"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT"
    )
    kafka_linger_ms: int = Field(
        default=1,
        ge=0,
        description="How long the producer waits to put results finishing together in one request",
    )
    kafka_request_timeout_ms: int = Field(
        default=10_000,
        ge=1_000,
        description="How long one request to the broker (a send, a commit) may take; a send that "
        "is not acknowledged by then marks the broker unreachable and is sent again once it answers",
    )
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=1_000,
        description="How long the group waits for a silent consumer before giving its partitions to another",
    )
    kafka_max_request_bytes: int = Field(
        default=1_048_576,
        ge=131_072,
        description="The producer's max_request_size: the largest result or dead letter it sends; a "
        "larger dead letter is written truncated",
    )
    max_event_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="An inbound record (key, value and headers) larger than this is dead-lettered "
        "(rule too_large) without being decoded",
    )
    kafka_startup_timeout_seconds: float = Field(
        default=120.0,
        ge=0,
        description="How long a start waits for an unreachable broker (retrying, readiness false) "
        "before the process exits non-zero",
    )
    kafka_allow_auto_create_topics: bool = Field(
        default=False,
        description="Start although a configured topic does not exist (a broker that creates topics "
        "on first use); by default a missing topic refuses the start",
    )
    kafka_transactions: bool = Field(
        default=False,
        description="Commit results, dead letters and the offsets of the events they finish in one "
        "Kafka transaction (exactly once for read_committed consumers); false: at least once",
    )
    kafka_transaction_interval_ms: int = Field(
        default=100,
        ge=10,
        le=60_000,
        description="How often each consumed partition commits a transaction of what it finished",
    )
    kafka_transaction_max_events: int = Field(
        default=1000,
        ge=1,
        description="A partition commits sooner when this many finished events wait for a transaction",
    )
    kafka_transactional_id_prefix: str | None = Field(
        default=None,
        min_length=1,
        description="Prefix of the transactional ids (one per consumed partition); default: the "
        "consumer group id. Instances of one group must share it, other services must not",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(default="PLAIN")
    kafka_sasl_username: str | None = Field(default=None)
    kafka_sasl_password: SecretStr | None = Field(default=None)
    http_host: str = Field(
        default="0.0.0.0", min_length=1, description="Address of the metrics and health endpoints"
    )
    http_port: Port = Field(default=8000, description="Port of /metrics, /healthz and /readyz")
    liveness_stale_seconds: float = Field(
        default=120.0, gt=0, description="/healthz fails when the consume loop made no progress for this long"
    )
    retry_initial_seconds: float = Field(default=0.5, gt=0, description="First backoff after a failure")
    retry_max_seconds: float = Field(default=30.0, gt=0, description="Longest backoff between attempts")
    shutdown_grace_seconds: float = Field(
        default=15.0, ge=0, description="How long a stop waits for events in flight"
    )
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = Field(
        default="INFO", description="DEBUG, INFO, WARNING or ERROR, in any letter case"
    )

    @property
    def kafka_request_timeout_seconds(self) -> float:
        return self.kafka_request_timeout_ms / 1000

    @property
    def transactional_id_prefix(self) -> str:
        return self.kafka_transactional_id_prefix or self.consumer_group_id

    @property
    def longest_amili_attempt_seconds(self) -> float:
        """The longest one attempt at Amili can last: a look-up, then a POST, each up to the total
        timeout. A claim's lease must be longer."""
        return 2 * self.amili_total_timeout_seconds

    @property
    def max_events_running(self) -> int:
        """Events one instance handles at once: as many again as ``max_in_flight``, for those being
        claimed or waiting for a place and those recording and publishing their outcome, so that a
        place freed is taken at once."""
        return 2 * self.max_in_flight


_SECRET_SETTINGS = frozenset(
    name.upper() for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
)
