"""Logs never carry an invoice's personal data, at any level and from any logger, while the
identifiers support needs (invoice numbers, dates, offsets, creditor ids, OCR numbers) stay readable.

An invoice full of personal data goes through the service's real code: the processor, the Amili
client over a real socket (httpx and aiohttp) to the emulator served by uvicorn as the service runs
it (``log_config=None``: its loggers reach ours), the result and dead-letter publishers over the real
broker link, whose producer stands in for aiokafka's and logs what aiokafka logs, with aiokafka's own
format strings and protocol objects (the first 100 bytes of every batch, whole records at DEBUG).
Every line is written by the service's handler and formatter as ``configure_logging`` sets them up,
at INFO and at DEBUG. The last test does the same with the real broker and the whole service.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any, Literal

import aiokafka.conn
import aiokafka.consumer.fetcher
import aiokafka.producer.producer
import pytest
import uvicorn
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import RecordTooLargeError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.protocol.fetch import FetchResponse_v4
from aiokafka.protocol.produce import ProduceRequest, ProduceRequest_v7, ProduceResponse_v7
from pydantic import BaseModel, SecretStr, ValidationError

from devkit.emulator.app import Emulator
from devkit.emulator.settings import DEMO_ACCOUNT, DEMO_API_KEY, DEMO_CREDITOR, EmulatorSettings
from devkit.localkafka import free_port
from service.amili import models as wire
from service.amili.client import AmiliClient, HttpSettings
from service.domain import invoice as canonical
from service.domain.invoice import InvoiceKey
from service.domain.outcomes import Outcome
from service.domain.rules import TransformDefaults
from service.events.record import InboundRecord
from service.kafka.engine import ConsumptionEngine
from service.kafka.link import BrokerLink
from service.kafka.publishing import KafkaDeadLetterPublisher, KafkaResultPublisher
from service.ops.logging import JsonFormatter, configure_logging
from service.ops.personal import PERSONAL, PERSONAL_KEYS, READABLE, STRING_LIST_ONLY_KEYS
from service.ops.redaction import REDACTED, scrub_text
from service.processing import Handled, InvoiceProcessor
from service.registration import Backoff
from tests.unit.test_processing import World

INVOICE_NUMBER = "123456789012"  # twelve digits: the old digit patterns took it for an id number
OCR_NUMBER = "12345678901234567890"  # twenty digits
FIRST_OFFSET = 1234567890
RESULTS, DEAD_LETTERS, SOURCE = "registration-result", "dead-letter", "invoice-created"
THIRD_PARTY = ("aiokafka", "httpx", "httpcore", "aiohttp", "uvicorn", "asyncio")

PERSONAL_VALUES = (
    "Astrid",
    "Lindqvist",
    "Storgatan",
    "Lgh 1102",
    "191 47",
    "Sundbyberg",
    "astrid.lindqvist@example.se",
    "+46701234567",
    "070-123 45 67",
    "811218-9876",
    "8112189876",
    "811218-9875",
    "ABC 123",
    "sommarstuga",
    "Obetald",
    "Routern",
    "Holmgren",
    "Erik Berg",
)


def personal_event(invoice_number: str = INVOICE_NUMBER, id_number: str = "811218-9876") -> dict[str, Any]:
    """An invoice-created event with every personal field of the invoice filled in."""
    return {
        "specversion": "1.0",
        "id": f"evt-{invoice_number}",
        "source": "urn:billing:test",
        "type": "billing.invoice.created.v1",
        "time": "2026-11-20T09:00:00Z",
        "datacontenttype": "application/json",
        "subject": invoice_number,
        "data": {
            "invoice_number": invoice_number,
            "issue_date": "2026-11-20",
            "due_date": "2026-12-20",
            "customer": {
                "type": "person",
                "name": "Astrid Lindqvist",
                "id_number": id_number,
                "address": {
                    "lines": ["Storgatan 12", "Lgh 1102"],
                    "postal_code": "191 47",
                    "city": "Sundbyberg",
                    "country": "SE",
                },
                "mobile_number": "+46701234567",
                "email": "astrid.lindqvist@example.se",
                "car_registration": {"number": "ABC 123", "country": "SE"},
            },
            "headline": "Bredband till Astrids sommarstuga",
            "body_text": "Frågor? Ring 070-123 45 67 eller skriv till astrid.lindqvist@example.se",
            "debt_description": "Obetald faktura för Storgatan 12",
            "custom_column_headlines": ["Beställare"],
            "lines": [
                {
                    "description": "Routern hos Lindqvist",
                    "total_excluding_vat": 399.0,
                    "vat_rate": 25,
                    "custom_columns": ["Erik Berg"],
                    "extra_rows": ["Installerad av Berit Holmgren"],
                }
            ],
            "references": {
                "your_reference": "Astrid Lindqvist",
                "our_reference": "Erik Berg",
                "your_contact": "Berit Holmgren",
            },
        },
    }


def leaks(text: str) -> list[str]:
    return [value for value in PERSONAL_VALUES if value in text]


# The list of personal fields ----------------------------------------------------------------------


def _models(module: Any, base: type[BaseModel]) -> list[type[BaseModel]]:
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, base) and value is not base
    ]


@pytest.mark.parametrize(
    "model",
    [*_models(canonical, canonical._Canonical), *_models(wire, wire._Request)],
    ids=lambda model: f"{model.__module__.rsplit('.', 1)[-1]}.{model.__qualname__}",
)
def test_every_field_of_the_invoice_and_of_amilis_request_is_classified(model: type[BaseModel]) -> None:
    """A field added to either model fails here until service/ops/personal.py says what it is."""
    personal, readable = PERSONAL.get(model, frozenset()), READABLE.get(model, frozenset())
    assert not personal & readable
    assert personal | readable == set(model.model_fields)


def test_the_personal_keys_are_what_the_issue_names_and_identifiers_are_not() -> None:
    for name in ("name", "address", "lines", "city", "postal_code", "zip_code", "id_number", "email"):
        assert name in PERSONAL_KEYS
    for name in ("mobile_number", "headline", "invoice_body_text", "debt_description", "description"):
        assert name in PERSONAL_KEYS
    for name in ("article_description", "extra_rows", "your_reference", "our_reference", "your_contact"):
        assert name in PERSONAL_KEYS
    for name in ("invoice_number", "creditor", "account", "issue_date", "due_date", "customer_number"):
        assert name not in PERSONAL_KEYS
    # The one name personal in a model and readable in another: an address's lines, an invoice's.
    assert {"lines"} == STRING_LIST_ONLY_KEYS


# Free text: what is masked and what is not ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "Astrid Lindqvist", "invoice_number": "123456789012"}',
         '{"name": "[redacted]", "invoice_number": "123456789012"}'),
        ("{'city': 'Sundbyberg', 'lines': ['Storgatan 12', 'Lgh 1102'], 'country': 'SE'}",
         "{'city': '[redacted]', 'lines': [redacted], 'country': 'SE'}"),
        ('"lines": [{"description": "Routern", "total_excluding_vat": 399.0}]',
         '"lines": [{"description": "[redacted]", "total_excluding_vat": 399.0}]'),
        ("Customer(name='Astrid Lindqvist', customer_number='C-20931', id_number='811218-9876')",
         "Customer(name='[redacted]', customer_number='C-20931', id_number='[redacted]')"),
        ("customer.id_number\n  Value error [type=value_error, input_value='811218-9875', input_type=str]",
         "customer.id_number\n  Value error [type=value_error, input_value='[redacted]', input_type=str]"),
        ('{\\"body_text\\": \\"Ring mig\\"}', '{\\"body_text\\": \\"[redacted]\\"}'),
        ('{"data":{"customer":{"name":"Astrid Li', '{"data":{"customer":{"name":"[redacted]"'),
        ("write to astrid.lindqvist@example.se", "write to [redacted]"),
        ("ids 811218-9876 811218+9876 198112189876 8112189876 556036-0793 165560360793",
         "ids [redacted] [redacted] [redacted] [redacted] [redacted] [redacted]"),
        ("call 070-123 45 67 or +46701234567 or 0046701234567",
         "call [redacted] or [redacted] or [redacted]"),
        ("x-api-key: s3cr3t, Authorization: Bearer abc.def.ghi, password=hunter2",
         "x-api-key: [redacted], Authorization: [redacted], password=[redacted]"),
        # Identifiers, dates, amounts and times stay as they are.
        ("invoice 123456789012 ocr 12345678901234567890 offset 1234567890 at 1732093200000 ms",
         "invoice 123456789012 ocr 12345678901234567890 offset 1234567890 at 1732093200000 ms"),
        ("issued 2026-11-20, due 2026-12-20T09:00:00+01:00, 01-12-2026, Fri, 20 Nov 2026 00:00:00 GMT",
         "issued 2026-11-20, due 2026-12-20T09:00:00+01:00, 01-12-2026, Fri, 20 Nov 2026 00:00:00 GMT"),
        ("creditor 674dbeb208847b9501cc9138 event 7d1c2a4e-0000-4000-8000-000000000001 amount 13800.00",
         "creditor 674dbeb208847b9501cc9138 event 7d1c2a4e-0000-4000-8000-000000000001 amount 13800.00"),
        ("invoice numbers 2026112000421 5560360794 1234567890",
         "invoice numbers 2026112000421 5560360794 1234567890"),
        # Payloads: long bytes literals go whatever they hold; short ones stay, scrubbed.
        ("value=b'Astrid Lindqvist;Storgatan 12;Sundbyberg'", "value=b'[payload]'"),
        ("(b'HTTP/1.1', 201, b'Created', [(b'content-type', b'application/json')])",
         "(b'HTTP/1.1', 201, b'Created', [(b'content-type', b'application/json')])"),
        ("key=b'{\"name\":\"Ann\"}'", "key=b'{\"name\":\"[redacted]\"}'"),
    ],
)  # fmt: skip
def test_free_text_is_scrubbed_of_personal_values_only(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


# The service's logging, set up as it runs ----------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[Captured]:
    """``configure_logging`` as the service calls it, its handler writing into a buffer; every
    logger's level and the root's handlers are restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    names = [*THIRD_PARTY, "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "service"]
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate) for name in names}
    capture = Captured()
    yield capture
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, (level, propagate) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).propagate = propagate


