"""``results republish`` on the fake ledger: what it selects, the ids it sends, its arguments."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from service.domain.outcomes import Outcome
from service.events.cloudevents import CloudEvent
from service.events.contract import RegistrationResult, result_event
from service.ledger.base import InvoiceKey, LedgerEntry
from service.operator.results import (
    Selection,
    invoice_key,
    moment,
    read_invoice_keys,
    republish,
)
from tests.fakes import FakeLedger

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Sent:
    def __init__(self) -> None:
        self.events: list[tuple[CloudEvent, bytes]] = []
        self.batches = 0

    async def publish_many(self, events: Sequence[tuple[CloudEvent, bytes]]) -> None:
        self.batches += 1
        self.events.extend(events)


def record(
    creditor: str,
    number: str,
    outcome: Outcome | None = Outcome.REGISTERED,
    *,
    updated: datetime = T0,
    published: bool = True,
) -> LedgerEntry:
    result: dict[str, Any] | None = None
    if outcome is not None:
        result = RegistrationResult(
            outcome=outcome, creditor=creditor, invoice_number=number, inbound_event_id=f"evt-{number}"
        ).model_dump(mode="json")
    return LedgerEntry(
        creditor=creditor,
        invoice_number=number,
        fingerprint="fp",
        outcome=outcome,
        attempts=1,
        event_id=f"evt-{number}",
        claimed_by=None,
        claimed_at=None,
        result=result,
        result_published=published,
        created_at=updated,
        updated_at=updated,
    )


def ledger_of(*entries: LedgerEntry) -> FakeLedger:
    ledger = FakeLedger()
    for entry in entries:
        ledger.entries[(entry.creditor, entry.invoice_number)] = entry
    return ledger


def expected_id(entry: LedgerEntry) -> str:
    assert entry.result is not None
    return result_event(RegistrationResult.model_validate(entry.result), time=T0).id


async def test_the_results_found_go_again_with_their_ids_and_keys() -> None:
    entries = [
        record("c1", "A-1"),
        record("c1", "A-2", Outcome.REJECTED),
        record("c2", "B-1", Outcome.FAILED),
        record("c2", "B-2", None),
    ]
    ledger, sent = ledger_of(*entries), Sent()

    done = await republish(ledger, Selection(since=T0 - timedelta(days=1)), sent, page=2)

    assert [(event.id, key) for event, key in sent.events] == [
        (expected_id(entry), f"{entry.creditor}/{entry.invoice_number}".encode()) for entry in entries[:3]
    ]
    assert sent.batches == 2
    assert [item.outcome for item in done] == ["registered", "rejected", "failed"]
    assert all(item.published for item in done)


async def test_filters_select_by_creditor_and_update_time() -> None:
    ledger = ledger_of(
        record("c1", "old", updated=T0 - timedelta(hours=2)),
        record("c1", "in", updated=T0),
        record("c1", "end", updated=T0 + timedelta(hours=1)),  # --until is exclusive
        record("c2", "other", updated=T0),
    )
    sent = Sent()

    selection = Selection(creditor="c1", since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1))
    done = await republish(ledger, selection, sent)

    assert [item.invoice_number for item in done] == ["in"]


async def test_invoices_named_without_a_final_result_are_said_and_skipped() -> None:
    ledger = ledger_of(record("c1", "A-1"), record("c1", "A-2", None))
    sent = Sent()

    done = await republish(
        ledger,
        Selection(invoices=(InvoiceKey("c1", "A-2"), InvoiceKey("c1", "A-1"), InvoiceKey("c1", "nope"))),
        sent,
    )

    assert sorted((item.invoice_number, item.published, item.note) for item in done) == [
        ("A-1", True, ""),
        ("A-2", False, "no final result yet (in_flight)"),
        ("nope", False, "no ledger record"),
    ]
    assert len(sent.events) == 1


async def test_a_result_never_published_is_marked_published() -> None:
    ledger = ledger_of(record("c1", "A-1", published=False))

    [item] = await republish(ledger, Selection(creditor="c1"), Sent())

    assert item.note == "never published before"
    assert ledger.entries[("c1", "A-1")].result_published


async def test_a_dry_run_sends_and_marks_nothing() -> None:
    ledger = ledger_of(record("c1", "A-1", published=False))

    [item] = await republish(ledger, Selection(creditor="c1"), None)

    assert not item.published
    assert item.event_id == expected_id(ledger.entries[("c1", "A-1")])
    assert not ledger.entries[("c1", "A-1")].result_published


def test_times_need_their_offset() -> None:
    assert moment("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    assert moment("2026-12-01T09:00:00+01:00") == datetime(2026, 12, 1, 8, tzinfo=UTC)
    assert moment("2026-12-01T08:00:00Z") == datetime(2026, 12, 1, 8, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="no UTC offset"):
        moment("2026-12-01T08:00:00")
    with pytest.raises(argparse.ArgumentTypeError, match="not an ISO 8601 time"):
        moment("yesterday")


def test_invoices_are_named_creditor_slash_number(tmp_path: Path) -> None:
    assert invoice_key("5561234567/INV/2026/1") == ("5561234567", "INV/2026/1")
    with pytest.raises(argparse.ArgumentTypeError):
        invoice_key("INV-1")
    listed = tmp_path / "invoices.txt"
    listed.write_text("# to republish\nc1/A-1\n\n  c2/B-1  \n", encoding="utf-8")
    assert read_invoice_keys(str(listed)) == [("c1", "A-1"), ("c2", "B-1")]
    listed.write_text("c1/A-1\nA-2\n", encoding="utf-8")
    with pytest.raises(Exception, match="line 2"):
        read_invoice_keys(str(listed))


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        ([], "say which results"),
        (["--creditor", "c1", "--invoice", "c1/A-1"], "not both"),
        (["--since", "2026-12-02", "--until", "2026-12-01"], "--since must be before --until"),
    ],
)
def test_a_selection_that_makes_no_sense_is_one_line(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["results", "republish", *argv]) == 1
    err = capsys.readouterr().err
    assert said in err
    assert len(err.strip().splitlines()) == 1


def test_a_sqlite_ledger_that_does_not_exist_is_not_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.db"
    monkeypatch.setenv("LEDGER_URL", f"sqlite:///{missing}")

    assert main(["results", "republish", "--creditor", "c1", "--dry-run"]) == 1

    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize("argv", [["invoice", "show"], ["reconcile"], ["results", "republish"], ["invoice"]])
def test_the_commands_have_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    assert "usage: amili-registrar" in capsys.readouterr().out
