"""Baseline: a FastStream 0.7.8 subscriber using its own ``max_workers`` concurrency.

The handler POSTs the invoice to Amili with httpx and publishes the result. The ack policy is
``NACK_ON_ERROR``: the offset is committed after the handler (and its publish) returned, so no
event is lost, which is what a payments consumer needs. With any policy but the default
``ACK_FIRST`` (at-most-once: aiokafka auto-commits before the handler ran), FastStream implements
``max_workers=N`` as N consumers in the group, one event at a time each: the concurrency is capped
at the partition count (FastStream's documentation of ``max_workers`` and ``ack_policy``).

    .venv/bin/python -m bench.faststream_consumer --bootstrap HOST:PORT --topic T --results R \\
        --group G --amili-url http://127.0.0.1:8080 --workers 6 [--stats stats.json]

Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from bench.baseline import RESULT_HEADERS, HttpStats, Options, http_client, parse_options, register
from service.kafka.engine import to_inbound_record


def build(options: Options, stats: HttpStats) -> FastStream:
    quiet = logging.getLogger("bench.faststream")
    quiet.setLevel(logging.WARNING)  # no log line per message, like the service at LOG_LEVEL=WARNING
    broker = KafkaBroker(
        options.bootstrap, acks="all", enable_idempotence=True, logger=quiet, graceful_timeout=5.0
    )
    results = broker.publisher(options.results)
    clients: list[httpx.AsyncClient] = []

    @broker.subscriber(
        options.topic,
        group_id=options.group,
        max_workers=options.workers,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        auto_offset_reset="earliest",
    )
    async def handle(body: Any, message: KafkaMessage) -> None:
        record = message.raw_message
        assert not isinstance(record, tuple)  # not a batch subscriber
        key, value = await register(clients[0], to_inbound_record(record), stats)
        await results.publish(value, key=key, headers={k: v.decode() for k, v in RESULT_HEADERS})

    async def open_http() -> None:
        clients.append(http_client(options.amili_url, options.api_key))

    async def close_http() -> None:
        for client in clients:
            await client.aclose()
        stats.write(options.stats)

    return FastStream(broker, logger=quiet, on_startup=[open_http], after_shutdown=[close_http])


def main() -> None:
    options = parse_options(__doc__.splitlines()[0] if __doc__ else "")
    asyncio.run(build(options, HttpStats()).run(log_level=logging.WARNING))


if __name__ == "__main__":
    main()
