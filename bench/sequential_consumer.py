"""Baseline: the consumer a user writes by hand with aiokafka and httpx.

One event at a time: fetch, POST to Amili, publish the result, commit that event's offset, next.

    .venv/bin/python -m bench.sequential_consumer --bootstrap HOST:PORT --topic T --results R \\
        --group G --amili-url http://127.0.0.1:8080 [--stats stats.json]

Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.baseline import RESULT_HEADERS, HttpStats, Options, http_client, parse_options, register
from service.kafka.engine import to_inbound_record


async def consume(options: Options, stats: HttpStats) -> None:
    consumer = AIOKafkaConsumer(
        options.topic,
        bootstrap_servers=options.bootstrap,
        group_id=options.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=options.bootstrap, acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    try:
        async with http_client(options.amili_url, options.api_key) as http:
            async for record in consumer:
                key, value = await register(http, to_inbound_record(record), stats)
                await producer.send_and_wait(options.results, value=value, key=key, headers=RESULT_HEADERS)
                await consumer.commit({TopicPartition(record.topic, record.partition): record.offset + 1})
    finally:
        await producer.stop()
        await consumer.stop()


async def main() -> None:
    options = parse_options(__doc__.splitlines()[0] if __doc__ else "")
    stats = HttpStats()
    task = asyncio.create_task(consume(options, stats))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    stats.write(options.stats)


if __name__ == "__main__":
    asyncio.run(main())
