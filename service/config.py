"""Configuration from environment variables: the only place the service reads them.

Every setting's env var is its field name in upper case (``KAFKA_BOOTSTRAP_SERVERS``); the
emulator's carry the prefix ``AMILI_EMULATOR_``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEMO_API_KEY = "demo-api-key"
DEMO_ACCOUNT = "674dbeaf08847b9501cc9132"
DEMO_CREDITOR = "674dbeb208847b9501cc9138"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """The service's settings."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Kafka bootstrap servers, comma separated"
    )
    invoice_created_topic: str = Field(default="invoice-created", description="Topic consumed")
    registration_result_topic: str = Field(
        default="registration-result", description="Topic the outcome of each invoice goes to"
    )
    dead_letter_topic: str = Field(
        default="invoice-created.dead-letter",
        description="Topic for events that cannot be processed, with the reason in headers",
    )
    consumer_group_id: str = Field(default="amili-registrar", description="Kafka consumer group")

    amili_base_url: str = Field(
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
    amili_http_transport: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp", description="HTTP transport under httpx's API"
    )
    amili_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    amili_read_timeout_seconds: float = Field(default=30.0, gt=0)
    amili_total_timeout_seconds: float = Field(default=45.0, gt=0)
    amili_max_connections: int = Field(default=200, ge=1)

    retry_initial_seconds: float = Field(default=0.5, gt=0, description="First backoff after a failure")
    retry_max_seconds: float = Field(default=30.0, gt=0, description="Longest backoff between attempts")
    shutdown_grace_seconds: float = Field(
        default=15.0, ge=0, description="How long a stop waits for events in flight"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")


class EmulatorSettings(BaseSettings):
    """Settings of the Amili emulator."""

    model_config = SettingsConfigDict(env_prefix="AMILI_EMULATOR_", case_sensitive=False, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEMO_API_KEY], description="Accepted x-api-key values, comma separated"
    )
    accounts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEMO_ACCOUNT], description="Known active account ids"
    )
    creditors: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEMO_CREDITOR], description="Known active creditor ids"
    )
    store_path: str | None = Field(
        default=None, description="JSON-lines file that keeps registrations across restarts"
    )
    check_id_numbers: bool = Field(default=False, description="Check Swedish id number checksums")
    latency_ms: float = Field(default=0.0, ge=0, description="Fixed delay before each answer")

    _split = field_validator("api_keys", "accounts", "creditors", mode="before")(_split_commas)
