"""``invoice show`` and ``reconcile``: one invoice as the ledger and Amili know it, and the
invoices whose answer from Amili was lost, settled from what Amili holds.

``reconcile`` settles with the service's own claim protocol, so it is safe while the service runs:
it looks a record up at Amili, claims it as the service would (a live claim of an instance is
``HELD``: left to that instance), records the registration it found, publishes its result (the id
the service would give it) and marks it published. Nothing is ever POSTed to Amili.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console

from service.amili.client import AmiliClient
from service.amili.mapping import amili_ids
from service.amili.models import InvoiceRegistrationReceipt
from service.config import Settings
from service.domain.checksums import is_valid_ocr
from service.domain.outcomes import Outcome
from service.events.contract import AmiliIds, RegistrationResult
from service.ledger.base import IN_FLIGHT, ClaimStatus, InvoiceKey, Ledger, LedgerEntry
from service.operator.errors import OperatorError
from service.operator.kafka_tools import progress, quiet_aiokafka
from service.operator.output import show
from service.operator.results import (
    ledger_errors,
    now,
    opened_ledger,
    positive,
    result_of,
    result_producer,
)
from service.ports import AmiliError, AmiliMisconfigured, AmiliPort, AmiliUnauthorized, ResultPublisher

EXIT_AGREE = 0
EXIT_DISAGREE = 3
EXIT_NOT_FOUND = 4
EXIT_RECONCILE_ERRORS = 3
PAGE = 100


# -- Amili


@contextlib.asynccontextmanager
async def amili_client(settings: Settings) -> AsyncIterator[AmiliClient]:
    """Amili's client as the service builds it (base URL, API key or api code, timeouts)."""
    from service.bootstrap import ConfigurationError, amili_credentials, amili_http_settings

    try:
        credentials = amili_credentials(settings)
    except ConfigurationError as error:
        raise OperatorError(str(error)) from None
    client = AmiliClient(
        settings.amili_base_url,
        credentials,
        amili_http_settings(settings),
    )
    # The client logs failing calls for the service's log; the command says what failed, once.
    logger = logging.getLogger("service.amili.client")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        async with client:
            yield client
    finally:
        logger.setLevel(level)


async def look_up(
    amili: AmiliClient, creditor: str, invoice_number: str
) -> InvoiceRegistrationReceipt | None:
    """Amili's registration of the invoice (the oldest, as the service adopts it), or ``None``."""
    try:
        return await amili.find_registration(creditor, invoice_number)
    except AmiliError as error:
        raise OperatorError(f"cannot look {creditor}/{invoice_number} up at Amili: {error}") from None


async def case_state(amili: AmiliClient, case_id: str) -> dict[str, Any] | None:
    """The case's ``state`` and ``status`` from ``GET /cases/{id}``, or ``None`` when Amili (or
    the way to it) does not answer that: the case is extra, never a reason to fail."""
    try:
        body = await amili.get_case(case_id)
    except AmiliError:
        return None
    if body is None:
        return None
    found = {name: body[name] for name in ("state", "status") if isinstance(body.get(name), str)}
    return found or None


# -- invoice show


def ids_in(entry: LedgerEntry) -> AmiliIds | None:
    """The Amili ids the ledger's result carries, if any."""
    amili = (entry.result or {}).get("amili")
    return AmiliIds.model_validate(amili) if isinstance(amili, dict) else None


@dataclass(frozen=True, slots=True)
class Verdict:
    code: int
    agreement: str
    """``agree``, ``disagree`` or ``not_found``."""
    detail: str


