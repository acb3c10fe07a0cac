"""CloudEvents 1.0 over Kafka: structured mode (the whole event as JSON) and binary mode (``ce_*``
headers with the data as the record value), as the CloudEvents Kafka protocol binding defines them.

A record with a ``ce_specversion`` header is binary mode; any other is read as structured mode, a
record without headers included (many producers set none). Either way the data must be JSON: a
content type that says otherwise (``datacontenttype`` in structured mode, the ``content-type``
header in binary mode) is refused, whatever the bytes look like.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from service.events.record import InboundRecord

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
JSON_CONTENT_TYPE = "application/json"
MAX_JSON_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class CloudEvent(BaseModel):
    """The attributes we require (``id``, ``source``, ``type``, ``specversion``, ``time``) plus data."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: str = Field(pattern=r"^1\.0$")
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: AwareDatetime
    subject: str | None = None
    datacontenttype: str | None = None
    data: Any = None

    def to_structured(self) -> bytes:
        """The event as one JSON document, for the record value in structured mode."""
        return self.model_dump_json(exclude_none=True).encode()


class EnvelopeError(ValueError):
    """The record is not a CloudEvent we can read; ``rule`` names which check failed."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def read_cloudevent(record: InboundRecord) -> CloudEvent:
    """The CloudEvent carried by ``record`` in either mode, or ``EnvelopeError``."""
    content_type = _header_text(record, "content-type")
    if record.header("ce_specversion") is not None:
        return _read_binary(record, content_type)
    if content_type is not None and not content_type.startswith(STRUCTURED_CONTENT_TYPE):
        raise EnvelopeError(
            "content_type",
            f"content-type {content_type!r} is neither {STRUCTURED_CONTENT_TYPE} nor binary mode",
        )
    document = _json_object(record.value)
    event = _validated(document)
    if event.datacontenttype is not None and not is_json_media_type(event.datacontenttype):
        raise EnvelopeError(
            "content_type", f"datacontenttype {event.datacontenttype!r} is not JSON, so data holds no invoice"
        )
    return event


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type, with or without parameters, in any letter case."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == JSON_CONTENT_TYPE or media_type.endswith("+json")


def _read_binary(record: InboundRecord, content_type: str | None) -> CloudEvent:
    if content_type is not None and not is_json_media_type(content_type):
        raise EnvelopeError(
            "content_type", f"binary-mode content-type {content_type!r} is not JSON, so data holds no invoice"
        )
    attributes: dict[str, Any] = {}
    for key, value in record.headers:
        if key.startswith("ce_"):
            try:
                attributes[key[3:]] = value.decode("utf-8")
            except UnicodeDecodeError as error:
                raise EnvelopeError("attribute", f"header {key} is not UTF-8") from error
    attributes["data"] = _json_value(record.value)
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    return _validated(attributes)


def validation_problems(error: ValidationError, prefix: str = "") -> str:
    """What a validation found wrong, each problem located (``prefix`` + its path), without the input."""
    return "; ".join(
        f"{prefix + '.'.join(str(p) for p in issue['loc']) or 'event'}: {issue['msg']}"
        for issue in error.errors(include_url=False, include_input=False)
    )


def _validated(document: dict[str, Any]) -> CloudEvent:
    try:
        return CloudEvent.model_validate(document)
    except ValidationError as error:
        raise EnvelopeError(
            "cloudevents_attributes", f"invalid CloudEvents attributes: {validation_problems(error)}"
        ) from error


def _header_text(record: InboundRecord, name: str) -> str | None:
    value = record.header(name)
    return None if value is None else value.decode("utf-8", errors="replace").strip().lower()


def _json_value(value: bytes | None) -> Any:
    if value is None:
        raise EnvelopeError("empty", "the record has no value")
    try:
        document = json.loads(value, parse_constant=_not_json)
        # It must be sendable again: no lone surrogates (the HTTP client could not encode them).
        # Only an escaped surrogate can bring one in, so the costly round trip runs only then.
        if _SURROGATE_ESCAPE.search(value):
            json.dumps(document, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as error:  # also JSONDecodeError, UnicodeDecodeError, huge ints
        raise EnvelopeError("json", f"the value is not JSON: {error.__class__.__name__}") from error
    # Nesting needs at least as many brackets as levels: count them before walking the document.
    if value.count(b"{") + value.count(b"[") > MAX_JSON_DEPTH and _depth(document) > MAX_JSON_DEPTH:
        raise EnvelopeError("json", f"the value nests deeper than {MAX_JSON_DEPTH} levels")
    return document


def _not_json(constant: str) -> Any:
    # Python's reader takes NaN and Infinity, which JSON has not; sent on, they would become null.
    raise ValueError(f"{constant} is not JSON")


def _depth(document: Any) -> int:
    deepest, stack = 0, [(document, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((inner, depth + 1) for inner in node.values())
        elif isinstance(node, list):
            stack.extend((inner, depth + 1) for inner in node)
    return deepest


def _json_object(value: bytes | None) -> dict[str, Any]:
    document = _json_value(value)
    if not isinstance(document, dict):
        raise EnvelopeError("json", "a structured-mode CloudEvent must be a JSON object")
    return document
