"""``replay --from TIME|OFFSET|earliest``: move the service's consumer group back on its input topic,
so that it reads those events again.

Nothing is registered twice: the ledger knows every invoice already registered, and for those the
service only publishes its stored result again (same event id); rejected events are rejected
again (same event id), dead letters are written again.

The group must be empty, i.e. the service stopped: a running instance keeps its positions in memory
and commits them over the replayed offsets, and the broker refuses a commit from outside a group
that has members anyway (a classic group only takes such a commit while it is empty). So there is
no ``--force``; ``--wait`` gives a stopping service time to leave the group. The usual way: stop
the service (scale to 0), ``replay``, start it again.

Replay only moves offsets back: a partition whose target lies after its committed offset is left
as it is, since moving it would skip events never processed.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from rich.console import Console

from service.config import Settings
from service.operator.errors import OperatorError
from service.operator.output import show

COLUMNS = ("partition", "committed now", "new offset", "to re-read", "note")


@dataclass(frozen=True)
class Start:
    """Where ``--from`` says to start: the first offset (``earliest``), one offset, or the first
    record at or after a time."""

    kind: Literal["earliest", "offset", "time"]
    offset: int | None = None
    time: datetime | None = None

    def describe(self) -> str:
        if self.kind == "offset":
            return f"offset {self.offset}"
        if self.kind == "time":
            assert self.time is not None
            return f"the first record at or after {self.time.isoformat()}"
        return "the earliest offset"


_INTEGER = re.compile(r"[+-]?\d+")


def parse_from(text: str) -> Start:
    """``earliest``, a non-negative integer (an offset), or an ISO 8601 time with its UTC offset
    (a date alone is its midnight UTC); ``ValueError`` saying what is accepted otherwise."""
    value = text.strip()
    if value.lower() == "earliest":
        return Start("earliest")
    if _INTEGER.fullmatch(value):
        offset = int(value)
        if offset < 0:
            raise ValueError(f"--from {text}: an offset cannot be negative")
        return Start("offset", offset=offset)
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return Start("time", time=datetime(day.year, day.month, day.day, tzinfo=UTC))
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"--from {text!r} is neither earliest, an offset nor an ISO 8601 time "
            "(2026-12-01T08:00:00Z, 2026-12-01T09:00:00+01:00, 2026-12-01)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"--from {text!r} has no UTC offset: add Z or +01:00, say")
    return Start("time", time=moment)


@dataclass(frozen=True)
class PartitionPlan:
    """What replay does to one partition: ``new_offset`` is ``None`` where it leaves it as is."""

    partition: int
    committed: int | None
    """The group's committed offset now; ``None``: nothing committed (the service would start at
    the earliest offset)."""
    beginning: int
    end: int
    new_offset: int | None
    rereads: int
    """Records the service reads again after the move (0 where nothing moves)."""
    note: str = ""

    def as_row(self, *, topic: str, group: str, applied: bool) -> dict[str, Any]:
        return {
            "topic": topic,
            "group": group,
            "partition": self.partition,
            "committed": self.committed,
            "new_offset": self.new_offset,
            "records_to_reread": self.rereads,
            "beginning": self.beginning,
            "end": self.end,
            "note": self.note,
            "applied": applied and self.new_offset is not None,
        }

    def as_table_row(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "committed now": "none" if self.committed is None else self.committed,
            "new offset": "unchanged" if self.new_offset is None else self.new_offset,
            "to re-read": self.rereads,
            "note": self.note,
        }


def plan_replay(
    start: Start,
    *,
    committed: Mapping[int, int | None],
    beginning: Mapping[int, int],
    end: Mapping[int, int],
    at_time: Mapping[int, int | None] | None = None,
    partition: int | None = None,
) -> list[PartitionPlan]:
    """The move of each partition (all of ``end``'s, or only ``partition``), from the group's
    ``committed`` offsets, each partition's first (``beginning``) and next (``end``) offset and, for
    a time, ``at_time``: the first offset at or after it (``None``: no record that late).

    The service reads a partition from its committed offset (from its first offset where nothing is
    committed or the committed offset is gone); a target before that is the new offset and the
    records in between are read again; a target at or after it leaves the partition as it is, as
    replay never skips an event. An offset outside a partition's records is brought to its first or
    next offset, and said in the note.
    """
    if partition is not None and partition not in end:
        known = ", ".join(str(p) for p in sorted(end))
        raise ValueError(f"--partition {partition}: the topic has partitions {known}")
    plans = []
    for number in sorted(end) if partition is None else [partition]:
        first, next_ = beginning[number], end[number]
        current = committed.get(number)
        position = first if current is None else min(max(current, first), next_)
        note = ""
        if start.kind == "earliest":
            target = first
        elif start.kind == "offset":
            assert start.offset is not None
            target = min(max(start.offset, first), next_)
            if start.offset < first:
                note = f"offset {start.offset} is gone (retention): from {first}"
            elif start.offset > next_:
                note = f"offset {start.offset} is past the end ({next_})"
        else:
            found = (at_time or {}).get(number)
            target = next_ if found is None else found
            if found is None:
                note = "no record at or after that time"
        if target < position:
            plans.append(PartitionPlan(number, current, first, next_, target, position - target, note))
            continue
        if current is None:
            why = "nothing committed: the service reads it from its first offset anyway"
        elif target == position:
            why = "already there"
        else:
            why = "target after the committed offset: left as it is (replay never skips)"
        note = f"{note}; {why}" if note else why
        plans.append(PartitionPlan(number, current, first, next_, None, 0, note))
    return plans


@dataclass(frozen=True)
class GroupState:
    state: str
    members: tuple[str, ...]
    """The members' client ids and hosts (``amili-registrar@/10.0.0.7``)."""


_GROUP_ID_NOT_FOUND = 69


async def _group_state(admin: Any, group: str) -> GroupState:
    (response,) = await admin.describe_consumer_groups([group])
    # DescribeGroups: (error_code, group, state, protocol_type, protocol, members[, operations])
    for described in response.groups:
        error_code, name, state, _, _, members = described[:6]
        if name != group:
            continue
        if error_code == _GROUP_ID_NOT_FOUND:  # newer brokers' way of saying "Dead"
            return GroupState("Dead", ())
        if error_code:
            from aiokafka.errors import for_code

            raise for_code(error_code)(f"describing consumer group {group}")
        return GroupState(state, tuple(f"{m[1]}@{m[2]}" for m in members))
    return GroupState("Dead", ())


def _members_line(group: str, found: GroupState) -> str:
    shown = ", ".join(found.members[:3]) + (", ..." if len(found.members) > 3 else "")
    return (
        f"consumer group {group} has {len(found.members)} active member(s) ({shown}): stop the service "
        "first (scale it to 0), replay, then start it; a running instance would commit over the new "
        "offsets (--wait SECONDS waits for a stopping one to leave)"
    )


@dataclass(frozen=True)
class ReplayReport:
    topic: str
    group: str
    start: Start
    plans: list[PartitionPlan]
    applied: bool
    group_state: GroupState

    @property
    def rereads(self) -> int:
        return sum(plan.rereads for plan in self.plans)

    @property
    def moved(self) -> int:
        return sum(1 for plan in self.plans if plan.new_offset is not None)


async def replay(
    settings: Settings,
    start: Start,
    *,
    partition: int | None = None,
    dry_run: bool = False,
    wait_seconds: float = 0.0,
) -> ReplayReport:
    """Plan the move of ``CONSUMER_GROUP_ID`` on ``INVOICE_CREATED_TOPIC`` and, unless ``dry_run``,
    commit it; ``OperatorError`` while the group has members (after ``wait_seconds``)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from service.operator.kafka_tools import security_options

    bootstrap, topic, group = (
        settings.kafka_bootstrap_servers,
        settings.invoice_created_topic,
        settings.consumer_group_id,
    )
    common: dict[str, Any] = {**security_options(settings), "client_id": "amili-registrar-replay"}
    admin = AIOKafkaAdminClient(**common)
    reader = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **common)
    try:
        await admin.start()
        await reader.start()
        found = await _group_state(admin, group)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while found.members and not dry_run and loop.time() < deadline:
            await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
            found = await _group_state(admin, group)
        if found.members and not dry_run:
            raise OperatorError(_members_line(group, found))
        numbers = await _partitions(admin, topic)
        if not numbers:
            raise OperatorError(f"topic {topic} (INVOICE_CREATED_TOPIC) does not exist at {bootstrap}")
        tps = [TopicPartition(topic, number) for number in sorted(numbers)]
        beginning = {tp.partition: offset for tp, offset in (await reader.beginning_offsets(tps)).items()}
        end = {tp.partition: offset for tp, offset in (await reader.end_offsets(tps)).items()}
        listed = await admin.list_consumer_group_offsets(group, partitions=tps)
        committed: dict[int, int | None] = {tp.partition: None for tp in tps}
        for tp, meta in listed.items():
            if tp.topic == topic and meta.offset >= 0:
                committed[tp.partition] = meta.offset
        at_time: dict[int, int | None] | None = None
        if start.kind == "time":
            assert start.time is not None
            millis = int(start.time.timestamp() * 1000)
            times = await reader.offsets_for_times({tp: max(0, millis) for tp in tps})
            at_time = {
                tp.partition: (None if found_at is None else found_at.offset)
                for tp, found_at in times.items()
            }
        try:
            plans = plan_replay(
                start, committed=committed, beginning=beginning, end=end, at_time=at_time, partition=partition
            )
        except ValueError as error:
            raise OperatorError(str(error)) from None
        moves = {TopicPartition(topic, p.partition): p.new_offset for p in plans if p.new_offset is not None}
        if dry_run or not moves:
            return ReplayReport(topic, group, start, plans, False, found)
        await _commit(common, group, moves)
    finally:
        await reader.stop()
        await admin.close()
    return ReplayReport(topic, group, start, plans, True, found)


async def _partitions(admin: Any, topic: str) -> list[int]:
    """The partitions of ``topic`` (none: it does not exist). Asked as all topics' metadata: a
    request naming a missing topic would create it on a broker that creates topics on first use."""
    described = await admin.describe_topics()
    return sorted(
        int(partition["partition"])
        for found in described
        if found["topic"] == topic and not found["error_code"]
        for partition in found["partitions"]
    )


async def _commit(common: Mapping[str, Any], group: str, moves: Mapping[Any, int]) -> None:
    """Commit ``moves`` for ``group`` from outside it: a consumer assigned the partitions (it
    never joins), whose commit the broker takes only while the group is empty."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import CommitFailedError

    committer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **common)
    await committer.start()
    try:
        committer.assign(list(moves))
        try:
            await committer.commit(dict(moves))
        except CommitFailedError:
            # UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION or REBALANCE_IN_PROGRESS: someone joined.
            raise OperatorError(
                f"the broker refused the new offsets of consumer group {group}: it has members "
                "again (the service started meanwhile?); stop it and replay again"
            ) from None
    finally:
        await committer.stop()