def compare(
    entry: LedgerEntry | None, receipt: InvoiceRegistrationReceipt | None, *, lapsed: bool
) -> Verdict:
    """Whether the ledger and Amili agree on the invoice; ``lapsed``: the record's claim, if it
    is in flight, could be taken over now."""
    if entry is None and receipt is None:
        return Verdict(EXIT_NOT_FOUND, "not_found", "neither the ledger nor Amili knows this invoice")
    if entry is None:
        return Verdict(
            EXIT_DISAGREE,
            "disagree",
            "Amili holds it, the ledger has no record (registered by other means, or another LEDGER_URL)",
        )
    state, outcome = entry.state, entry.outcome
    if receipt is None:
        if outcome is Outcome.REGISTERED:
            return Verdict(
                EXIT_DISAGREE, "disagree", "the ledger says registered, Amili holds no registration"
            )
        if outcome is None:
            return Verdict(EXIT_AGREE, "agree", "in flight, not at Amili (yet)")
        return Verdict(EXIT_AGREE, "agree", f"{state} in the ledger, absent at Amili")
    if outcome is Outcome.REGISTERED:
        if ids_in(entry) == amili_ids(receipt):
            return Verdict(EXIT_AGREE, "agree", "registered in both, same ids")
        return Verdict(EXIT_DISAGREE, "disagree", "registered in both, but the ids differ")
    if outcome is None:
        if lapsed:
            why = "its claim lapsed: `reconcile` settles it"
        else:
            why = f"{entry.claimed_by} holds a live claim: it is being recorded"
        return Verdict(EXIT_DISAGREE, "disagree", f"in flight in the ledger, registered at Amili; {why}")
    if outcome is Outcome.FAILED:
        fix = "" if not is_valid_ocr(receipt.ocr_number_ocr) else ": `reconcile` settles it"
        return Verdict(EXIT_DISAGREE, "disagree", f"failed in the ledger, registered at Amili{fix}")
    return Verdict(EXIT_DISAGREE, "disagree", f"{state} in the ledger, yet registered at Amili")


def lease_left(entry: LedgerEntry, lease: timedelta, at: datetime) -> timedelta | None:
    """How long the claim of an in-flight record holds (negative: lapsed that long ago);
    ``None`` when it is not in flight, or claimed by no one (taken over at once)."""
    if entry.outcome is not None or entry.claimed_at is None or entry.claimed_by is None:
        return None
    return entry.claimed_at + lease - at


def lapsed(entry: LedgerEntry, lease: timedelta, at: datetime) -> bool:
    left = lease_left(entry, lease, at)
    return entry.outcome is None and (left is None or left <= timedelta(0))


def _seconds(span: timedelta) -> str:
    seconds = span.total_seconds()
    return f"{seconds:.0f} s left" if seconds > 0 else f"lapsed {-seconds:.0f} s ago"


def ledger_view(entry: LedgerEntry, lease: timedelta, at: datetime) -> dict[str, Any]:
    result = entry.result or {}
    left = lease_left(entry, lease, at)
    view: dict[str, Any] = {
        "state": entry.state,
        "attempts": entry.attempts,
        "owner": entry.claimed_by,
        "claimed_at": entry.claimed_at.isoformat() if entry.claimed_at else None,
        "lease_left_seconds": None if left is None else round(left.total_seconds(), 1),
        "fingerprint": entry.fingerprint,
        "inbound_event_id": entry.event_id,
        "created_at": entry.created_at.isoformat(),
        "updated_at": entry.updated_at.isoformat(),
        "result_published": entry.result_published if entry.is_final else None,
        "outcome": result.get("outcome"),
        "amili": result.get("amili"),
        "reasons": result.get("reasons") or [],
        "warnings": result.get("warnings") or [],
        "result_event_id": None,
    }
    if entry.result is not None:
        event, _ = result_of(RegistrationResult.model_validate(entry.result))
        view["result_event_id"] = event.id
    return view


def amili_view(receipt: InvoiceRegistrationReceipt, case: dict[str, Any] | None) -> dict[str, Any]:
    view: dict[str, Any] = amili_ids(receipt).model_dump(mode="json")
    view["_created"] = receipt.created
    if case is not None:
        view["case"] = case
    return view


_IDS = (
    ("registration id", "_id"),
    ("invoice id", "_invoice"),
    ("case id", "_case"),
    ("OCR number id", "_ocr_number"),
    ("OCR number", "ocr_number_ocr"),
)


def _reasons(reasons: list[dict[str, Any]]) -> str | None:
    return "; ".join(f"{r.get('field')}: {r.get('message')} ({r.get('rule')})" for r in reasons) or None