class Captured:
    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def configure(self, level: Literal["INFO", "DEBUG"]) -> None:
        configure_logging(level)
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        assert isinstance(handler.formatter, JsonFormatter)
        handler.setStream(self.buffer)
        # The service's own loggers and the third-party ones at the level asked for (a test run, or
        # an earlier test, may have set any of them otherwise).
        for name in (*THIRD_PARTY, "service"):
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).propagate = True

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]


def test_our_event_handled_line_keeps_every_identifier(captured: Captured) -> None:
    """The engine's own line, through its own code: nothing in it is masked."""
    captured.configure("INFO")
    record = InboundRecord(SOURCE, 7, FIRST_OFFSET, None, b"{}")
    prepared = SimpleNamespace(record=record)
    handled = Handled(Outcome.REGISTERED, attempts=1, key=InvoiceKey(DEMO_CREDITOR, INVOICE_NUMBER))
    ConsumptionEngine._log_handled(TopicPartition(SOURCE, 7), prepared, handled, 0.0123)  # type: ignore[arg-type]
    (line,) = captured.lines()
    assert line["message"] == "event handled"
    assert line["invoice_number"] == INVOICE_NUMBER
    assert line["creditor"] == DEMO_CREDITOR
    assert (line["topic"], line["partition"], line["offset"]) == (SOURCE, 7, FIRST_OFFSET)
    assert REDACTED not in captured.text


