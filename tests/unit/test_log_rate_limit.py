"""The rate limit on third-party log lines: a broker outage must not flood the logs.

One replica wrote 833,300 aiokafka "Unable to update metadata" lines in a four-minute outage.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.protocol.admin import ApiVersionResponse_v0
from aiokafka.protocol.metadata import MetadataResponse_v0

from service.ops.logging import JsonFormatter, RateLimitFilter, configure_logging

METADATA_TEMPLATE = "Unable to update metadata from %s"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _handler(limit: RateLimitFilter) -> tuple[logging.Handler, io.StringIO]:
    """The production formatter and filter on a handler writing into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(limit)
    return handler, buffer


def _emit(handler: logging.Handler, name: str, msg: str, *args: Any, level: int = logging.ERROR) -> None:
    # Straight into the handler: the test sees exactly what the handler's filter lets through,
    # without touching the process-wide logger tree.
    handler.handle(logging.LogRecord(name, level, __file__, 1, msg, args, None))


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, restored after the test reconfigures it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_one_key_gives_one_line_per_window_then_reports_the_suppressed() -> None:
    clock = FakeClock()
    handler, buffer = _handler(RateLimitFilter(window=30.0, clock=clock))

    for i in range(10_000):
        clock.now = 1000.0 + i * 0.002  # 10,000 records inside one 30 s window
        _emit(handler, "aiokafka", METADATA_TEMPLATE, [i])
    first = _lines(buffer)
    assert len(first) == 1
    assert first[0]["message"] == "Unable to update metadata from [0]"
    assert "suppressed" not in first[0]

    clock.now = 1030.0
    _emit(handler, "aiokafka", METADATA_TEMPLATE, [10_000])
    lines = _lines(buffer)
    assert len(lines) == 2
    assert lines[1]["suppressed"] == 9_999
    assert lines[1]["message"] == "Unable to update metadata from [10000]"
    assert lines[1]["logger"] == "aiokafka"
    assert lines[1]["level"] == "error"

    # The count starts again from the line that reported it.
    clock.now = 1031.0
    _emit(handler, "aiokafka", METADATA_TEMPLATE, [10_001])
    clock.now = 1060.0
    _emit(handler, "aiokafka", METADATA_TEMPLATE, [10_002])
    assert [line.get("suppressed") for line in _lines(buffer)] == [None, 9_999, 1]


def test_keys_are_limited_independently() -> None:
    clock = FakeClock()
    handler, buffer = _handler(RateLimitFilter(window=30.0, clock=clock))
    keys: list[tuple[str, int, str, tuple[Any, ...]]] = [
        ("aiokafka", logging.ERROR, METADATA_TEMPLATE, ([0],)),
        ("aiokafka", logging.WARNING, METADATA_TEMPLATE, ([0],)),  # another level
        ("aiokafka.conn", logging.ERROR, METADATA_TEMPLATE, ([0],)),  # another logger
        ("aiokafka", logging.ERROR, "Unable connect to node with id %s: %s", (0, "refused")),
        ("asyncpg.pool", logging.WARNING, "connection lost", ()),
    ]
    for _ in range(100):
        for name, level, msg, args in keys:
            _emit(handler, name, msg, *args, level=level)
    assert len(_lines(buffer)) == len(keys)

    clock.now += 30.0
    _emit(handler, "aiokafka", METADATA_TEMPLATE, 0, level=logging.WARNING)
    last = _lines(buffer)[-1]
    assert (last["level"], last["suppressed"]) == ("warning", 99)


def test_key_table_is_capped_and_keeps_the_keys_still_firing() -> None:
    clock = FakeClock()
    limit = RateLimitFilter(window=30.0, max_keys=3, clock=clock)
    handler, buffer = _handler(limit)

    _emit(handler, "aiokafka", "flood")
    for i in range(1_000):
        _emit(handler, "aiokafka", f"one-off {i}")  # 1,000 templates through a table of 3
        _emit(handler, "aiokafka", "flood")
    assert len(limit._keys) == 3
    # The flood was seen after every one-off, so it was never the oldest and stayed limited.
    assert sum(line["message"] == "flood" for line in _lines(buffer)) == 1