def table_rows(
    creditor: str, invoice_number: str, ledger: Mapping[str, Any] | None, amili: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """``invoice show`` for people: one row a field, the ledger's and Amili's side by side."""
    rows: list[dict[str, Any]] = [{"": "invoice", "ledger": f"{creditor}/{invoice_number}"}]

    def row(field: str, in_ledger: Any = None, at_amili: Any = None) -> None:
        rows.append({"": field, "ledger": in_ledger, "amili": at_amili})

    if ledger is None:
        row("record", "none", "registered" if amili else "none")
    else:
        row("state", ledger["state"], "registered" if amili else "none")
        row("attempts", ledger["attempts"])
        if ledger["state"] == IN_FLIGHT:  # a final record's claim is over
            row("owner", ledger["owner"] or "nobody (given back)")
            left = ledger["lease_left_seconds"]
            lease = "" if left is None else f" ({_seconds(timedelta(seconds=left))})"
            row("claimed at", f"{ledger['claimed_at']}{lease}")
        row("fingerprint", ledger["fingerprint"])
        row("inbound event id", ledger["inbound_event_id"])
        row("created", ledger["created_at"])
        row("updated", ledger["updated_at"])
        if ledger["result_published"] is not None:
            row("result published", "yes" if ledger["result_published"] else "no")
        if ledger["outcome"] is not None:
            row("outcome", ledger["outcome"])
            row("result event id", ledger["result_event_id"])
    ids = (ledger or {}).get("amili") or {}
    for label, name in _IDS:
        if ids.get(name) or (amili and amili.get(name)):
            row(label, ids.get(name), amili.get(name) if amili else None)
    if amili and amili.get("case"):
        case = amili["case"]
        row("case state", None, " / ".join(str(case[k]) for k in ("state", "status") if k in case))
    if ledger is not None:
        if reasons := _reasons(ledger["reasons"]):
            row("reasons", reasons)
        if warnings := _reasons(ledger["warnings"]):
            row("warnings", warnings)
    return rows


async def show_invoice(settings: Settings, creditor: str, invoice_number: str) -> dict[str, Any]:
    """What ``invoice show`` says: the ledger's record, Amili's registration, and the verdict."""
    lease = timedelta(seconds=settings.claim_lease_seconds)
    async with opened_ledger(settings) as ledger:
        with ledger_errors("cannot read the ledger"):
            entry = await ledger.get(creditor=creditor, invoice_number=invoice_number)
    at = now()
    async with amili_client(settings) as amili:
        receipt = await look_up(amili, creditor, invoice_number)
        case = None if receipt is None else await case_state(amili, receipt.case)
    verdict = compare(entry, receipt, lapsed=entry is not None and lapsed(entry, lease, at))
    return {
        "creditor": creditor,
        "invoice_number": invoice_number,
        "ledger": None if entry is None else ledger_view(entry, lease, at),
        "amili": None if receipt is None else amili_view(receipt, case),
        "agreement": verdict.agreement,
        "detail": verdict.detail,
        "exit_code": verdict.code,
    }


def _show(args: argparse.Namespace) -> int:
    settings = Settings()
    found = asyncio.run(show_invoice(settings, args.creditor, args.invoice_number))
    if args.json:
        show([found], columns=(), title="", as_json=True)
    else:
        show(
            table_rows(args.creditor, args.invoice_number, found["ledger"], found["amili"]),
            columns=("", "ledger", "amili"),
            title="invoice show",
            as_json=False,
        )
        Console().print(f"{found['agreement'].replace('_', ' ')}: {found['detail']}")
    return int(found["exit_code"])


SHOW_EPILOG = """\
The ledger's side: state, attempts, the claim (owner, when, lease left), fingerprint, created and
updated, whether the result was published, the outcome, Amili's ids, reasons, and the result's
event id. Amili's side: its registration found by creditor and invoice number (ids, OCR number)
and the case's state when GET /cases/{id} answers. --json: all of it as one JSON object.

exit codes:
  0  they agree: registered in both with the same ids; or registered in neither (in flight,
     failed, rejected or conflict in the ledger, and absent at Amili)
  1  a one-line failure (ledger or Amili unreachable, credentials refused, ...)
  3  they disagree: Amili holds it but the ledger says in flight, failed, rejected or has no
     record; the ledger says registered but Amili holds nothing; or the ids differ
  4  not found anywhere: no ledger record, nothing at Amili
"""


# -- reconcile


SETTLED, LEFT, HELD, ERROR = "settled", "left", "held", "error"
STATUSES = (SETTLED, LEFT, HELD, ERROR)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What ``reconcile`` did with one record."""

    creditor: str
    invoice_number: str
    was: str
    """The record's state when it was found."""
    status: str
    note: str
    event_id: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "kind": "invoice",
            "creditor": self.creditor,
            "invoice_number": self.invoice_number,
            "was": self.was,
            "status": self.status,
            "note": self.note,
            "event_id": self.event_id,
        }