def test_our_fields_are_redacted_by_key_and_free_text_fields_scrubbed(captured: Captured) -> None:
    captured.configure("INFO")
    customer = personal_event()["data"]["customer"]
    logging.getLogger("service.test").warning(
        "registered",
        extra={
            "invoice_number": INVOICE_NUMBER,
            "issue_date": "2026-11-20",
            "due_date": "2026-12-20",
            "ocr_number_ocr": OCR_NUMBER,
            "offset": FIRST_OFFSET,
            "customer": customer,
            "email": "astrid.lindqvist@example.se",
            "billing_address": "Storgatan 12",
            "api_key": "amili-live-key",
            "details": {"name": "Astrid Lindqvist", "invoice_number": INVOICE_NUMBER},
            "error": f"AmiliRejected(422, {{'customer.name': 'Astrid Lindqvist'}}) for {INVOICE_NUMBER}",
        },
    )
    (line,) = captured.lines()
    assert not leaks(captured.text)
    assert "amili-live-key" not in captured.text
    assert line["invoice_number"] == INVOICE_NUMBER
    assert (line["issue_date"], line["due_date"]) == ("2026-11-20", "2026-12-20")
    assert line["ocr_number_ocr"] == OCR_NUMBER
    assert line["offset"] == FIRST_OFFSET
    assert line["customer"] == line["email"] == line["billing_address"] == line["api_key"] == REDACTED
    assert line["details"] == {"name": REDACTED, "invoice_number": INVOICE_NUMBER}
    assert line["error"] == f"AmiliRejected(422, {{'customer.name': '{REDACTED}'}}) for {INVOICE_NUMBER}"


