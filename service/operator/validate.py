"""``validate FILE``: what the service would do with each event of a file, without Kafka or Amili.

Each event goes through the service's own decode, transform and business rules
(``InvoiceProcessor.prepare``, with the service's settings), so the verdict is the service's: it
would register the invoice (and send this request to Amili), answer it with a ``rejected`` result
(the rules it breaks), or dead-letter the record (the rule and why). Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, cast

from rich.console import Console

from service.config import Settings
from service.domain.outcomes import Rejection
from service.domain.rules import TransformDefaults
from service.events.contract import UnknownFields
from service.events.record import InboundRecord
from service.operator.errors import OperatorError
from service.operator.output import show

Verdict = Literal["would-register", "rejected", "dead-letter"]
WOULD_REGISTER: Verdict = "would-register"
REJECTED: Verdict = "rejected"
DEAD_LETTER: Verdict = "dead-letter"

COLUMNS = ("#", "invoice", "outcome", "reasons")


@dataclass(frozen=True)
class Checked:
    """The service's verdict on one event of the file (``index`` counts from 1)."""

    index: int
    event_id: str | None
    invoice_number: str | None
    creditor: str | None
    outcome: Verdict
    reasons: list[dict[str, str | None]] = field(default_factory=list)
    """Why not: ``field`` (a rejection's event path; ``None`` for a dead letter), ``rule``, ``message``."""
    warnings: list[dict[str, str]] = field(default_factory=list)
    """What the invoice would be registered despite (``ID_NUMBER_CHECK=warn``)."""
    unknown_fields: list[str] = field(default_factory=list)
    """Fields of ``data`` the invoice does not know, which the service would drop (``ignore``)."""
    request: dict[str, Any] | None = None
    """The JSON body the service would POST to Amili (would-register only)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "event_id": self.event_id,
            "invoice_number": self.invoice_number,
            "creditor": self.creditor,
            "outcome": self.outcome,
            "reasons": self.reasons,
            "warnings": self.warnings,
            "unknown_fields": self.unknown_fields,
            "request": self.request,
        }

    def as_row(self) -> dict[str, Any]:
        """For people: the invoice number and the reasons, never the invoice's personal data."""
        lines = [
            f"{reason['field']}: {reason['rule']}: {reason['message']}"
            if reason["field"]
            else f"{reason['rule']}: {reason['message']}"
            for reason in self.reasons
        ]
        lines += [f"warning {w['field']}: {w['rule']}: {w['message']}" for w in self.warnings]
        lines += [f"ignored unknown field {path}" for path in self.unknown_fields]
        return {
            "#": self.index,
            "invoice": self.invoice_number or "-",
            "outcome": self.outcome,
            "reasons": "\n".join(lines),
        }


class _Offline:
    """Stands in for the ledger, Amili and the publishers: ``prepare`` never touches them, and a
    validation that did would be a bug, not a network call."""

    def __getattr__(self, name: str) -> NoReturn:
        raise AssertionError(f"validate does no I/O (asked for {name})")


def check_events(
    events: Sequence[Mapping[str, Any]],
    *,
    defaults: TransformDefaults,
    unknown_fields: UnknownFields = "ignore",
    max_event_bytes: int | None = None,
    topic: str = "invoice-created",
) -> list[Checked]:
    """The service's verdict on each event (whole CloudEvents), as ``InvoiceProcessor.prepare``
    would decide it for the record ``produce`` writes (structured mode)."""
    from service.operator.event_files import encode, event_key
    from service.processing import InvoiceProcessor, Undecodable

    offline = cast(Any, _Offline())
    processor = InvoiceProcessor(
        registration=offline,
        ledger=offline,
        results=offline,
        dead_letters=offline,
        defaults=defaults,
        unknown_fields=unknown_fields,
        max_event_bytes=max_event_bytes,
    )
    checked = []
    for index, event in enumerate(events, start=1):
        value, headers = encode(dict(event), binary=False)
        record = InboundRecord(
            topic=topic,
            partition=0,
            offset=index - 1,
            key=event_key(dict(event)),
            value=value,
            headers=tuple(headers),
        )
        prepared = processor.prepare(record)
        event_id = event.get("id")
        shown_id = event_id if isinstance(event_id, str) else None
        if isinstance(prepared, Undecodable):
            data = event.get("data")
            number = data.get("invoice_number") if isinstance(data, dict) else None
            rule, message = prepared.error.rule, str(prepared.error)
            checked.append(
                Checked(
                    index=index,
                    event_id=shown_id,
                    invoice_number=number if isinstance(number, str) else None,
                    creditor=None,
                    outcome=DEAD_LETTER,
                    reasons=[{"field": None, "rule": rule, "message": message}],
                )
            )
            continue
        payload = prepared.payload
        common: dict[str, Any] = {
            "index": index,
            "event_id": prepared.event.id,
            "invoice_number": prepared.key.invoice_number,
            "creditor": prepared.key.creditor or None,
            "unknown_fields": list(prepared.unknown_fields),
        }
        if isinstance(payload, Rejection):
            reasons: list[dict[str, str | None]] = [
                {"field": v.field, "rule": v.rule, "message": v.message} for v in payload.violations
            ]
            checked.append(Checked(outcome=REJECTED, reasons=reasons, **common))
        else:
            warnings = [w.model_dump() for w in prepared.warnings]
            checked.append(
                Checked(outcome=WOULD_REGISTER, warnings=warnings, request=payload.to_wire(), **common)
            )
    return checked


