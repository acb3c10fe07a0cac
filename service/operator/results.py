"""``results republish``: publish stored results again, from the ledger, as the service published
them: the same CloudEvents ids (derived from creditor, invoice number and outcome), the same key
(``creditor/invoice_number``), structured mode, ``acks=all`` with idempotence. Consumers that
deduplicate on the event id see nothing new; one that lost its copy gets it back.

Also what the other operator commands that touch the ledger or publish results share: the ledger
of ``LEDGER_URL`` opened for the length of a command, and a producer of results over the
service's own Kafka settings (SASL/TLS from ``kafka_security``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from aiokafka import AIOKafkaProducer
from rich.console import Console

from service.config import Settings
from service.events.cloudevents import CloudEvent
from service.events.contract import RegistrationResult, result_event, result_key
from service.kafka.publishing import RESULT_HEADERS
from service.ledger.base import InvoiceKey, Ledger, LedgerEntry, LedgerError
from service.ledger.factory import open_ledger
from service.ledger.sqlite import SqliteLedger
from service.operator.errors import OperatorError
from service.operator.kafka_tools import kafka_errors, producer, progress, quiet_aiokafka
from service.operator.output import show

"""The headers of a result record, as ``KafkaResultPublisher`` writes them."""
PAGE = 500
"""Ledger records read at once, and results sent before their acknowledgements are awaited."""

EXIT_SKIPPED = 3
"""``results republish``: some invoices named had no final result in the ledger."""


def now() -> datetime:
    return datetime.now(UTC)


# -- the ledger


@contextlib.asynccontextmanager
async def opened_ledger(settings: Settings) -> AsyncIterator[Ledger]:
    """The ledger of ``LEDGER_URL``, opened (and migrated, as the service would) and closed. A
    SQLite file that does not exist is refused rather than made: an empty ledger would answer
    "not found" for every invoice."""
    url = settings.ledger_url.get_secret_value()
    try:
        ledger = open_ledger(url)
    except ValueError as error:
        raise OperatorError(f"LEDGER_URL: {error}") from None
    path = sqlite_path(url) if isinstance(ledger, SqliteLedger) else None
    if path is not None and not await asyncio.to_thread(os.path.isfile, path):
        raise OperatorError(f"LEDGER_URL names {path}, which does not exist (a relative path starts here)")
    with ledger_errors("cannot open the ledger"):
        await ledger.open()
    try:
        yield ledger
    finally:
        with contextlib.suppress(LedgerError):
            await ledger.close()


def sqlite_path(url: str) -> str | None:
    """The file a ``sqlite://`` URL names (``open_ledger``'s rules), ``None`` for memory."""
    rest = url.removeprefix("sqlite://")
    return None if rest in ("", "/:memory:") else unquote(rest[1:])


@contextlib.contextmanager
def ledger_errors(doing: str) -> Iterator[None]:
    """A ledger that fails while ``doing`` something, as one ``OperatorError`` line (its message
    never holds the DSN's password)."""
    try:
        yield
    except LedgerError as error:
        raise OperatorError(f"{doing}: {error}") from None


# -- Kafka


