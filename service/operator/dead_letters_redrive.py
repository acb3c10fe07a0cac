"""Redriving dead letters: the original record sent again to the input topic, once per origin.

What was redriven is remembered in a compacted topic of its own, ``<DEAD_LETTER_TOPIC>.redriven``,
one record per origin (key ``topic/partition/offset``, value: where it was sent, when, by whom,
whether edited). Why there rather than by reading back the input topic's ``redrive.origin``
headers:

- reading it costs one small record per origin ever redriven, however large the input topic;
- it outlives the input topic's retention, and it works whatever topic ``--to`` sent to;
- it is the audit trail: ``dead-letters list`` shows what was redriven, when and where to.

The record is sent first and remembered once the broker has it: a run stopped in between sends that
one again next time, which the ledger makes harmless (the invoice is registered at most once, its
result keeps its event id), whereas remembering first could lose a redrive. Two operators redriving
the same dead letters at the same moment may both send them, with the same harmless effect.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka.errors import KafkaError

from service.config import Settings
from service.operator.dead_letters_model import (
    DLQ_PREFIX,
    REDRIVE_PREFIX,
    DeadLetter,
    Origin,
    Selection,
    compact_time,
    header_text,
    in_order,
)
from service.operator.errors import OperatorError
from service.operator.kafka_tools import (
    Missing,
    Record,
    RecordFetcher,
    create_topic,
    kafka_errors,
    producer,
    progress,
    quiet_aiokafka,
    read_to_end,
    topic_exists,
)

REDRIVEN_SUFFIX = ".redriven"
MEMORY_TOPIC_CONFIGS = {"cleanup.policy": "compact"}

Action = Literal["send", "skip", "refuse", "failed"]


def memory_topic(settings: Settings) -> str:
    return settings.dead_letter_topic + REDRIVEN_SUFFIX


async def redriven(settings: Settings, topic: str) -> dict[str, dict[str, Any]]:
    """What was redriven, by origin (``topic/partition/offset``): the latest record of each key in
    the memory topic (a value that is not a JSON object, a tombstone included, forgets it)."""
    records = await read_to_end(settings, topic, label=f"reading {topic}")
    marks: dict[str, dict[str, Any]] = {}
    for record in records or ():
        if record.key is None:
            continue
        origin = record.key.decode("utf-8", errors="replace")
        try:
            mark = json.loads(record.value) if record.value is not None else None
        except ValueError:
            mark = None
        if isinstance(mark, dict):
            marks[origin] = mark
        else:
            marks.pop(origin, None)
    return marks


def describe_mark(mark: Mapping[str, Any]) -> str:
    """When and where to a dead letter was redriven, in a few words."""
    time = mark.get("time")
    return f"{compact_time(time) if isinstance(time, str) else '?'} to {mark.get('sent_to', '?')}"


@dataclass(frozen=True, slots=True)
class RedriveOptions:
    selection: Selection
    to: str
    memory_topic: str
    everything: bool = False
    limit: int | None = None
    dry_run: bool = False
    force: bool = False
    edit: bytes | None = None


@dataclass(slots=True)
class Planned:
    """What happens to one dead letter (or to an origin asked for that has none)."""

    origin: Origin | None
    letter: DeadLetter | None
    action: Action
    detail: str = ""
    key: bytes | None = None
    value: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    sent_to: str | None = None

    def row(self, *, dry_run: bool, to: str) -> dict[str, Any]:
        letter = self.letter
        done = {"send": "would send" if dry_run else "sent", "skip": "skipped", "refuse": "refused"}
        row: dict[str, Any] = {
            "origin": str(self.origin) if self.origin else None,
            "dead_letter": letter.place if letter else None,
            "rule": letter.rule if letter else None,
            "invoice": str(letter.invoice) if letter and letter.invoice else None,
            "action": done.get(self.action, self.action),
            "detail": self.detail,
            "to": to if self.action == "send" else None,
            "sent_to": self.sent_to,
        }
        if self.action == "send":
            row |= {
                "key": None if self.key is None else self.key.decode("utf-8", errors="backslashreplace"),
                "value_bytes": len(self.value or b""),
                "value_sha256": hashlib.sha256(self.value or b"").hexdigest(),
                "headers": header_text(self.headers),
            }
        return row


def _own(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The record's own headers: not ours (``dlq.*``) nor an earlier redrive's (``redrive.*``)."""
    return [(n, v) for n, v in headers if not n.startswith(DLQ_PREFIX) and not n.startswith(REDRIVE_PREFIX)]


