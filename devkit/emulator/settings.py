"""The Amili emulator's settings (``AMILI_EMULATOR_*``) and the demo identities it knows.

The demo, the chaos run, the benchmarks and the tests start the emulator with these ids and key
and send invoices that carry them; the service itself knows none of them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEMO_API_KEY = "demo-api-key"
DEMO_ACCOUNT = "674dbeaf08847b9501cc9132"
DEMO_CREDITOR = "674dbeb208847b9501cc9138"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


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
    access_log: bool = Field(default=True, description="Log a line per request (the benchmark turns it off)")
    inactive_accounts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Known account ids that are not active (registrations refused)"
    )
    inactive_creditors: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Known creditor ids that are not active (registrations refused)"
    )

    # Token exchange (GET /authenticates/api-code)
    api_code_keys: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object: api_code -> public key (PEM text, or the path of a PEM file) that "
        "verifies the JWTs exchanged for access tokens",
    )
    access_token_lifetime_seconds: int = Field(
        default=3600, gt=0, description="Lifetime of access tokens issued by the token exchange"
    )

    # Fault injection (API routes only; changeable at run time through /_admin/faults)
    latency_ms: float = Field(default=0.0, ge=0, description="Fixed delay before each answer")
    latency_median_ms: float = Field(
        default=0.0, ge=0, description="Median of an extra log-normal delay (0: none)"
    )
    latency_p99_ms: float = Field(
        default=0.0, ge=0, description="99th percentile of the log-normal delay (0: the median, fixed)"
    )
    error_500_rate: float = Field(default=0.0, ge=0, le=1, description="Share of requests answered 500")
    error_502_rate: float = Field(default=0.0, ge=0, le=1, description="Share of requests answered 502")
    error_503_rate: float = Field(default=0.0, ge=0, le=1, description="Share of requests answered 503")
    error_after_store_ratio: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of the injected 500/502/503 answers to a POST given after the registration "
        "was stored (a gateway losing the answer)",
    )
    throttle_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of requests answered 429 with Retry-After"
    )
    retry_after_seconds: int = Field(default=1, ge=0, description="Retry-After of the injected 429s")
    hang_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of requests handled (stored) but never answered"
    )
    hang_mode: Literal["sleep", "reset"] = Field(
        default="sleep",
        description="How a hang ends: sleep (no answer for hang_seconds) or reset (the connection is "
        "dropped in the middle of the answer)",
    )
    hang_seconds: float = Field(
        default=3600.0, ge=0, description="How long a hang in sleep mode holds the answer back"
    )
    fail_next_count: int = Field(
        default=0, ge=0, description="The next N API requests are answered fail_next_status"
    )
    fail_next_status: int = Field(default=503, ge=400, le=599, description="Status of fail_next_count")
    fault_seed: int | None = Field(
        default=None, description="Seed of the fault injector's random generator (reproducible runs)"
    )
    # Capacity model (overload): the rate limit answers first, then the capacity queue
    capacity: int = Field(
        default=0,
        ge=0,
        description="API requests worked on at once; the others wait in FIFO order, the injected "
        "latency spent holding a place (throughput at most capacity / latency); 0: no limit",
    )
    rate_limit: float = Field(
        default=0.0,
        ge=0,
        description="Requests per second allowed per API key (access tokens: per api code), counted "
        "in fixed windows; over it 429 at once with X-RateLimit-*; 0: no limit",
    )
    rate_limit_window_seconds: int = Field(
        default=1,
        ge=1,
        description="The rate limit's window, aligned on the epoch clock; each allows "
        "max(1, round(rate_limit * window)) requests",
    )
    rate_limit_retry_after: bool = Field(
        default=True, description="Whether the rate limit's 429s carry Retry-After"
    )

    _split = field_validator(
        "api_keys", "accounts", "creditors", "inactive_accounts", "inactive_creditors", mode="before"
    )(_split_commas)