class ResultProducer:
    """Sends result events to ``REGISTRATION_RESULT_TOPIC`` as the service does (structured
    CloudEvents, keyed ``creditor/invoice_number``, ``acks=all``, idempotent), over the service's
    connection settings. Kafka's failures become one-line ``OperatorError``s: unlike the service's
    broker link it never waits for a broker that is away, an operator is told at once. Made by
    ``result_producer``."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self._settings = settings
        self._producer = producer
        self.topic = settings.registration_result_topic

    async def publish_result(self, event: CloudEvent, key: bytes) -> None:
        """Sends one result and waits for the broker to have it (the ``ResultPublisher`` port)."""
        await self.publish_many([(event, key)])

    async def publish_many(self, events: Sequence[tuple[CloudEvent, bytes]]) -> None:
        """Sends ``events`` together and returns once the broker has every one of them."""
        with kafka_errors(self._settings, f"cannot publish to {self.topic}"):
            async with asyncio.timeout(self._settings.kafka_request_timeout_seconds * 2 + 5):
                sent = [
                    await self._producer.send(
                        self.topic, value=event.to_structured(), key=key, headers=RESULT_HEADERS
                    )
                    for event, key in events
                ]
                await asyncio.gather(*sent)


@contextlib.asynccontextmanager
async def result_producer(settings: Settings) -> AsyncIterator[ResultProducer]:
    """A ``ResultProducer``, started (use it under ``quiet_aiokafka()``)."""
    with kafka_errors(settings, "cannot connect"):
        async with producer(settings, max_request_size=settings.kafka_max_request_bytes) as started:
            yield ResultProducer(settings, started)


def stored_result(entry: LedgerEntry) -> RegistrationResult:
    """The result a final record holds (what the service published)."""
    if entry.result is None:
        raise OperatorError(f"{entry.key} holds no result (state {entry.state})")
    return RegistrationResult.model_validate(entry.result)


def result_of(result: RegistrationResult) -> tuple[CloudEvent, bytes]:
    """The event and key the service publishes for ``result``: the id is derived from creditor,
    invoice number and outcome (``result_event``), so it is the id the result first had."""
    return result_event(result, time=now()), result_key(result.key)


# -- arguments


def moment(text: str) -> datetime:
    """An ISO 8601 time with its UTC offset (``Z`` or ``+01:00``); a date alone is its midnight
    UTC. For argparse: ``ArgumentTypeError`` saying what is accepted otherwise."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (2026-12-01T08:00:00Z, 2026-12-01T09:00:00+01:00, 2026-12-01)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: add Z or +01:00, say")
    return parsed.astimezone(UTC)