def test_a_library_logging_through_a_logger_of_ours_is_scrubbed(captured: Captured) -> None:
    """FastStream is given ``service.app``: what counts is the code that wrote the message."""
    captured.configure("DEBUG")
    logger = logging.getLogger("service.app")
    record = logger.makeRecord(
        "service.app",
        logging.INFO,
        "/site-packages/faststream/app.py",
        1,
        "received %s",
        ('{"name": "Astrid"}',),
        None,
    )
    logger.handle(record)
    assert not leaks(captured.text)
    assert captured.lines()[0]["message"] == f'received {{"name": "{REDACTED}"}}'


# aiokafka, as it logs --------------------------------------------------------------------------------

SENDING = "Sending (key=%s value=%s) to %s"
REQUEST = "Request to %s:%d %d: %s"
RESPONSE = "Response from %s:%d %d: %s"
FETCHING = "Adding fetch request for partition %s at offset %d"


def test_the_aiokafka_formats_used_here_are_aiokafkas() -> None:
    """If aiokafka changes what it logs, the stand-in below must follow."""
    assert SENDING in inspect.getsource(aiokafka.producer.producer)
    assert REQUEST in inspect.getsource(aiokafka.conn)
    assert RESPONSE in inspect.getsource(aiokafka.conn)
    assert FETCHING in inspect.getsource(aiokafka.consumer.fetcher)


PRODUCER_LOG = logging.getLogger("aiokafka.producer.producer")
CONN_LOG = logging.getLogger("aiokafka.conn")
FETCHER_LOG = logging.getLogger("aiokafka.consumer.fetcher")


