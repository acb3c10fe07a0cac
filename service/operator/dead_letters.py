"""``dead-letters list`` and ``dead-letters redrive``: what is on the dead-letter topic, and sending
the original records back to the input topic once they can be processed.

Both read the dead-letter topic (``DEAD_LETTER_TOPIC``) from its beginning to the end offsets it had
when the command started, with the service's Kafka settings (SASL/TLS included). A redrive sends
each origin once: see ``service.operator.dead_letters_redrive``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from service.config import Settings
from service.operator.dead_letters_model import (
    DeadLetter,
    Origin,
    Selection,
    compact_time,
    in_order,
    parse_time,
    read_origins,
    shorten,
)
from service.operator.errors import OperatorError
from service.operator.output import show

LIST_COLUMNS = ["dead letter", "time", "rule", "reason", "source", "truncated", "invoice", "redriven"]
REDRIVE_COLUMNS = ["origin", "dead letter", "rule", "invoice", "action", "detail", "sent to"]


def _time(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (2026-12-05, 2026-12-05T14:00, 2026-12-05T14:00+01:00)"
        ) from None


def _origin(text: str) -> Origin:
    try:
        return Origin.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _partition(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a partition number")
    return int(text)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    filters = parser.add_argument_group("which dead letters (every filter given must hold)")
    filters.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="RULE",
        help="dlq.rule, as gave_up or json (repeatable: any of them)",
    )
    filters.add_argument(
        "--since",
        type=_time,
        metavar="TIME",
        help="dead-lettered at or after this ISO time (dlq.time; UTC unless it says)",
    )
    filters.add_argument(
        "--until", type=_time, metavar="TIME", help="dead-lettered before this ISO time (dlq.time)"
    )
    filters.add_argument(
        "--partition",
        type=_partition,
        action="append",
        default=[],
        metavar="N",
        help="partition of the source topic (dlq.partition; repeatable)",
    )
    parser.add_argument(
        "--redriven-topic",
        metavar="TOPIC",
        help="the compacted topic remembering what was redriven (default: DEAD_LETTER_TOPIC.redriven)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object a line, every field whole")


def _selection(args: argparse.Namespace, origins: frozenset[Origin] = frozenset()) -> Selection:
    return Selection(
        rules=frozenset(args.rule),
        since=args.since,
        until=args.until,
        partitions=frozenset(args.partition),
        origins=origins,
    )


def _settings_and_topics(args: argparse.Namespace) -> tuple[Settings, str]:
    from service.operator.dead_letters_redrive import memory_topic
    from service.operator.kafka_tools import check_topic_name

    settings = Settings()
    memory = check_topic_name(args.redriven_topic) if args.redriven_topic else memory_topic(settings)
    return settings, memory


async def _dead_letters(settings: Settings) -> list[DeadLetter]:
    from service.operator.kafka_tools import read_to_end

    topic = settings.dead_letter_topic
    records = await read_to_end(settings, topic, label=f"reading {topic}")
    if records is None:
        raise OperatorError(f"topic {topic} (DEAD_LETTER_TOPIC) does not exist")
    return [DeadLetter.of(record) for record in records]


def _list_row(letter: DeadLetter, mark: Mapping[str, Any] | None) -> dict[str, Any]:
    origin = letter.origin
    return {
        "dead_letter": {
            "topic": letter.record.topic,
            "partition": letter.record.partition,
            "offset": letter.record.offset,
        },
        "time": letter.time_text,
        "rule": letter.rule,
        "reason": letter.reason,
        "origin": str(origin) if origin else None,
        "source": (
            {"topic": origin.topic, "partition": origin.partition, "offset": origin.offset}
            if origin
            else None
        ),
        "truncated": letter.truncated,
        "original_size": letter.original_size,
        "invoice": (
            {"creditor": letter.invoice.creditor, "invoice_number": letter.invoice.invoice_number}
            if letter.invoice
            else None
        ),
        "redriven": dict(mark) if mark else None,
    }


def _list_cells(letter: DeadLetter, mark: Mapping[str, Any] | None) -> dict[str, Any]:
    from service.operator.dead_letters_redrive import describe_mark

    return {
        "dead letter": letter.place,
        "time": compact_time(letter.time_text),
        "rule": letter.rule,
        "reason": shorten(letter.reason, 50),
        "source": str(letter.origin) if letter.origin else None,
        "truncated": f"yes ({letter.original_size} bytes)" if letter.truncated else "",
        "invoice": str(letter.invoice) if letter.invoice else None,
        "redriven": describe_mark(mark) if mark else None,
    }


def _list(args: argparse.Namespace) -> int:
    from service.operator.dead_letters_redrive import redriven

    settings, memory = _settings_and_topics(args)

    async def gather() -> tuple[list[DeadLetter], dict[str, dict[str, Any]]]:
        return await _dead_letters(settings), await redriven(settings, memory)

    letters, marks = asyncio.run(gather())
    selection = _selection(args)
    matching = in_order(letter for letter in letters if selection.holds(letter))
    shown = matching[: args.limit] if args.limit else matching

    def mark(letter: DeadLetter) -> Mapping[str, Any] | None:
        return marks.get(str(letter.origin)) if letter.origin else None

    if args.json:
        show([_list_row(d, mark(d)) for d in shown], columns=LIST_COLUMNS, title="", as_json=True)
        return 0
    title = f"dead letters on {settings.dead_letter_topic}: {len(shown)}"
    if len(shown) < len(matching):
        title += f" (the first; {len(matching)} match)"
    elif len(matching) < len(letters):
        title += f" of {len(letters)}"
    show([_list_cells(d, mark(d)) for d in shown], columns=LIST_COLUMNS, title=title, as_json=False)
    return 0


def _read_file(path: Path, what: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as error:
        raise OperatorError(f"cannot read {what} {path}: {error.strerror or error}") from error


def _redrive(args: argparse.Namespace) -> int:
    from service.operator.dead_letters_redrive import RedriveOptions, redrive
    from service.operator.kafka_tools import check_topic_name

    settings, memory = _settings_and_topics(args)
    origins = list(args.origin)
    if args.file is not None:
        text = _read_file(args.file, "the origins in").decode("utf-8", errors="replace")
        origins += read_origins(args.file, text)
    edit = None
    if args.edit is not None:
        edit = _read_file(args.edit, "the edited value in")
        try:
            json.loads(edit)
        except ValueError as error:
            raise OperatorError(f"{args.edit} is not JSON: {error}") from error
    options = RedriveOptions(
        selection=_selection(args, frozenset(origins)),
        to=check_topic_name(args.to) if args.to else settings.invoice_created_topic,
        memory_topic=memory,
        everything=args.all,
        limit=args.limit,
        dry_run=args.dry_run,
        force=args.force,
        edit=edit,
    )

    if options.selection.empty and not options.everything:
        raise OperatorError(
            "say which dead letters: --rule, --since, --until, --partition, --origin, --file, or --all"
        )

    async def run() -> tuple[list[Any], str | None]:
        return await redrive(settings, await _dead_letters(settings), options)

    plans, stopped = asyncio.run(run())
    rows = [plan.row(dry_run=args.dry_run, to=options.to) for plan in plans]
    if args.json:
        show(rows, columns=REDRIVE_COLUMNS, title="", as_json=True)
    else:
        cells = [
            {
                "origin": row["origin"],
                "dead letter": row["dead_letter"],
                "rule": row["rule"],
                "invoice": row["invoice"],
                "action": row["action"],
                "detail": shorten(row["detail"], 80),
                "sent to": row["sent_to"] or row["to"],
            }
            for row in rows
        ]
        title = f"{'dry run: ' if args.dry_run else ''}redrive to {options.to}"
        show(cells, columns=REDRIVE_COLUMNS, title=title, as_json=False)
    counts = Counter(row["action"] for row in rows)
    summary = ", ".join(f"{action} {count}" for action, count in counts.items()) or "nothing selected"
    if any(row["detail"].startswith("already redriven") for row in rows):
        summary += " (those already redriven: --force sends them again)"
    print(f"{'dry run: ' if args.dry_run else ''}{summary}", file=sys.stderr)
    if stopped is not None:
        sent = counts.get("sent", 0)
        raise OperatorError(
            f"redrive stopped after {sent} sent: {stopped}; run it again: what was sent and remembered "
            "is skipped"
        )
    return 1 if counts.get("refused") else 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``dead-letters list`` and ``dead-letters redrive``."""
    dead_letters = commands.add_parser(
        "dead-letters",
        help="list dead letters, redrive them to the input topic",
        description="The dead-letter topic (DEAD_LETTER_TOPIC), read from its beginning to its end "
        "when the command starts, with the service's Kafka settings (SASL/TLS included).",
    )
    actions = dead_letters.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list",
        help="show dead letters: why, whence, when, which invoice",
        description="Each dead letter: its partition/offset, dlq.time, rule, reason (shortened in the "
        "table, whole with --json), source topic/partition/offset, whether truncated, the invoice "
        "(creditor/invoice number) when its value can be read as one, and when it was redriven. "
        "Oldest first.",
    )
    _add_filters(listing)
    listing.add_argument("--limit", type=_count, metavar="N", help="show at most this many (the oldest)")
    listing.set_defaults(handler=_list)

    redriving = actions.add_parser(
        "redrive",
        help="send dead letters' original records to the input topic again, once each",
        description="Sends each selected dead letter's original record (key, value and its own headers "
        "byte for byte, without the dlq.* ones) to INVOICE_CREATED_TOPIC (or --to), with headers "
        "redrive.origin (source topic/partition/offset), redrive.dead_letter and redrive.time. Each "
        "origin is sent once: what was sent is remembered in a compacted topic "
        "(DEAD_LETTER_TOPIC.redriven), and a dead letter already redriven is skipped unless --force. "
        "A truncated dead letter is sent from its source topic, checked against dlq.value_sha256, or "
        "refused when the original is gone. Exit 1 when any is refused.",
    )
    _add_filters(redriving)
    chosen = redriving.add_argument_group("or by origin (with the filters, both must hold)")
    chosen.add_argument(
        "--origin",
        type=_origin,
        action="append",
        default=[],
        metavar="TOPIC/PARTITION/OFFSET",
        help="the source record's place, as dlq.topic/dlq.partition/dlq.offset (repeatable)",
    )
    chosen.add_argument(
        "--file",
        type=Path,
        help="origins, one a line, or the JSON lines of 'dead-letters list --json' ('-': stdin)",
    )
    chosen.add_argument("--all", action="store_true", help="every dead letter (no filter needed)")
    redriving.add_argument("--to", metavar="TOPIC", help="topic to send to (default: INVOICE_CREATED_TOPIC)")
    redriving.add_argument("--dry-run", action="store_true", help="show what would be sent; send nothing")
    redriving.add_argument("--force", action="store_true", help="send again those already redriven")
    redriving.add_argument(
        "--edit",
        type=Path,
        metavar="FILE",
        help="a JSON file whose content replaces the value (one dead letter only), to fix a bad event",
    )
    redriving.add_argument(
        "--limit",
        type=_count,
        metavar="N",
        help="send at most this many (the oldest; those skipped do not count)",
    )
    redriving.set_defaults(handler=_redrive)
