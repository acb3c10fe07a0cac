"""The start against the Kafka cluster: wait for it (bounded), then check the topics exist.

A broker that cannot be reached at start is waited for with capped, jittered backoff, one log line
per attempt, for ``KAFKA_STARTUP_TIMEOUT_SECONDS``; the health endpoints answer meanwhile (readiness
false, saying so). Past that the start fails with one line and the process exits non-zero, so that
the orchestrator's restart backoff takes over and the pod's state says what is wrong.

A topic that does not exist is refused at start (a typo would otherwise consume an idle topic on a
broker that creates topics on first use, and report ready) unless
``KAFKA_ALLOW_AUTO_CREATE_TOPICS`` says the broker is meant to create them.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from service.config import Settings
from service.kafka.link import BROKER_ERRORS
from service.registration import Backoff

log = logging.getLogger(__name__)

STARTUP_BACKOFF = Backoff(initial_seconds=1.0, max_seconds=15.0)


class StartupRefused(Exception):
    """The start cannot go on: a setting the cluster contradicts (a missing topic)."""


class BrokerUnreachable(Exception):
    """The cluster did not answer within ``KAFKA_STARTUP_TIMEOUT_SECONDS``."""


def describe_error(error: BaseException) -> str:
    """``KafkaConnectionError: Unable to bootstrap from ...`` on one line."""
    kind, text = error.__class__.__name__, " ".join(str(error).split())[:300]
    if not text:
        return kind
    return text if text.startswith(kind) else f"{kind}: {text}"


class ClusterWait:
    """Where the wait for the cluster stands, for readiness and the log."""

    def __init__(self) -> None:
        self.attempts = 0
        self.since: float | None = None
        self.last_error = ""
        self.done = False

    @property
    def detail(self) -> str:
        if self.done or self.since is None:
            return ""
        waited = time.monotonic() - self.since
        return (
            f"waiting for the broker at start for {waited:.0f}s ({self.attempts} attempts): {self.last_error}"
        )


def admin_client(settings: Settings, security: Mapping[str, Any]) -> AIOKafkaAdminClient:
    """An admin client connecting as the service's other clients do (``security``: aiokafka's
    connection options); to be made inside the running loop and closed by the caller."""
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="amili-registrar",
        request_timeout_ms=settings.kafka_request_timeout_ms,
        **security,
    )


async def list_topics(settings: Settings, security: Mapping[str, Any]) -> set[str]:
    """The topics the cluster has; raises what an unreachable broker raises."""
    admin = admin_client(settings, security)
    try:
        async with asyncio.timeout(settings.kafka_request_timeout_seconds):
            await admin.start()
            return set(await admin.list_topics())
    finally:
        await admin.close()


async def wait_for_cluster(
    settings: Settings,
    security: Mapping[str, Any],
    *,
    state: ClusterWait | None = None,
    list_cluster_topics: Callable[[Settings, Mapping[str, Any]], Awaitable[set[str]]] = list_topics,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> set[str]:
    """The cluster's topics, once it answers; ``BrokerUnreachable`` after the startup timeout."""
    state = state or ClusterWait()
    state.since = clock()
    deadline = state.since + settings.kafka_startup_timeout_seconds
    rng = random.Random()
    while True:
        state.attempts += 1
        try:
            topics = await list_cluster_topics(settings, security)
        except BROKER_ERRORS as error:
            state.last_error = describe_error(error)
            left = deadline - clock()
            if left <= 0:
                raise BrokerUnreachable(
                    f"Kafka at {settings.kafka_bootstrap_servers} did not answer for "
                    f"{settings.kafka_startup_timeout_seconds:g}s (KAFKA_STARTUP_TIMEOUT_SECONDS): "
                    f"{state.last_error}"
                ) from error
            pause = min(STARTUP_BACKOFF.delay(state.attempts, rng), left)
            log.warning(
                f"Kafka at {settings.kafka_bootstrap_servers} unreachable at start (attempt "
                f"{state.attempts}); retrying in {pause:.1f}s, giving up in {left:.0f}s: {state.last_error}",
                extra={"attempt": state.attempts},
            )
            await sleep(pause)
            continue
        if state.attempts > 1:
            log.info(f"Kafka at {settings.kafka_bootstrap_servers} answered after {state.attempts} attempts")
        state.done = True
        return topics


def missing_topics(settings: Settings, existing: set[str]) -> str | None:
    """One line naming each configured topic the cluster lacks, with a likely intended name."""
    problems = []
    for variable, topic in (
        ("INVOICE_CREATED_TOPIC", settings.invoice_created_topic),
        ("REGISTRATION_RESULT_TOPIC", settings.registration_result_topic),
        ("DEAD_LETTER_TOPIC", settings.dead_letter_topic),
    ):
        if topic in existing:
            continue
        close = difflib.get_close_matches(topic, sorted(t for t in existing if not t.startswith("__")), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{variable}: topic {topic!r} does not exist{hint}")
    if not problems:
        return None
    return (
        "; ".join(problems)
        + ": create it, correct the name, or set KAFKA_ALLOW_AUTO_CREATE_TOPICS=true if the broker "
        "is meant to create topics on first use"
    )


class WaitingKafkaBroker(KafkaBroker):
    """FastStream's Kafka broker, connected only once ``before_connect`` is done: the service's
    HTTP endpoints answer meanwhile (FastStream starts its brokers after the ASGI start-up), so a
    start that waits for the cluster shows in readiness."""

    def __init__(self, *args: Any, before_connect: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._before_connect = before_connect

    async def start(self) -> None:
        await self._before_connect()
        await super().start()