def batch_of(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> bytes:
    """A record batch as aiokafka's producer builds it."""
    builder = BatchBuilder(batch_size=16384, compression_type=0, is_transactional=False)
    builder.append(timestamp=None, key=key, value=value, headers=headers)
    return bytes(builder._build())


class AiokafkaProducerStandIn:
    """What the broker link uses of AIOKafkaProducer, logging at each send what aiokafka's producer
    and connection log: the record (``Sending (key=%s value=%s) to %s``), then the produce request
    and its response as aiokafka's protocol objects (the batch's first 100 bytes in their repr)."""

    def __init__(self, refuse_over: int) -> None:
        self.refuse_over = refuse_over
        self.client = SimpleNamespace(cluster=SimpleNamespace(leader_for_partition=lambda partition: 1))
        self.sent: list[tuple[str, bytes | None]] = []
        self.correlation = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        PRODUCER_LOG.debug(SENDING, key, value, TopicPartition(topic, 0))
        if value is not None and len(value) > self.refuse_over:
            raise RecordTooLargeError("the record is too large")
        self.correlation += 1
        request = ProduceRequest(None, -1, 30000, [(topic, [(0, batch_of(key, value, headers or []))])])
        CONN_LOG.debug(REQUEST, "127.0.0.1", 9092, self.correlation, request.build(ProduceRequest_v7))
        response = ProduceResponse_v7([(topic, [(0, 0, len(self.sent), -1, 0)])], 0)
        CONN_LOG.debug(RESPONSE, "127.0.0.1", 9092, self.correlation, response)
        self.sent.append((topic, value))


def fetched(record: InboundRecord) -> None:
    """What aiokafka's consumer logs on the way to ``record``: the fetch at its offset and the
    response carrying its batch."""
    partition = TopicPartition(record.topic, record.partition)
    FETCHER_LOG.debug(FETCHING, partition, record.offset)
    batch = batch_of(record.key, record.value, list(record.headers))
    response = FetchResponse_v4(
        0, [(record.topic, [(0, 0, record.offset + 1, record.offset + 1, None, batch)])]
    )
    CONN_LOG.debug(RESPONSE, "127.0.0.1", 9092, 1, response)
    consumer_record = ConsumerRecord(
        record.topic, 0, record.offset, 0, 0, record.key, record.value, None, len(record.value or b""), -1,
        list(record.headers),
    )  # fmt: skip
    # Not a line of aiokafka's own: a record logged whole, as a library or a debugging session may.
    logging.getLogger("aiokafka.consumer.consumer").debug("Returning fetched record %s", consumer_record)


@contextlib.asynccontextmanager
async def emulator_served_like_the_service(level: str) -> AsyncIterator[str]:
    """The emulator under uvicorn configured as the service configures its own server
    (``log_config=None``: uvicorn's loggers propagate to the service's handler), access log on."""
    settings = EmulatorSettings(port=free_port(), api_keys=[DEMO_API_KEY], check_id_numbers=True)
    config = uvicorn.Config(
        Emulator(settings).app(),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=level.lower(),
        access_log=True,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the emulator did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://{settings.host}:{settings.port}"
    finally:
        server.should_exit = True
        await task


def inbound(
    offset: int, value: bytes, content_type: bytes = b"application/cloudevents+json"
) -> InboundRecord:
    return InboundRecord(SOURCE, 0, offset, None, value, (("content-type", content_type),))


def records_full_of_personal_data() -> list[InboundRecord]:
    registered = json.dumps(personal_event()).encode()
    rejected = json.dumps(personal_event("123456789013", id_number="811218-9875")).encode()
    not_json = b"Astrid Lindqvist;Storgatan 12;191 47 Sundbyberg;811218-9876;astrid.lindqvist@example.se"
    huge_event = personal_event("123456789014")
    huge_event["data"]["body_text"] = "Storgatan 12, Sundbyberg. " * 4000
    too_large_and_cut = json.dumps(huge_event).encode()[:-2]  # not JSON: a dead letter, written truncated
    return [
        inbound(FIRST_OFFSET, registered),
        inbound(FIRST_OFFSET + 1, rejected),
        inbound(FIRST_OFFSET + 2, not_json, b"text/csv"),
        inbound(FIRST_OFFSET + 3, too_large_and_cut),
    ]


async def process_through_the_service(
    transport: Literal["httpx", "aiohttp"], level: str
) -> AiokafkaProducerStandIn:
    producer = AiokafkaProducerStandIn(refuse_over=80_000)
    link = BrokerLink(lambda: producer, topics=[RESULTS, DEAD_LETTERS], request_timeout_seconds=5)
    await link.start()
    world = World()
    world.ledger.failures_to_inject = 1  # "ledger unavailable, retrying", with the ledger's error
    try:
        async with (
            emulator_served_like_the_service(level) as url,
            AmiliClient(
                url, SecretStr(DEMO_API_KEY), HttpSettings(total_timeout_seconds=5, transport=transport)
            ) as client,
        ):
            processor = InvoiceProcessor(
                registration=world.registration(world.owner, amili=client),
                ledger=world.ledger,
                results=KafkaResultPublisher(link, RESULTS),
                dead_letters=KafkaDeadLetterPublisher(link, DEAD_LETTERS),
                defaults=TransformDefaults(account=DEMO_ACCOUNT, creditor=DEMO_CREDITOR),
                clock=world.clock,
                backoff=Backoff(initial_seconds=0.01, max_seconds=0.01),
                sleep=world.sleep,
            )
            for record in records_full_of_personal_data():
                fetched(record)
                started = time.monotonic()
                prepared = processor.prepare(record)
                handled = await processor.handle(prepared)
                partition = TopicPartition(record.topic, record.partition)
                ConsumptionEngine._log_handled(partition, prepared, handled, time.monotonic() - started)
    finally:
        await link.stop()
    # What the consume loop writes when processing fails: a traceback, here one quoting the invoice.
    data = personal_event()["data"]
    data["due_date"] = data["customer"]["name"]  # not on the line a traceback quotes
    try:
        canonical.Invoice.model_validate(data)
    except ValidationError as error:
        extra = {"topic": SOURCE, "partition": 0, "offset": FIRST_OFFSET, "invoice_number": INVOICE_NUMBER}
        logging.getLogger("service.kafka.engine").error(
            "processing failed; retrying", exc_info=error, extra=extra
        )
    return producer


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_an_invoice_full_of_personal_data_leaves_none_in_the_logs(
    captured: Captured, level: Literal["INFO", "DEBUG"], transport: Literal["httpx", "aiohttp"]
) -> None:
    captured.configure(level)
    producer = await process_through_the_service(transport, level)

    # The records went where they should, the dead letters with their personal data: the
    # redaction is the log's only.
    topics = [topic for topic, _ in producer.sent]
    assert topics == [RESULTS, RESULTS, DEAD_LETTERS, DEAD_LETTERS]
    assert all(leaks((value or b"").decode(errors="replace")) for _, value in producer.sent[2:])

    text, lines = captured.text, captured.lines()
    assert not leaks(text), f"the log leaks {leaks(text)}"
    messages = [line["message"] for line in lines]
    handled = [line for line in lines if line["message"] == "event handled"]
    assert [line["offset"] for line in handled] == [FIRST_OFFSET + n for n in range(4)]
    assert [line["outcome"] for line in handled] == [
        "registered",
        "rejected",
        "dead_lettered",
        "dead_lettered",
    ]
    assert handled[0]["invoice_number"] == INVOICE_NUMBER
    assert handled[0]["creditor"] == DEMO_CREDITOR
    assert "ledger unavailable, retrying" in messages
    truncated = next(line for line in lines if line["message"] == "dead letter too large: written truncated")
    assert truncated["offset"] == FIRST_OFFSET + 3
    failure = next(line for line in lines if line["message"] == "processing failed; retrying")
    assert "due_date" in failure["exception"]
    assert REDACTED in failure["exception"]
    assert failure["invoice_number"] == INVOICE_NUMBER
    if level == "INFO":
        assert not any(line["level"] == "debug" for line in lines)
        return

    # At DEBUG the libraries did log the records and the requests, without their contents.
    third_party = [line for line in lines if line["logger"].startswith(THIRD_PARTY)]
    sending = [line["message"] for line in third_party if line["message"].startswith("Sending (key=")]
    assert len(sending) == 5  # the too-large dead letter twice: whole (refused), then truncated
    assert all("value=[payload " in message for message in sending)
    requests = [line["message"] for line in third_party if "ProduceRequest_v7" in line["message"]]
    assert len(requests) == 4
    assert all("b'[payload]'" in message for message in requests)
    assert any(f"at offset {FIRST_OFFSET}" in message for message in messages)  # the fetcher's
    assert any("FetchResponse_v4" in message for message in messages)
    assert any(line["logger"] == "aiokafka.consumer.consumer" for line in third_party)
    assert any(line["logger"].startswith("uvicorn") for line in third_party)
    if transport == "httpx":  # aiohttp's client logs nothing on a request that goes well
        assert any(line["logger"].startswith("httpcore") for line in third_party)


# With the real broker and the whole service ----------------------------------------------------------


@pytest.mark.kafka
async def test_the_whole_service_at_debug_on_a_real_broker_logs_no_personal_data(
    captured: Captured, kafka_bootstrap_servers: str, emulator: tuple[str, Emulator], unique_name: str
) -> None:
    """``build_registrar`` at LOG_LEVEL=DEBUG with every library at DEBUG: aiokafka logs the records
    it sends and the batches it fetches and produces, for real."""
    from service.bootstrap import build_registrar
    from tests.integration.harness import kafka_producer, read_records, settings_for

    captured.configure("DEBUG")
    amili_url, _ = emulator
    settings = settings_for(
        kafka_bootstrap_servers,
        amili_url,
        unique_name,
        amili_default_account=DEMO_ACCOUNT,
        amili_default_creditor=DEMO_CREDITOR,
    )
    not_json = b"Astrid Lindqvist;Storgatan 12;191 47 Sundbyberg;811218-9876"
    async with kafka_producer(kafka_bootstrap_servers) as producer:
        for value in (json.dumps(personal_event()).encode(), not_json):
            await producer.send_and_wait(
                settings.invoice_created_topic,
                value,
                headers=[("content-type", b"application/cloudevents+json")],
            )
    async with build_registrar(settings).app:
        results = await read_records(kafka_bootstrap_servers, settings.registration_result_topic, count=1)
        dead = await read_records(kafka_bootstrap_servers, settings.dead_letter_topic, count=1)
        for _ in range(100):  # the "event handled" lines follow the sends by a moment
            if captured.text.count('"event handled"') >= 2:
                break
            await asyncio.sleep(0.05)

    assert len(results) == len(dead) == 1
    assert json.loads(results[0].value or b"")["data"]["invoice_number"] == INVOICE_NUMBER
    assert dead[0].value == not_json  # the dead letter carries the record as it came
    text, lines = captured.text, captured.lines()
    assert not leaks(text), f"the log leaks {leaks(text)}"
    handled = sorted(
        (line for line in lines if line["message"] == "event handled"), key=lambda line: line["offset"]
    )
    assert [(line["offset"], line["outcome"]) for line in handled] == [
        (0, "registered"),
        (1, "dead_lettered"),
    ]
    assert handled[0]["invoice_number"] == INVOICE_NUMBER
    sending = [line["message"] for line in lines if line["message"].startswith("Sending (key=")]
    assert len(sending) >= 2
    assert all("value=[payload " in message for message in sending)
    assert any(line["logger"] == "aiokafka.conn" and "b'[payload]'" in line["message"] for line in lines)
