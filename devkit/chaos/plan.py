"""The plan of a chaos run: the events it sends, seeded, and what each invoice must come to.

``plan_events`` makes invoice-created events with unique invoice numbers from the shipped samples,
then mixes in re-sends (byte for byte, or under a new event id), poison events (each breaking one
rule of the inbound contract) and conflicts (an earlier invoice's number with other content). The
``Plan`` knows which invoices must be registered and which refused, so the verdict can hold the
outcome against it. Nothing here does I/O but reading the samples.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from devkit.emulator.settings import DEMO_ACCOUNT, DEMO_CREDITOR
from service.amili.mapping import to_registration
from service.domain.invoice import Invoice
from service.domain.outcomes import Rejection
from service.domain.rules import TransformDefaults
from service.events.cloudevents import JSON_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE
from service.events.contract import INVOICE_CREATED_TYPE
from service.operator.event_files import encode, event_key

Headers = list[tuple[str, bytes]]
Kind = Literal["invoice", "duplicate", "conflict", "poison"]

SOURCE = "urn:amili-registrar:chaos"
REGISTERED = "registered"
REJECTED = "rejected"
CONFLICT = "conflict"
POISON_KINDS = ("json", "empty", "content_type", "cloudevents", "type", "data_schema")


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    value: bytes | None
    key: bytes | None
    headers: Headers
    kind: Kind
    invoice: str | None = None  # "creditor/invoice_number" of the invoice it carries
    rule: str | None = None  # for poison: what is wrong with it


@dataclass(frozen=True, slots=True)
class Plan:
    events: list[OutboundEvent]
    registrable: frozenset[str]
    rejectable: frozenset[str]  # refused by the business rules: a rejected result, no registration
    duplicates_same_id: int
    duplicates_new_id: int
    conflicted: frozenset[str] = frozenset()  # registrable invoices re-sent with other content

    @property
    def invoices(self) -> frozenset[str]:
        return self.registrable | self.rejectable

    @property
    def conflicts(self) -> int:
        return sum(1 for event in self.events if event.kind == "conflict")

    def expected_outcomes(self, key: str) -> set[str]:
        """The outcomes the results of an invoice must show: registered (and conflict, for the
        re-send with other content), or rejected by the business rules."""
        if key in self.registrable:
            return {REGISTERED, CONFLICT} if key in self.conflicted else {REGISTERED}
        return {REJECTED}

    @property
    def poison(self) -> int:
        return sum(1 for event in self.events if event.kind == "poison")


@dataclass(frozen=True, slots=True)
class Template:
    event: dict[str, Any]  # a sample invoice-created CloudEvent
    registrable: bool

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.event["data"]
        return data


def sample_templates() -> list[Template]:
    """The shipped sample events, each marked registrable or not by the service's own rules."""
    from devkit.demo import sample_events_path

    templates = []
    for line in sample_events_path().read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        data = event["data"]
        data.setdefault("account", DEMO_ACCOUNT)
        data.setdefault("creditor", DEMO_CREDITOR)
        outcome = to_registration(Invoice.model_validate(data), TransformDefaults())
        templates.append(Template(event=event, registrable=not isinstance(outcome, Rejection)))
    return templates