def registered_result(entry: LedgerEntry, receipt: InvoiceRegistrationReceipt) -> RegistrationResult:
    """The result the service records when it adopts Amili's registration on a look-up."""
    return RegistrationResult(
        outcome=Outcome.REGISTERED,
        creditor=entry.creditor,
        invoice_number=entry.invoice_number,
        inbound_event_id=entry.event_id,
        amili=amili_ids(receipt),
    )


class Reconciler:
    """Settles the records left in flight past their lease, or failed, from what Amili holds."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        amili: AmiliPort,
        publisher: ResultPublisher | None,
        owner: str,
        lease: timedelta,
        clock: Callable[[], datetime] = now,
    ) -> None:
        """``amili``: what looks registrations up (``find_registration``); ``publisher`` ``None``:
        a dry run, nothing claimed, recorded or published."""
        self._ledger = ledger
        self._amili = amili
        self._publisher = publisher
        self._owner = owner
        self._lease = lease
        self._clock = clock

    async def run(
        self,
        *,
        limit: int | None = None,
        page: int = PAGE,
        done: Callable[[Settlement], None] = lambda _: None,
    ) -> list[Settlement]:
        """Walks the unsettled records found at the start (at most ``limit``), in key order."""
        started = self._clock()
        after: InvoiceKey | None = None
        settled: list[Settlement] = []
        while limit is None or len(settled) < limit:
            size = page if limit is None else min(page, limit - len(settled))
            with ledger_errors("cannot read the ledger"):
                entries = await self._ledger.unsettled(
                    now=started, lease=self._lease, limit=size, after=after
                )
            for entry in entries:
                settlement = await self.settle(entry)
                settled.append(settlement)
                done(settlement)
            if len(entries) < size:
                break
            after = entries[-1].key
        return settled

    async def settle(self, entry: LedgerEntry) -> Settlement:
        creditor, number = entry.creditor, entry.invoice_number

        def settlement(status: str, note: str, event_id: str | None = None) -> Settlement:
            return Settlement(creditor, number, entry.state, status, note, event_id)

        try:
            receipt = await self._amili.find_registration(creditor, number)
        except (AmiliUnauthorized, AmiliMisconfigured) as error:
            raise OperatorError(f"Amili: {error}") from None  # every look-up would fail the same way
        except AmiliError as error:
            return settlement(ERROR, f"Amili look-up failed: {error}")
        if receipt is None:
            if entry.outcome is Outcome.FAILED:
                return settlement(LEFT, "not at Amili: a replay of its event registers it")
            return settlement(LEFT, "not at Amili: left for the service's next attempt")
        if not is_valid_ocr(receipt.ocr_number_ocr):
            return settlement(LEFT, "at Amili, but its OCR number fails its check digit: not settled")
        result = registered_result(entry, receipt)
        event, key = result_of(result)
        if self._publisher is None:
            return settlement(
                SETTLED, "at Amili: would be recorded registered and published (dry run)", event.id
            )
        with ledger_errors(f"cannot claim {creditor}/{number}"):
            claim = await self._ledger.claim(
                creditor=creditor,
                invoice_number=number,
                fingerprint=entry.fingerprint,
                event_id=entry.event_id,
                owner=self._owner,
                now=self._clock(),
                lease=self._lease,
            )
        if claim.status is ClaimStatus.HELD:
            return settlement(HELD, f"{claim.entry.claimed_by} holds a live claim: left to it")
        if claim.status is ClaimStatus.FINAL:
            return settlement(HELD, f"settled meanwhile by the service: {claim.entry.state}")
        if claim.status is not ClaimStatus.RECLAIMED:  # CONFLICT: the record changed meanwhile
            return settlement(HELD, f"the record changed meanwhile ({claim.status}): left as it is")
        with ledger_errors(f"claimed {creditor}/{number}, but cannot record it"):
            await self._ledger.finish(
                creditor=creditor,
                invoice_number=number,
                outcome=Outcome.REGISTERED,
                result=result.model_dump(mode="json"),
                now=self._clock(),
            )
        try:
            await self._publisher.publish_result(event, key)
        except OperatorError as error:
            raise OperatorError(
                f"{creditor}/{number} is recorded registered, but its result was not published ({error}); "
                f"run `results republish --invoice {creditor}/{number}` (or restart the service)"
            ) from None
        with ledger_errors(f"published {creditor}/{number}, but cannot mark it published"):
            await self._ledger.mark_published(creditor=creditor, invoice_number=number, now=self._clock())
        return settlement(SETTLED, "at Amili: recorded registered, result published", event.id)


def _reconcile(args: argparse.Namespace) -> int:
    from service.bootstrap import instance_id

    settings = Settings()
    lease = timedelta(seconds=settings.claim_lease_seconds)

    async def run() -> list[Settlement]:
        async with (
            opened_ledger(settings) as ledger,
            amili_client(settings) as amili,
            contextlib.AsyncExitStack() as stack,
        ):
            publisher = None if args.dry_run else await stack.enter_async_context(result_producer(settings))
            reconciler = Reconciler(
                ledger=ledger,
                amili=amili,
                publisher=publisher,
                owner=f"reconcile@{instance_id()}",
                lease=lease,
            )
            with progress("reconciling") as bar:
                task = bar.add_task("reconciling", total=args.limit)
                return await reconciler.run(
                    limit=args.limit, page=args.batch, done=lambda _: bar.advance(task)
                )

    with quiet_aiokafka():
        settlements = asyncio.run(run())
    counts = Counter(item.status for item in settlements)
    summary = {status: counts.get(status, 0) for status in STATUSES}
    if args.json:
        show(
            [item.row() for item in settlements] + [{"kind": "summary", **summary}],
            columns=(),
            title="",
            as_json=True,
        )
    else:
        if args.verbose and settlements:
            show(
                [
                    {
                        "invoice": f"{s.creditor}/{s.invoice_number}",
                        "was": s.was,
                        "status": s.status,
                        "note": s.note,
                    }
                    for s in settlements
                ],
                columns=("invoice", "was", "status", "note"),
                title="reconciled" + (" (dry run)" if args.dry_run else ""),
                as_json=False,
            )
        title = "reconcile (dry run)" if args.dry_run else "reconcile"
        show([summary], columns=STATUSES, title=title, as_json=False)
    return EXIT_RECONCILE_ERRORS if summary[ERROR] else 0


RECONCILE_EPILOG = """\
Walks the ledger's records in flight past their lease (CLAIM_LEASE_SECONDS) or failed, and looks
each up at Amili (never a POST):
  settled  Amili holds it: claimed as the service claims (safe while it runs), recorded
           registered, its result published (the id the service gives it) and marked published
  left     not at Amili: left for the service's next attempt (a failed one: a replay of its event)
  held     an instance holds a live claim on it, or settled it meanwhile: left to the service
  error    the look-up failed (Amili unavailable): run reconcile again later