def invoice_key(text: str) -> InvoiceKey:
    """``CREDITOR/INVOICE_NUMBER`` (split at the first ``/``: the invoice number may hold more)."""
    try:
        return InvoiceKey.parse(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not CREDITOR/INVOICE_NUMBER") from None


def read_invoice_keys(path: str) -> list[InvoiceKey]:
    """``CREDITOR/INVOICE_NUMBER`` a line from ``path`` (``-``: stdin); blank lines and lines
    starting with ``#`` are skipped."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise OperatorError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise OperatorError(f"{path} is not UTF-8 text") from None
    keys: list[InvoiceKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append(invoice_key(line))
        except argparse.ArgumentTypeError as error:
            raise OperatorError(f"{path} line {number}: {error}") from None
    return keys


# -- results republish


@dataclass(frozen=True, slots=True)
class Selection:
    """Which stored results to publish again: invoices by name, or the final records a filter
    finds."""

    invoices: tuple[InvoiceKey, ...] = ()
    creditor: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def by_name(self) -> bool:
        return bool(self.invoices)

    def describe(self) -> str:
        if self.by_name:
            return f"{len(self.invoices)} invoice(s) named"
        parts = [f"creditor {self.creditor}"] if self.creditor else []
        if self.since:
            parts.append(f"updated since {self.since.isoformat()}")
        if self.until:
            parts.append(f"updated before {self.until.isoformat()}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Unpublishable:
    """An invoice named that has no final result to publish, and why."""

    key: InvoiceKey
    why: str


@dataclass(frozen=True, slots=True)
class Republished:
    """One invoice of a republish: its result as sent (or to be sent), or why there is none."""

    creditor: str
    invoice_number: str
    outcome: str | None = None
    event_id: str | None = None
    published: bool = False
    note: str = ""

    def row(self) -> dict[str, Any]:
        return {
            "creditor": self.creditor,
            "invoice_number": self.invoice_number,
            "key": str(InvoiceKey(self.creditor, self.invoice_number)),
            "outcome": self.outcome,
            "event_id": self.event_id,
            "published": self.published,
            "note": self.note,
        }


async def selected_entries(
    ledger: Ledger, selection: Selection, *, page: int = PAGE
) -> AsyncIterator[LedgerEntry | Unpublishable]:
    """The final records ``selection`` names, page by page; an invoice named that has no final
    record comes as ``Unpublishable``."""
    if selection.by_name:
        for key in selection.invoices:
            with ledger_errors(f"cannot read {key} from the ledger"):
                entry = await ledger.get(creditor=key.creditor, invoice_number=key.invoice_number)
            if entry is None:
                yield Unpublishable(key, "no ledger record")
            elif not entry.is_final:
                yield Unpublishable(key, f"no final result yet ({entry.state})")
            else:
                yield entry
        return
    after: InvoiceKey | None = None
    while True:
        with ledger_errors("cannot read the ledger"):
            entries = await ledger.final_entries(
                creditor=selection.creditor,
                updated_since=selection.since,
                updated_until=selection.until,
                limit=page,
                after=after,
            )
        for entry in entries:
            yield entry
        if len(entries) < page:
            return
        after = entries[-1].key


class ManyResultPublisher(Protocol):
    async def publish_many(self, events: Sequence[tuple[CloudEvent, bytes]]) -> None: ...


async def republish(
    ledger: Ledger,
    selection: Selection,
    publisher: ManyResultPublisher | None,
    *,
    page: int = PAGE,
    advance: Callable[[int], None] = lambda _: None,
) -> list[Republished]:
    """Publishes the results ``selection`` finds (none with ``publisher`` ``None``: a dry run) and
    marks those never published before as published. ``advance`` hears of each invoice done."""
    done: list[Republished] = []
    batch: list[LedgerEntry] = []

    async def send() -> None:
        results = [stored_result(entry) for entry in batch]
        events = [result_of(result) for result in results]
        if publisher is not None:
            await publisher.publish_many(events)
            for entry in batch:
                if not entry.result_published:  # the service would have published it on restart
                    with ledger_errors(f"published, but cannot mark {entry.key}"):
                        await ledger.mark_published(
                            creditor=entry.creditor, invoice_number=entry.invoice_number, now=now()
                        )
        for entry, result, (event, _) in zip(batch, results, events, strict=True):
            note = "" if entry.result_published else "never published before"
            done.append(
                Republished(
                    entry.creditor,
                    entry.invoice_number,
                    result.outcome,
                    event.id,
                    published=publisher is not None,
                    note=note,
                )
            )
        advance(len(batch))
        batch.clear()

    async for found in selected_entries(ledger, selection, page=page):
        if isinstance(found, Unpublishable):
            done.append(Republished(*found.key, note=found.why))
            advance(1)
            continue
        batch.append(found)
        if len(batch) >= page:
            await send()
    if batch:
        await send()
    return done


def _selection(args: argparse.Namespace) -> Selection:
    invoices: list[InvoiceKey] = list(args.invoice or [])
    if args.file is not None:
        invoices += read_invoice_keys(args.file)
    filters = args.since is not None or args.until is not None or args.creditor is not None
    if invoices and filters:
        raise OperatorError(
            "name invoices (--invoice, --file) or filter (--since, --until, --creditor), not both"
        )
    if not invoices and not filters:
        if args.file is not None:
            raise OperatorError(f"{args.file} names no invoice")
        raise OperatorError("say which results: --since, --until, --creditor, --invoice or --file")
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise OperatorError("--since must be before --until")
    return Selection(
        invoices=tuple(dict.fromkeys(invoices)),  # each once, in the order given
        creditor=args.creditor,
        since=args.since,
        until=args.until,
    )


def _republish(args: argparse.Namespace) -> int:
    settings = Settings()
    selection = _selection(args)

    async def run() -> list[Republished]:
        async with opened_ledger(settings) as ledger, contextlib.AsyncExitStack() as stack:
            publisher = None if args.dry_run else await stack.enter_async_context(result_producer(settings))
            total = len(selection.invoices) if selection.by_name else None
            label = "checking" if args.dry_run else "republishing"
            with progress(label) as bar:
                task = bar.add_task(label, total=total)
                return await republish(
                    ledger, selection, publisher, advance=lambda n: bar.advance(task, n), page=args.batch
                )

    with quiet_aiokafka():
        done = asyncio.run(run())
    skipped = [item for item in done if item.event_id is None]
    if args.json:
        show([item.row() for item in done], columns=(), title="", as_json=True)
    else:
        sent = [item for item in done if item.event_id is not None]
        by_outcome = Counter(item.outcome for item in sent)
        verb = "would republish" if args.dry_run else "republished"
        if sent:
            show(
                [{"outcome": outcome, "results": count} for outcome, count in sorted(by_outcome.items())],
                columns=("outcome", "results"),
                title="dry run" if args.dry_run else "republished",
                as_json=False,
            )
        if skipped:
            show(
                [{"invoice": f"{item.creditor}/{item.invoice_number}", "why": item.note} for item in skipped],
                columns=("invoice", "why"),
                title="not republished",
                as_json=False,
            )
        Console().print(
            f"{verb} {len(sent)} result(s) to {settings.registration_result_topic} ({selection.describe()})"
            + (f"; {len(skipped)} skipped" if skipped else "")
        )
    return EXIT_SKIPPED if skipped else 0


REPUBLISH_EPILOG = """\
Select results by filter (--since/--until on the record's last update, --creditor) or by name
(--invoice CREDITOR/NUMBER, repeatable, or --file with one CREDITOR/NUMBER a line, - for stdin).
Each is published as the service published it: the same CloudEvents id (derived from creditor,
invoice number and outcome), the same key, structured mode, acks=all. A result recorded but never
published is marked published afterwards.

--json: one line per invoice (creditor, invoice_number, key, outcome, event_id, published, note).

exit codes:
  0  every result selected was published (or, with --dry-run, would be)
  1  a one-line failure (ledger, Kafka, arguments)
  3  some invoices named have no final result in the ledger (listed; the others were published)
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``results republish``."""
    results = commands.add_parser(
        "results",
        help="publish stored results again",
        description="Registration results as the ledger keeps them.",
    )
    actions = results.add_subparsers(dest="action", required=True, metavar="ACTION")
    republish_parser = actions.add_parser(
        "republish",
        help="publish stored results again, with their original event ids",
        description="Publish results from the ledger again to REGISTRATION_RESULT_TOPIC, with the\n"
        "same CloudEvents ids and keys as the first time: consumers that deduplicate see nothing new.",
        epilog=REPUBLISH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    republish_parser.add_argument(
        "--since",
        type=moment,
        metavar="TIME",
        help="records updated at or after TIME (ISO 8601, with offset)",
    )
    republish_parser.add_argument(
        "--until", type=moment, metavar="TIME", help="records updated before TIME (ISO 8601, with offset)"
    )
    republish_parser.add_argument("--creditor", help="records of this creditor only")
    republish_parser.add_argument(
        "--invoice",
        type=invoice_key,
        action="append",
        metavar="CREDITOR/NUMBER",
        help="an invoice whose result to publish again (repeatable)",
    )
    republish_parser.add_argument(
        "--file", metavar="FILE", help="invoices, one CREDITOR/NUMBER a line (-: stdin)"
    )
    republish_parser.add_argument("--dry-run", action="store_true", help="say what would go; publish nothing")
    republish_parser.add_argument("--json", action="store_true", help="one JSON line per invoice")
    republish_parser.add_argument(
        "--batch", type=positive, default=PAGE, help=f"records read and sent at once (default {PAGE})"
    )
    republish_parser.set_defaults(handler=_republish)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value