def _redrive_headers(
    letter: DeadLetter, origin: Origin, now: datetime, edited: bool
) -> list[tuple[str, bytes]]:
    ours = [
        ("redrive.origin", str(origin)),
        ("redrive.dead_letter", f"{letter.record.topic}/{letter.record.partition}/{letter.record.offset}"),
        ("redrive.time", now.isoformat()),
    ]
    if edited:
        ours.append(("redrive.edited", "value"))
    return [(name, text.encode()) for name, text in ours]


def choose(letters: Sequence[DeadLetter], options: RedriveOptions, marks: Mapping[str, Any]) -> list[Planned]:
    """Which of ``letters`` to send, skip or refuse, and why (without fetching anything)."""
    if options.selection.empty and not options.everything:
        raise OperatorError(
            "say which dead letters: --rule, --since, --until, --partition, --origin, --file, or --all"
        )
    chosen = in_order(letter for letter in letters if options.selection.holds(letter))
    if options.edit is not None:
        origins = {letter.origin for letter in chosen}
        if len(origins) > 1:
            raise OperatorError(
                f"--edit replaces the value of one dead letter, and {len(origins)} are selected: "
                "choose one with --origin"
            )
    plans: list[Planned] = []
    seen: dict[Origin, DeadLetter] = {}
    sending = 0
    for letter in chosen:
        origin = letter.origin
        if origin is None:
            plans.append(
                Planned(None, letter, "refuse", "no dlq.topic, dlq.partition and dlq.offset: origin unknown")
            )
            continue
        if origin in seen:
            first = seen[origin]
            plans.append(Planned(origin, letter, "skip", f"the same origin as dead letter {first.place}"))
            continue
        seen[origin] = letter
        mark = marks.get(str(origin))
        if mark is not None and not options.force:
            plans.append(Planned(origin, letter, "skip", f"already redriven {describe_mark(mark)}"))
            continue
        if options.limit is not None and sending >= options.limit:
            break
        sending += 1
        again = f"redriven before, {describe_mark(mark)}; sent again (--force)" if mark is not None else ""
        plans.append(Planned(origin, letter, "send", again))
    found = {letter.origin for letter in chosen}
    for origin in sorted(options.selection.origins - found, key=str):
        plans.append(
            Planned(origin, None, "refuse", "no dead letter has this origin (or it is filtered out)")
        )
    return plans


async def prepare(settings: Settings, plans: list[Planned], options: RedriveOptions) -> None:
    """Fills in what each planned send carries: the dead letter's key, value and own headers, or
    the original from its source topic for a truncated one (refused when gone or not the same),
    ``--edit``'s value, and the ``redrive.*`` headers."""
    now = datetime.now(UTC)
    truncated = [p for p in plans if p.action == "send" and p.letter and p.letter.truncated]
    originals: dict[Origin, Record | Missing] = {}
    if truncated:
        with quiet_aiokafka(), kafka_errors(settings, "cannot fetch the originals of truncated dead letters"):
            async with RecordFetcher(settings) as fetcher:
                with progress("fetching originals") as bar:
                    task = bar.add_task("fetching originals", total=len(truncated))
                    for plan in truncated:
                        assert plan.origin is not None
                        o = plan.origin
                        originals[o] = await fetcher.fetch(o.topic, o.partition, o.offset)
                        bar.advance(task)
    for plan in plans:
        letter, origin = plan.letter, plan.origin
        if plan.action != "send" or letter is None or origin is None:
            continue
        key, value, headers = letter.record.key, letter.record.value, list(letter.own_headers)
        if letter.truncated:
            original = originals[origin]
            refusal = _refusal(letter, original)
            if refusal is not None:
                plan.action, plan.detail = "refuse", refusal
                continue
            assert isinstance(original, Record)
            key, value, headers = original.key, original.value, list(original.headers)
            plan.detail = plan.detail or "truncated dead letter: the original from its source topic"
        if options.edit is not None:
            value = options.edit
            plan.detail = plan.detail or "value replaced by --edit"
        plan.key, plan.value = key, value
        plan.headers = _own(headers) + _redrive_headers(letter, origin, now, options.edit is not None)