def plan_events(
    invoices: int,
    *,
    seed: int,
    run_tag: str,
    templates: Sequence[Template],
    duplicate_share: float = 0.05,
    poison_share: float = 0.01,
    binary_share: float = 0.2,
    conflict_share: float = 0.0,
) -> Plan:
    """``invoices`` invoice-created events with unique invoice numbers, plus re-sends of earlier
    events (half byte for byte, half under a new event id), poison events and conflicts (an earlier
    registrable invoice's number with other content: a ``conflict`` result, never a registration),
    in a seeded order."""
    rng = random.Random(seed)
    duplicates = round(invoices * duplicate_share)
    poison = round(invoices * poison_share)
    conflicts = round(invoices * conflict_share)
    total = invoices + duplicates + poison + conflicts
    extra_slots = rng.sample(range(1, total), duplicates + poison + conflicts) if invoices else []
    duplicate_slots = set(extra_slots[:duplicates])
    poison_slots = set(extra_slots[duplicates : duplicates + poison])
    conflict_slots = set(extra_slots[duplicates + poison :])

    events: list[OutboundEvent] = []
    sent: list[tuple[dict[str, Any], OutboundEvent]] = []
    registrable: set[str] = set()
    rejectable: set[str] = set()
    conflicted: set[str] = set()
    same_id = new_id = poisoned = 0
    for slot in range(total):
        candidates: list[tuple[dict[str, Any], OutboundEvent]] = []
        if slot in conflict_slots:
            candidates = [
                (envelope, event)
                for envelope, event in sent
                if event.invoice in registrable and event.invoice not in conflicted
            ]
        if candidates:
            envelope, original = rng.choice(candidates)
            events.append(
                _invoice_event(_other_content(envelope, rng), "conflict", binary=rng.random() < binary_share)
            )
            assert original.invoice is not None
            conflicted.add(original.invoice)
        elif slot in duplicate_slots or slot in conflict_slots:  # no invoice to conflict with yet: a re-send
            envelope, original = rng.choice(sent)
            if (same_id + new_id) % 2 == 0:
                events.append(
                    OutboundEvent(
                        original.value, original.key, original.headers, "duplicate", original.invoice
                    )
                )
                same_id += 1
            else:
                again = {**envelope, "id": _event_id(rng), "time": _now()}
                events.append(_invoice_event(again, "duplicate", binary=rng.random() < binary_share))
                new_id += 1
        elif slot in poison_slots:
            events.append(_poison_event(POISON_KINDS[poisoned % len(POISON_KINDS)], rng, run_tag, slot))
            poisoned += 1
        else:
            template = rng.choice(templates)
            data = copy.deepcopy(template.data)
            data["invoice_number"] = f"CHAOS-{run_tag}-{len(sent) + 1:06d}"
            envelope = {**_envelope(rng), "subject": data["invoice_number"], "data": data}
            event = _invoice_event(envelope, "invoice", binary=rng.random() < binary_share)
            assert event.invoice is not None
            (registrable if template.registrable else rejectable).add(event.invoice)
            sent.append((envelope, event))
            events.append(event)
    return Plan(events, frozenset(registrable), frozenset(rejectable), same_id, new_id, frozenset(conflicted))


def _other_content(envelope: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A new event for the same invoice number with other, still valid, content."""
    data = copy.deepcopy(envelope["data"])
    first_line = data["lines"][0]
    first_line["description"] = f"{first_line.get('description', 'line')} (amended)"
    return {**envelope, "id": _event_id(rng), "time": _now(), "data": data}


def _event_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _envelope(rng: random.Random) -> dict[str, Any]:
    """The attributes of a new invoice-created CloudEvent, without subject and data."""
    return {
        "specversion": "1.0",
        "id": _event_id(rng),
        "source": SOURCE,
        "type": INVOICE_CREATED_TYPE,
        "time": _now(),
        "datacontenttype": JSON_CONTENT_TYPE,
    }


def _invoice_event(envelope: dict[str, Any], kind: Kind, *, binary: bool) -> OutboundEvent:
    value, headers = encode(envelope, binary=binary)
    key = event_key(envelope)
    return OutboundEvent(value, key, headers, kind, key.decode() if key else None)


def _poison_event(rule: str, rng: random.Random, run_tag: str, slot: int) -> OutboundEvent:
    structured: Headers = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
    # Some keyed, some not; a record with neither key nor value cannot be sent.
    key = f"poison-{slot}".encode() if rule == "empty" or rng.random() < 0.5 else None
    envelope = _envelope(rng)
    # Poison that carries an invoice carries one no other event has: were it registered, it shows.
    invoice = {
        "invoice_number": f"POISON-{run_tag}-{slot:06d}",
        "account": DEMO_ACCOUNT,
        "creditor": DEMO_CREDITOR,
        "issue_date": "2026-11-20",
        "due_date": "2026-12-20",
        "customer": {"type": "person", "name": "Poison Test", "id_number": "811218-9876"},
        "lines": [{"description": "x", "total_excluding_vat": 100.0, "vat_rate": 25}],
    }
    value: bytes | None
    if rule == "json":
        value = b'{"specversion": "1.0", "id": "cut-short'
    elif rule == "empty":
        value = None
    elif rule == "content_type":
        value, structured = (
            json.dumps({**envelope, "data": invoice}).encode(),
            [("content-type", b"text/csv")],
        )
    elif rule == "cloudevents":
        value = json.dumps({**envelope, "specversion": "0.3", "time": None, "data": invoice}).encode()
    elif rule == "type":
        value = json.dumps({**envelope, "type": "billing.invoice.deleted.v1", "data": invoice}).encode()
    else:  # data_schema: with no invoice number to name in a result, it is a dead letter
        unnamed = {field: content for field, content in invoice.items() if field != "invoice_number"}
        value = json.dumps({**envelope, "data": {**unnamed, "lines": "none", "due_date": "soon"}}).encode()
    return OutboundEvent(value, key, structured, "poison", rule=rule)
