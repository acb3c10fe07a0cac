"""``replay``: parsing ``--from``, planning the move (pure), and the command on fake Kafka clients
(the real broker: tests/integration/test_operator_replay.py)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, ClassVar

import aiokafka
import aiokafka.admin
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata

from service.cli import main
from service.operator.replay import PartitionPlan, Start, parse_from, plan_replay

# --from


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("earliest", Start("earliest")),
        ("EARLIEST", Start("earliest")),
        ("0", Start("offset", offset=0)),
        ("1234", Start("offset", offset=1234)),
        ("2026-12-01T08:00:00Z", Start("time", time=datetime(2026, 12, 1, 8, tzinfo=UTC))),
        (
            "2026-12-01T09:00:00+01:00",
            Start("time", time=datetime(2026, 12, 1, 9, tzinfo=timezone(timedelta(hours=1)))),
        ),
        ("2026-12-01", Start("time", time=datetime(2026, 12, 1, tzinfo=UTC))),
    ],
)
def test_from_takes_earliest_an_offset_or_an_iso_time(text: str, start: Start) -> None:
    assert parse_from(text) == start


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("-1", "cannot be negative"),
        ("2026-12-01T08:00:00", "no UTC offset"),
        ("yesterday", "neither earliest, an offset nor an ISO 8601 time"),
        ("latest", "neither earliest"),  # replay never skips forward
    ],
)
def test_from_refuses_what_it_cannot_place(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        parse_from(text)


# Planning: committed offsets + first and next offsets + target -> the move of each partition.


def test_earliest_moves_every_partition_to_its_first_offset() -> None:
    plans = plan_replay(Start("earliest"), committed={0: 10, 1: 7}, beginning={0: 0, 1: 2}, end={0: 10, 1: 9})
    assert [(p.partition, p.committed, p.new_offset, p.rereads) for p in plans] == [
        (0, 10, 0, 10),
        (1, 7, 2, 5),
    ]
    assert all(p.note == "" for p in plans)


def test_a_partition_without_a_commit_is_left_as_it_is() -> None:
    (plan,) = plan_replay(Start("earliest"), committed={0: None}, beginning={0: 0}, end={0: 5})
    assert (plan.new_offset, plan.rereads) == (None, 0)
    assert "nothing committed" in plan.note


def test_an_offset_applies_to_every_partition_never_skipping_forward() -> None:
    plans = plan_replay(
        Start("offset", offset=4),
        committed={0: 10, 1: 2, 2: 4},
        beginning={0: 0, 1: 0, 2: 0},
        end={0: 10, 1: 3, 2: 6},
    )
    by_partition = {p.partition: p for p in plans}
    assert (by_partition[0].new_offset, by_partition[0].rereads) == (4, 6)
    # 4 is past partition 1's end (3), which is after its committed offset 2: left, not skipped.
    assert (by_partition[1].new_offset, by_partition[1].rereads) == (None, 0)
    assert "past the end (3)" in by_partition[1].note
    assert "replay never skips" in by_partition[1].note
    assert (by_partition[2].new_offset, by_partition[2].note) == (None, "already there")


def test_an_offset_gone_to_retention_starts_at_the_first_offset_and_says_so() -> None:
    (plan,) = plan_replay(Start("offset", offset=3), committed={0: 50}, beginning={0: 20}, end={0: 60})
    assert (plan.new_offset, plan.rereads) == (20, 30)
    assert plan.note == "offset 3 is gone (retention): from 20"


def test_partition_selects_one_and_refuses_one_the_topic_lacks() -> None:
    (plan,) = plan_replay(
        Start("offset", offset=1),
        committed={0: 5, 1: 5},
        beginning={0: 0, 1: 0},
        end={0: 5, 1: 5},
        partition=1,
    )
    assert (plan.partition, plan.new_offset, plan.rereads) == (1, 1, 4)
    with pytest.raises(ValueError, match="--partition 7: the topic has partitions 0, 1"):
        plan_replay(Start("earliest"), committed={}, beginning={0: 0, 1: 0}, end={0: 5, 1: 5}, partition=7)


def test_a_time_moves_to_the_first_record_at_or_after_it() -> None:
    plans = plan_replay(
        Start("time", time=datetime(2026, 12, 1, tzinfo=UTC)),
        committed={0: 10, 1: 8, 2: 3},
        beginning={0: 0, 1: 0, 2: 0},
        end={0: 10, 1: 8, 2: 9},
        at_time={0: 6, 1: None, 2: 5},
    )
    assert [(p.new_offset, p.rereads) for p in plans] == [(6, 4), (None, 0), (None, 0)]
    assert plans[1].note == "no record at or after that time; already there"
    assert "replay never skips" in plans[2].note  # 5 is after the committed 3


def test_a_committed_offset_outside_the_records_counts_from_where_the_service_would_read() -> None:
    # Committed 100 on a topic that now ends at 10 (recreated): the service reads from 10 at most.
    (past,) = plan_replay(Start("earliest"), committed={0: 100}, beginning={0: 0}, end={0: 10})
    assert (past.new_offset, past.rereads) == (0, 10)
    # Committed 3 where retention removed up to 5: the service reads from 5 anyway.
    (gone,) = plan_replay(Start("earliest"), committed={0: 3}, beginning={0: 5}, end={0: 10})
    assert (gone.new_offset, gone.note) == (None, "already there")


def test_rows_for_scripts_and_people() -> None:
    plan = PartitionPlan(
        partition=0, committed=None, beginning=0, end=4, new_offset=None, rereads=0, note="n"
    )
    assert plan.as_table_row() == {
        "partition": 0,
        "committed now": "none",
        "new offset": "unchanged",
        "to re-read": 0,
        "note": "n",
    }
    row = plan.as_row(topic="t", group="g", applied=True)
    assert row["applied"] is False  # nothing moved here
    assert (row["committed"], row["new_offset"], row["records_to_reread"]) == (None, None, 0)


# The command, on fake clients: the service's Kafka settings, the members check, the commit.


class FakeKafka:
    """What the fake clients see and say; reset per test."""

    group_states: ClassVar[list[tuple[str, list[tuple[str, str, str, bytes, bytes]]]]] = []
    committed: ClassVar[dict[int, int]] = {}
    commits: ClassVar[list[dict[TopicPartition, int]]] = []
    options: ClassVar[list[dict[str, Any]]] = []
    refuse_commit: ClassVar[bool] = False
    topic = "invoice-created"
    group = "amili-registrar"
    beginning: ClassVar[dict[int, int]] = {0: 0, 1: 0}
    end: ClassVar[dict[int, int]] = {0: 10, 1: 4}


class FakeAdmin:
    def __init__(self, **options: Any) -> None:
        FakeKafka.options.append({"client": "admin", **options})

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def describe_consumer_groups(self, groups: list[str]) -> list[Any]:
        state, members = (
            FakeKafka.group_states.pop(0) if len(FakeKafka.group_states) > 1 else FakeKafka.group_states[0]
        )
        return [SimpleNamespace(groups=[(0, groups[0], state, "consumer", "range", members)])]

    async def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
        assert topics is None  # naming a missing topic could create it
        partitions = [{"partition": p} for p in FakeKafka.end]
        return [
            {"topic": "other", "error_code": 0, "partitions": [{"partition": 0}]},
            {"topic": FakeKafka.topic, "error_code": 0, "partitions": partitions},
        ]

    async def list_consumer_group_offsets(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        assert group == FakeKafka.group
        return {tp: OffsetAndMetadata(FakeKafka.committed.get(tp.partition, -1), "") for tp in partitions}


class FakeConsumer:
    def __init__(self, **options: Any) -> None:
        FakeKafka.options.append({"client": "consumer", **options})
        self.assigned: list[TopicPartition] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: FakeKafka.beginning[tp.partition] for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: FakeKafka.end[tp.partition] for tp in tps}

    async def offsets_for_times(self, times: Mapping[TopicPartition, int]) -> dict[TopicPartition, Any]:
        return {tp: SimpleNamespace(offset=2, timestamp=ms) for tp, ms in times.items()}

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = list(tps)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert set(offsets) <= set(self.assigned)
        if FakeKafka.refuse_commit:
            raise CommitFailedError("Commit cannot be completed since the group has already rebalanced")
        FakeKafka.commits.append(dict(offsets))


MEMBER = ("member-1", "amili-registrar", "/10.0.0.7", b"", b"")


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> type[FakeKafka]:
    monkeypatch.setattr(aiokafka.admin, "AIOKafkaAdminClient", FakeAdmin)
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", FakeConsumer)
    for name in ("KAFKA_SECURITY_PROTOCOL", "INVOICE_CREATED_TOPIC", "CONSUMER_GROUP_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9093")
    monkeypatch.setenv("COLUMNS", "250")
    FakeKafka.group_states = [("Empty", [])]
    FakeKafka.committed = {0: 10, 1: 4}
    FakeKafka.commits = []
    FakeKafka.options = []
    FakeKafka.refuse_commit = False
    return FakeKafka


def test_replay_connects_with_the_services_sasl_and_tls_settings(
    fake_kafka: type[FakeKafka], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "registrar")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    assert main(["replay", "--from", "earliest"]) == 0
    capsys.readouterr()
    assert {o["client"] for o in fake_kafka.options} == {"admin", "consumer"}
    for options in fake_kafka.options:
        assert options["bootstrap_servers"] == "kafka-0:9093"
        assert options["security_protocol"] == "SASL_SSL"
        assert isinstance(options["ssl_context"], ssl.SSLContext)
        assert options["sasl_mechanism"] == "SCRAM-SHA-512"
        assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("registrar", "s3cret")


def test_replay_commits_the_plan_and_shows_it(
    fake_kafka: type[FakeKafka], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", "--from", "earliest"]) == 0
    out = capsys.readouterr().out
    assert fake_kafka.commits == [
        {TopicPartition("invoice-created", 0): 0, TopicPartition("invoice-created", 1): 0}
    ]
    committer = [o for o in fake_kafka.options if o.get("group_id") == "amili-registrar"]
    assert len(committer) == 1
    assert committer[0]["enable_auto_commit"] is False
    title = " ".join(out.split())  # the title wraps at the table's width
    assert "replay invoice-created for group amili-registrar from the earliest offset" in title
    assert "moved 2 partition(s) back: 14 record(s) are read again" in out


def test_json_gives_a_line_per_partition(
    fake_kafka: type[FakeKafka], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", "--from", "2026-12-01T00:00:00Z", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [
        (r["partition"], r["committed"], r["new_offset"], r["records_to_reread"], r["applied"]) for r in rows
    ] == [
        (0, 10, 2, 8, True),
        (1, 4, 2, 2, True),
    ]
    assert {r["topic"] for r in rows} == {"invoice-created"}


def test_dry_run_commits_nothing(fake_kafka: type[FakeKafka], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--from", "3", "--partition", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert fake_kafka.commits == []
    assert "dry run: 1 partition(s) would move back, 7 record(s) re-read" in out


def test_a_group_with_members_is_refused_in_one_line_but_a_dry_run_shows_the_plan(
    fake_kafka: type[FakeKafka], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kafka.group_states = [("Stable", [MEMBER])]
    assert main(["replay", "--from", "earliest"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        "amili-registrar replay: consumer group amili-registrar has 1 active member(s)"
    )
    assert "amili-registrar@/10.0.0.7" in captured.err
    assert "stop the service first" in captured.err
    assert fake_kafka.commits == []

    assert main(["replay", "--from", "earliest", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run; the group has 1 member(s)" in out
    assert fake_kafka.commits == []


def test_wait_lets_a_stopping_service_leave_the_group(
    fake_kafka: type[FakeKafka], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kafka.group_states = [("Stable", [MEMBER]), ("PreparingRebalance", [MEMBER]), ("Empty", [])]
    assert main(["replay", "--from", "earliest", "--wait", "5"]) == 0
    capsys.readouterr()
    assert len(fake_kafka.commits) == 1


def test_a_commit_refused_because_the_group_came_back_is_one_line(
    fake_kafka: type[FakeKafka], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kafka.refuse_commit = True
    assert main(["replay", "--from", "earliest"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "refused the new offsets of consumer group amili-registrar: it has members again" in err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--from", "soon"], "is neither earliest, an offset nor an ISO 8601 time"),
        (["--from", "1", "--partition", "9"], "--partition 9: the topic has partitions 0, 1"),
    ],
)
def test_bad_arguments_are_one_line(
    fake_kafka: type[FakeKafka], argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert said in err


def test_replay_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["replay", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "there is no --force" in out
    assert "--dry-run" in out


def test_a_missing_topic_is_one_line(
    fake_kafka: type[FakeKafka], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INVOICE_CREATED_TOPIC", "invoice-createt")
    assert main(["replay", "--from", "earliest"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "topic invoice-createt (INVOICE_CREATED_TOPIC) does not exist at kafka-0:9093" in err
    assert fake_kafka.commits == []
