"""Files of invoice-created events, and the Kafka records they become.

A file is a JSON array, a JSON object or NDJSON; each item is a whole CloudEvent (it has
``specversion``) or a bare canonical invoice, wrapped into a new ``invoice-created`` CloudEvent.
``validate`` reads such a file and judges each event as the record ``encode`` makes of it; the
development command ``produce`` (in ``devkit``) sends the same records, so both agree on what a
file means. It lives here, with the operator commands, because ``validate`` ships in the image.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.domain.invoice import InvoiceKey
from service.events.cloudevents import JSON_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE
from service.events.contract import INVOICE_CREATED_TYPE

Headers = list[tuple[str, bytes]]


def read_events(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        items = json.loads(text)
    elif path.suffix == ".json" and stripped.startswith("{"):
        try:
            items = [json.loads(text)]
        except json.JSONDecodeError:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not all(isinstance(item, dict) for item in items):
        raise ValueError(f"{path.name}: every item must be a JSON object")
    return [as_cloudevent(item) for item in items]


def as_cloudevent(item: dict[str, Any]) -> dict[str, Any]:
    if "specversion" in item:
        return item
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "urn:amili-registrar:produce",
        "type": INVOICE_CREATED_TYPE,
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": JSON_CONTENT_TYPE,
        "data": item,
    }


def event_key(event: dict[str, Any]) -> bytes | None:
    data = event.get("data")
    if isinstance(data, dict) and "invoice_number" in data:
        return str(InvoiceKey(data.get("creditor", ""), data["invoice_number"])).encode()
    return None


def encode(event: dict[str, Any], *, binary: bool) -> tuple[bytes, Headers]:
    """The record value and headers of ``event`` in structured or binary CloudEvents mode."""
    if not binary:
        return json.dumps(event).encode(), [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
    headers: Headers = [
        (f"ce_{name}", str(value).encode())
        for name, value in event.items()
        if name not in ("data", "datacontenttype")
    ]
    headers.append(("content-type", JSON_CONTENT_TYPE.encode()))
    return json.dumps(event.get("data")).encode(), headers