def _refusal(letter: DeadLetter, original: Record | Missing) -> str | None:
    """Why a truncated dead letter's original cannot be redriven, if it cannot."""
    if isinstance(original, Missing):
        return f"truncated dead letter and its original is gone: {original.reason}"
    expected = letter.value_sha256
    if expected is None:
        return "truncated dead letter without dlq.value_sha256: the original cannot be checked"
    found = hashlib.sha256(original.value or b"").hexdigest()
    if found != expected:
        return (
            f"truncated dead letter, and the record now at its origin is another one "
            f"(sha256 {found[:12]}…, expected {expected[:12]}…)"
        )
    return None


async def send(settings: Settings, plans: list[Planned], options: RedriveOptions) -> str | None:
    """Sends the planned records to ``options.to``, remembering each once the broker has it; the
    error that stopped it, if one did (the rest are marked ``failed``)."""
    sending = [p for p in plans if p.action == "send"]
    if not sending:
        return None
    largest = max(
        len(p.value or b"") + len(p.key or b"") + sum(len(n) + len(v) for n, v in p.headers) for p in sending
    )
    size = max(settings.kafka_max_request_bytes, largest + 64 * 1024)
    by = f"{getpass.getuser()}@{socket.gethostname()}"
    error: str | None = None
    with quiet_aiokafka():
        try:
            async with producer(settings, max_request_size=size) as out:
                remembered = []
                with progress(f"redriving to {options.to}") as bar:
                    task = bar.add_task(f"redriving to {options.to}", total=len(sending))
                    for plan in sending:
                        assert plan.origin is not None
                        assert plan.letter is not None
                        metadata = await out.send_and_wait(
                            options.to, value=plan.value, key=plan.key, headers=plan.headers
                        )
                        plan.sent_to = f"{options.to}/{metadata.partition}/{metadata.offset}"
                        mark = {
                            "origin": str(plan.origin),
                            "dead_letter": f"{plan.letter.record.topic}/{plan.letter.place}",
                            "sent_to": plan.sent_to,
                            "time": dict(plan.headers)["redrive.time"].decode(),
                            "edited": options.edit is not None,
                            "forced": options.force,
                            "value_sha256": hashlib.sha256(plan.value or b"").hexdigest(),
                            "by": by,
                        }
                        remembered.append(
                            await out.send(
                                options.memory_topic,
                                key=str(plan.origin).encode(),
                                value=json.dumps(mark).encode(),
                            )
                        )
                        bar.advance(task)
                    for future in remembered:
                        await future
        except (KafkaError, OSError, TimeoutError) as failure:
            from service.kafka.startup import describe_error

            error = describe_error(failure)
    if error is not None:
        for plan in sending:
            if plan.sent_to is None:
                plan.action, plan.detail = "failed", f"not sent: {error}"
    return error


async def redrive(
    settings: Settings, letters: Sequence[DeadLetter], options: RedriveOptions
) -> tuple[list[Planned], str | None]:
    """Plans, prepares and (unless a dry run) sends; the plans and the error that stopped the
    sending, if any."""
    if not await topic_exists(settings, options.to):
        raise OperatorError(f"topic {options.to} does not exist")
    marks = await redriven(settings, options.memory_topic)
    plans = choose(letters, options, marks)
    await prepare(settings, plans, options)
    if options.dry_run or not any(p.action == "send" for p in plans):
        return plans, None
    if await create_topic(settings, options.memory_topic, configs=MEMORY_TOPIC_CONFIGS):
        print(
            f"created topic {options.memory_topic} (compacted): it remembers what was redriven",
            file=sys.stderr,
        )
    return plans, await send(settings, plans, options)