--verbose: a row per invoice; --json: a line per invoice (kind "invoice") then one summary line
(kind "summary").

exit codes:
  0  done, no look-up failed
  1  a one-line failure (ledger, Amili credentials or URL, Kafka)
  3  done, but some look-ups failed (status error)
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``invoice show`` and ``reconcile``."""
    invoice = commands.add_parser(
        "invoice",
        help="one invoice in the ledger and at Amili",
        description="One invoice as the ledger and Amili know it.",
    )
    actions = invoice.add_subparsers(dest="action", required=True, metavar="ACTION")
    show_parser = actions.add_parser(
        "show",
        help="the ledger's record and Amili's registration, and whether they agree",
        description="Show an invoice's ledger record and its registration at Amili, side by side,\n"
        "and whether they agree (the exit code says it too).",
        epilog=SHOW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show_parser.add_argument("creditor", metavar="CREDITOR")
    show_parser.add_argument("invoice_number", metavar="INVOICE_NUMBER")
    show_parser.add_argument("--json", action="store_true", help="one JSON object")
    show_parser.set_defaults(handler=_show)

    reconcile = commands.add_parser(
        "reconcile",
        help="settle invoices whose answer from Amili was lost",
        description="Settle the invoices left in flight past their lease, or failed, that Amili\n"
        "holds: record them registered and publish their results. Safe while the service runs.",
        epilog=RECONCILE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reconcile.add_argument(
        "--dry-run", action="store_true", help="look up and say; claim, record, publish nothing"
    )
    reconcile.add_argument("--limit", type=positive, help="look at most this many records (default: all)")
    reconcile.add_argument(
        "--batch", type=positive, default=PAGE, help=f"records read from the ledger at once (default {PAGE})"
    )
    reconcile.add_argument("--verbose", "-v", action="store_true", help="a row per invoice")
    reconcile.add_argument("--json", action="store_true", help="a JSON line per invoice, then a summary line")
    reconcile.set_defaults(handler=_reconcile)
