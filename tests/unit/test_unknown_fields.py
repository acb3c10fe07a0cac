"""Forward compatibility: unknown fields in invoice-created data (UNKNOWN_FIELDS)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from service.domain.outcomes import Outcome
from service.domain.rules import TransformDefaults
from service.events.contract import InvalidInvoice, InvoiceCreated, UnknownFields, decode_invoice_created
from service.ops.metrics import UNKNOWN_FIELD_LABELS, Metrics, MetricsObserver
from service.processing import InvoiceProcessor
from tests.fakes import structured_record
from tests.unit.test_events import EVENT
from tests.unit.test_processing import ACCOUNT, BACKOFF, CREDITOR, World

UNKNOWN = ("data.nickname", "data.customer.nickname", "data.customer.address.floor", "data.lines[0].colour")


def with_unknown_fields(event: dict[str, Any]) -> dict[str, Any]:
    event = copy.deepcopy(event)
    data = event["data"]
    data["nickname"] = "secret-top"
    data["customer"]["nickname"] = "secret-customer"
    data["customer"].setdefault("address", {"lines": ["Gatan 1"]})["floor"] = 3
    data["lines"][0]["colour"] = "red"
    return event


def test_unknown_fields_are_dropped_and_named_under_ignore() -> None:
    event = with_unknown_fields(EVENT)
    decoded = decode_invoice_created(structured_record(event))
    assert isinstance(decoded, InvoiceCreated)
    assert sorted(decoded.unknown_fields) == sorted(UNKNOWN)
    assert decoded.invoice.invoice_number == "INV-1"
    assert event["data"]["nickname"] == "secret-top"  # the event itself is left as it came


def test_unknown_fields_are_a_schema_violation_under_reject() -> None:
    decoded = decode_invoice_created(structured_record(with_unknown_fields(EVENT)), unknown_fields="reject")
    assert isinstance(decoded, InvalidInvoice)
    assert sorted(v.field for v in decoded.violations) == sorted(UNKNOWN)
    assert {v.rule for v in decoded.violations} == {"extra_forbidden"}


def test_other_violations_still_count_under_ignore() -> None:
    event = with_unknown_fields(EVENT)
    del event["data"]["due_date"]
    decoded = decode_invoice_created(structured_record(event))
    assert isinstance(decoded, InvalidInvoice)
    assert [(v.field, v.rule) for v in decoded.violations] == [("data.due_date", "missing")]


def test_an_event_without_unknown_fields_reports_none() -> None:
    decoded = decode_invoice_created(structured_record(EVENT))
    assert isinstance(decoded, InvoiceCreated)
    assert decoded.unknown_fields == ()


def test_the_metric_counts_paths_with_a_bounded_label() -> None:
    metrics = Metrics()
    observer = MetricsObserver(metrics)
    observer.unknown_fields(("data.lines[0].colour", "data.lines[1].colour", "data.nickname"))
    value = metrics.registry.get_sample_value
    assert value("registrar_unknown_fields_total", {"field": "data.lines[].colour"}) == 2
    assert value("registrar_unknown_fields_total", {"field": "data.nickname"}) == 1
    observer.unknown_fields(tuple(f"data.f{i}" for i in range(UNKNOWN_FIELD_LABELS + 10)))
    labels = {
        s.labels["field"]
        for metric in metrics.registry.collect()
        if metric.name == "registrar_unknown_fields"
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert len(labels) == UNKNOWN_FIELD_LABELS + 1
    assert value("registrar_unknown_fields_total", {"field": "other"}) == 12


class Reported(MetricsObserver):
    def __init__(self) -> None:
        super().__init__(Metrics())
        self.unknown: list[tuple[str, ...]] = []

    def unknown_fields(self, paths: tuple[str, ...]) -> None:
        super().unknown_fields(paths)
        self.unknown.append(paths)


def processor(world: World, mode: UnknownFields, observer: Reported) -> InvoiceProcessor:
    return InvoiceProcessor(
        registration=world.registration(),
        ledger=world.ledger,
        results=world.results,
        dead_letters=world.dead_letters,
        defaults=TransformDefaults(account=ACCOUNT, creditor=CREDITOR),
        clock=world.clock,
        backoff=BACKOFF,
        sleep=world.sleep,
        observer=observer,
        unknown_fields=mode,
    )


async def test_an_event_with_unknown_fields_is_registered_under_ignore(
    sample_events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    world, observer = World(), Reported()
    caplog.set_level(logging.DEBUG, logger="service.processing")
    handled = await processor(world, "ignore", observer).process(
        structured_record(with_unknown_fields(sample_events[0]))
    )
    assert handled.outcome is Outcome.REGISTERED
    assert world.amili.posts == 1
    assert world.dead_letters.letters == []
    assert len(observer.unknown) == 1
    assert sorted(observer.unknown[0]) == sorted(UNKNOWN)
    logged = [r for r in caplog.records if r.getMessage() == "ignored unknown fields in data"]
    assert len(logged) == 1
    assert sorted(logged[0].__dict__["fields"]) == sorted(UNKNOWN)
    assert "secret" not in caplog.text


async def test_an_event_with_unknown_fields_is_rejected_under_reject(
    sample_events: list[dict[str, Any]],
) -> None:
    world, observer = World(), Reported()
    handled = await processor(world, "reject", observer).process(
        structured_record(with_unknown_fields(sample_events[0]))
    )
    assert handled.outcome is Outcome.REJECTED
    assert world.amili.posts == 0
    assert world.dead_letters.letters == []
    [(result, _)] = world.results.published
    assert sorted(r["field"] for r in result.data["reasons"]) == sorted(UNKNOWN)
    assert observer.unknown == []