def test_own_loggers_and_unlisted_names_are_never_limited() -> None:
    handler, buffer = _handler(RateLimitFilter(window=30.0, clock=FakeClock()))
    for name in ("service", "service.kafka.engine", "service.registration", "kafkaesque", "root"):
        for i in range(500):
            _emit(handler, name, "Amili did not answer for invoice %s", i)
    assert len(_lines(buffer)) == 5 * 500


def test_configure_logging_limits_third_party_lines_except_at_debug(
    root_logging: logging.Logger,
) -> None:
    configure_logging("INFO")
    assert any(isinstance(f, RateLimitFilter) for f in root_logging.handlers[0].filters)
    configure_logging("WARNING")
    assert any(isinstance(f, RateLimitFilter) for f in root_logging.handlers[0].filters)
    configure_logging("DEBUG")
    assert not root_logging.handlers[0].filters


def _closed_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _bootstrap_broker(dead_port: int) -> asyncio.Server:
    """A stand-in bootstrap server that names one broker, on a port where nobody listens.

    The clients bootstrap, then lose the only broker: the state the replica was in during the
    outage, where aiokafka retries metadata every ``retry_backoff_ms`` and logs each failure.
    """

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                request = await reader.readexactly(size)
                api_key, _, correlation_id = struct.unpack(">hhi", request[:8])
                if api_key == 18:  # ApiVersions: offer version 0 of itself and of Metadata
                    body = ApiVersionResponse_v0(0, [(18, 0, 0), (3, 0, 0)]).encode()
                else:
                    body = MetadataResponse_v0([(0, "127.0.0.1", dead_port)], []).encode()
                response = struct.pack(">i", correlation_id) + body
                writer.write(struct.pack(">i", len(response)) + response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def _outage_lines(bootstrap: str, stream: io.StringIO, seconds: float) -> list[dict[str, Any]]:
    """Log lines written while a real producer and consumer try to reach a dead broker."""
    # 20 ms instead of the default 100 ms between retries: more retries per second of test.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, retry_backoff_ms=20)
    consumer = AIOKafkaConsumer(
        "invoices", bootstrap_servers=bootstrap, group_id="registrar", retry_backoff_ms=20
    )

    async def consume() -> None:
        await consumer.start()  # waits for the topic's metadata, which never comes
        await consumer.getone()

    await producer.start()
    try:
        async with asyncio.timeout(seconds):
            await asyncio.gather(producer.send_and_wait("invoices", b"{}"), consume(), return_exceptions=True)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
        await producer.stop()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_real_aiokafka_outage_is_bounded(root_logging: logging.Logger) -> None:
    server = await _bootstrap_broker(_closed_loopback_port())
    bootstrap = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        configure_logging("INFO")
        handler = root_logging.handlers[0]
        assert isinstance(handler, logging.StreamHandler)

        limited = io.StringIO()
        handler.setStream(limited)
        limited_lines = await _outage_lines(bootstrap, limited, seconds=1.5)

        for installed in handler.filters[:]:
            handler.removeFilter(installed)
        unlimited = io.StringIO()
        handler.setStream(unlimited)
        unlimited_lines = await _outage_lines(bootstrap, unlimited, seconds=1.5)
    finally:
        server.close()
        await server.wait_closed()

    def metadata_failures(lines: list[dict[str, Any]]) -> int:
        return sum(line["message"].startswith("Unable to update metadata") for line in lines)

    # The outage really happened in both runs: aiokafka logged the incident's line.
    assert metadata_failures(limited_lines) >= 1
    assert metadata_failures(unlimited_lines) >= 20
    assert len(limited_lines) < 20
    assert len(unlimited_lines) > 3 * len(limited_lines)
