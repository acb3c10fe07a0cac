"""What the two hand-written baseline consumers share: the same event → Amili request mapping as
the service (its decoder and transform, so the work per event is alike), a plain httpx POST with
the ``x-api-key`` header, and a result record in the service's shape (a structured CloudEvent
with ``time`` and ``data.inbound_event_id``), so the harness measures every contender alike.

No ledger, no retries, no dead letters: what a user writes by hand.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from service.amili.mapping import to_registration
from service.domain.outcomes import Rejection
from service.domain.rules import TransformDefaults
from service.events.cloudevents import STRUCTURED_CONTENT_TYPE
from service.events.contract import InvoiceCreated, decode_invoice_created
from service.events.record import InboundRecord

RESULT_HEADERS = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
REGISTRATIONS_PATH = "/invoice--registrations"
DEFAULTS = TransformDefaults(None, None)


@dataclass(frozen=True, slots=True)
class Options:
    bootstrap: str
    topic: str
    results: str
    group: str
    amili_url: str
    api_key: str
    stats: Path | None
    workers: int


def parse_options(description: str) -> Options:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--topic", required=True, help="invoice-created topic to consume")
    parser.add_argument("--results", required=True, help="topic to publish results to")
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument("--amili-url", required=True, help="base URL of the Amili emulator")
    parser.add_argument("--api-key", default="demo-api-key")
    parser.add_argument("--stats", type=Path, help="write HTTP call statistics (JSON) here on exit")
    parser.add_argument("--workers", type=int, default=1, help="max_workers (FastStream baseline only)")
    return Options(**vars(parser.parse_args()))  # one option per field


@dataclass
class HttpStats:
    calls: int = 0
    seconds: float = 0.0

    def write(self, path: Path | None) -> None:
        if path is not None:
            path.write_text(json.dumps({"http_calls": self.calls, "http_seconds": self.seconds}))


def http_client(base_url: str, api_key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, headers={"x-api-key": api_key}, timeout=30.0)


async def register(
    http: httpx.AsyncClient, record: InboundRecord, stats: HttpStats
) -> tuple[bytes | None, bytes]:
    """POST the event's invoice to Amili; the result record's key and value."""
    created = decode_invoice_created(record)
    assert isinstance(created, InvoiceCreated), "the baseline sends valid invoices only"
    invoice = created.invoice
    creditor = invoice.creditor or ""
    payload = to_registration(invoice, DEFAULTS)
    data: dict[str, Any] = {
        "creditor": creditor,
        "invoice_number": invoice.invoice_number,
        "inbound_event_id": created.event.id,
    }
    if isinstance(payload, Rejection):
        data["outcome"] = "rejected"
    else:
        started = time.perf_counter()
        response = await http.post(REGISTRATIONS_PATH, json=payload.to_wire())
        stats.calls += 1
        stats.seconds += time.perf_counter() - started
        if response.status_code >= 500:
            response.raise_for_status()
        if response.status_code in (200, 201):
            body = response.json()
            data["outcome"] = "registered"
            data["amili"] = {name: body.get(name) for name in ("_id", "_invoice", "_case", "_ocr_number")}
        else:
            data["outcome"] = "rejected"
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "bench-baseline",
        "type": f"bench.registration.{data['outcome']}.v1",
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json",
        "data": data,
    }
    return f"{creditor}/{invoice.invoice_number}".encode(), json.dumps(event).encode()