def summary(checked: Sequence[Checked]) -> str:
    """``3 would register, 1 rejected, 1 dead letter`` (the outcomes present)."""
    counts = Counter(item.outcome for item in checked)
    words = {WOULD_REGISTER: "would register", REJECTED: "rejected", DEAD_LETTER: "dead letter"}
    parts = [f"{counts[outcome]} {words[outcome]}" for outcome in words if counts[outcome]]
    return ", ".join(parts)


def _validate(args: argparse.Namespace) -> int:
    from service.operator.event_files import read_events

    settings = Settings()
    try:
        events = read_events(args.file)
    except OSError as error:
        raise OperatorError(f"cannot read {args.file}: {error.strerror or error}") from error
    except ValueError as error:  # JSONDecodeError included
        raise OperatorError(f"{args.file} is not JSON or NDJSON: {error}") from error
    if not events:
        raise OperatorError(f"{args.file} holds no events")
    defaults = TransformDefaults(
        account=args.account or settings.amili_default_account,
        creditor=args.creditor or settings.amili_default_creditor,
        id_number_check=args.id_number_check or settings.id_number_check,
    )
    checked = check_events(
        events,
        defaults=defaults,
        unknown_fields=args.unknown_fields or settings.unknown_fields,
        max_event_bytes=settings.max_event_bytes,
        topic=settings.invoice_created_topic,
    )
    show(
        [item.as_json() if args.json else item.as_row() for item in checked],
        columns=COLUMNS,
        title=f"{args.file.name}: what the service would do",
        as_json=args.json,
    )
    if not args.json:
        Console().print(summary(checked))
    return 0 if all(item.outcome == WOULD_REGISTER for item in checked) else 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``validate``."""
    validate = commands.add_parser(
        "validate",
        help="dry-run a file of events through decode, transform and business rules",
        description="For each event of FILE (a JSON array, one JSON object or NDJSON; each item a "
        "whole CloudEvent or a bare invoice), say what the service would do: would-register (with "
        "--json, the request it would POST to Amili), rejected (each rule and the field it names) or "
        "dead-letter (the rule and why). Uses the service's settings (AMILI_DEFAULT_ACCOUNT, "
        "AMILI_DEFAULT_CREDITOR, ID_NUMBER_CHECK, UNKNOWN_FIELDS, MAX_EVENT_BYTES); connects to "
        "neither Kafka nor Amili. The table shows invoice numbers and reasons, never names or "
        "addresses; --json prints each event's verdict with the request, personal data included. "
        "Exit code 0 if every event would be registered, 1 if any would not (or the file cannot "
        "be read).",
    )
    validate.add_argument("file", type=Path, help="a JSON array, a JSON object or NDJSON")
    validate.add_argument("--account", help="default account id (default: AMILI_DEFAULT_ACCOUNT)")
    validate.add_argument("--creditor", help="default creditor id (default: AMILI_DEFAULT_CREDITOR)")
    validate.add_argument(
        "--id-number-check",
        choices=["strict", "warn", "off"],
        help="how Swedish id numbers are checked (default: ID_NUMBER_CHECK)",
    )
    validate.add_argument(
        "--unknown-fields",
        choices=["ignore", "reject"],
        help="fields in data the invoice does not know (default: UNKNOWN_FIELDS)",
    )
    validate.add_argument("--json", action="store_true", help="one JSON line per event, the request included")
    validate.set_defaults(handler=_validate)