def _table_title(report: ReplayReport, *, dry_run: bool) -> str:
    head = f"replay {report.topic} for group {report.group} from {report.start.describe()}"
    if dry_run:
        members = (
            f"; the group has {len(report.group_state.members)} member(s)"
            if report.group_state.members
            else ""
        )
        return f"{head} (dry run{members})"
    return head


def _run(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from service.operator.kafka_tools import quiet_aiokafka

    settings = Settings()
    try:
        start = parse_from(args.from_)
    except ValueError as error:
        raise OperatorError(str(error)) from None

    async def run() -> ReplayReport:
        async with asyncio.timeout(args.timeout + args.wait):
            return await replay(
                settings, start, partition=args.partition, dry_run=args.dry_run, wait_seconds=args.wait
            )

    # The failure is said once, in one line; aiokafka would say it again for every attempt.
    try:
        with quiet_aiokafka():
            report = asyncio.run(run())
    except (KafkaError, OSError, TimeoutError) as error:
        reason = str(error) or error.__class__.__name__
        raise OperatorError(f"Kafka at {settings.kafka_bootstrap_servers}: {reason}") from None
    rows = [
        plan.as_row(topic=report.topic, group=report.group, applied=report.applied)
        if args.json
        else plan.as_table_row()
        for plan in report.plans
    ]
    show(rows, columns=COLUMNS, title=_table_title(report, dry_run=args.dry_run), as_json=args.json)
    if not args.json:
        if args.dry_run:
            line = f"dry run: {report.moved} partition(s) would move back, {report.rereads} record(s) re-read"
        elif report.applied:
            line = (
                f"moved {report.moved} partition(s) back: {report.rereads} record(s) are read again when "
                "the service starts; invoices already registered are not registered again (the ledger), "
                "their results are published again with the same event ids"
            )
        else:
            line = "nothing to move"
        Console().print(line)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``replay``."""
    replay_ = commands.add_parser(
        "replay",
        help="move the service's consumer group back, so it reads events again",
        description="Move CONSUMER_GROUP_ID's committed offsets on INVOICE_CREATED_TOPIC back to "
        "--from, and show per partition the committed offset, the new one and the records read "
        "again. The ledger keeps it safe: an invoice already registered is not registered again, "
        "its result is published again with the same event id. The group must have no members: "
        "stop the service, replay, start it (a running instance would commit over the new "
        "offsets, and the broker refuses them while it has members; there is no --force). A "
        "partition whose target is after its committed offset is left as it is (replay never "
        "skips events). Asks nothing: for scripts too.",
    )
    replay_.add_argument(
        "--from",
        dest="from_",
        required=True,
        metavar="TIME|OFFSET|earliest",
        help="an ISO 8601 time with its offset (2026-12-01T08:00:00Z; a date is its midnight UTC): "
        "the first record at or after it, on each partition; an offset (on every partition, or "
        "the one of --partition); or earliest",
    )
    replay_.add_argument("--partition", type=int, metavar="N", help="only this partition")
    replay_.add_argument("--dry-run", action="store_true", help="show what would move, move nothing")
    replay_.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for the group's members to leave (a service stopping) (default 0)",
    )
    replay_.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the broker (default 30)"
    )
    replay_.add_argument("--json", action="store_true", help="one JSON line per partition")
    replay_.set_defaults(handler=_run)
