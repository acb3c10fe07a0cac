"""``dead-letters list`` and ``dead-letters redrive`` on a real broker, run in-process through
``service.cli.main`` with the service's environment variables; the service itself in-process
(``build_registrar(settings).app``) against the Amili emulator.

- Invoices dead-lettered because Amili kept failing for them (``gave_up``) are redriven once Amili
  works: each is registered once, and a second redrive sends nothing.
- An event with a content type that says its data is not JSON is fixed with ``--edit`` and
  registered.
- A truncated dead letter is redriven from its source topic, or refused when the original is gone or
  another record.
- The filters of ``list``, ``--dry-run``, ``--force``, ``--origin`` and ``--file``.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

from devkit.emulator.app import Emulator
from devkit.produce import produce
from service.bootstrap import build_registrar
from service.cli import main
from service.config import Settings
from service.events.record import InboundRecord
from service.kafka.publishing import dead_letter_headers, truncated_dead_letter
from service.operator.dead_letters_redrive import memory_topic
from tests.integration.harness import (
    kafka_producer,
    numbered,
    read_records,
    read_topic,
    set_faults,
    settings_for,
)

pytestmark = pytest.mark.kafka

MiB = 1024 * 1024
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


async def create_topics(
    bootstrap: str, topics: dict[str, int], configs: dict[str, str] | None = None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, n, 1, topic_configs=configs or {}) for t, n in topics.items()])
    finally:
        await admin.close()


async def topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return [ends[tp] for tp in tps]
    finally:
        await consumer.stop()


class Cli:
    """``amili-registrar`` in-process with the settings' topics and broker in its environment."""

    def __init__(
        self, settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ):
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
        monkeypatch.setenv("INVOICE_CREATED_TOPIC", settings.invoice_created_topic)
        monkeypatch.setenv("DEAD_LETTER_TOPIC", settings.dead_letter_topic)
        monkeypatch.setenv("COLUMNS", "240")  # rich's tables, unwrapped
        self._capsys = capsys

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        self._capsys.readouterr()
        code = await asyncio.to_thread(main, ["dead-letters", *argv])
        out, err = self._capsys.readouterr()
        return code, out, err

    async def rows(self, *argv: str, code: int = 0) -> list[dict[str, Any]]:
        got, out, err = await self(*argv, "--json")
        assert got == code, err
        return [json.loads(line) for line in out.splitlines()]


def is_redriven(headers: Any) -> bool:
    return any(name == "redrive.origin" for name, _ in headers)


def own_headers(headers: Any) -> list[tuple[str, bytes]]:
    return [(name, bytes(value)) for name, value in headers if not name.startswith("redrive.")]


async def test_invoices_amili_gave_up_on_are_registered_once_after_a_redrive_and_a_second_sends_nothing(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    amili_url, amili = emulator
    settings = settings_for(
        kafka_bootstrap_servers,
        amili_url,
        unique_name,
        ledger_url=f"sqlite:///{tmp_path}/ledger.db",
        max_attempts=2,
        circuit_failure_threshold=1000,  # Amili fails for these invoices only, as far as it can tell
    )
    bootstrap, topic, dlq = (
        kafka_bootstrap_servers,
        settings.invoice_created_topic,
        settings.dead_letter_topic,
    )
    await create_topics(bootstrap, {topic: 3, settings.registration_result_topic: 1, dlq: 1})
    cli = Cli(settings, monkeypatch, capsys)
    events = [numbered(sample_events[i % 3], f"GAVE-{i}") for i in range(3)]
    numbers = sorted(e["data"]["invoice_number"] for e in events)
    await set_faults(amili_url, error_500_rate=1.0)
    await produce(bootstrap, topic, events, show_progress=False)
    originals = {(r.partition, r.offset): r for r in await read_records(bootstrap, topic, count=3)}

    async with build_registrar(settings).app:
        letters = await read_records(bootstrap, dlq, count=3, wait_seconds=60)
        assert len(letters) == 3
        await set_faults(amili_url, error_500_rate=0.0)
        assert amili.store.all() == []

        listed = await cli.rows("list", "--rule", "gave_up")
        assert sorted(row["invoice"]["invoice_number"] for row in listed) == numbers
        assert all(row["rule"] == "gave_up" and row["redriven"] is None for row in listed)
        assert all("Amili kept failing" in row["reason"] for row in listed)

        sent = await cli.rows("redrive", "--rule", "gave_up")
        assert [row["action"] for row in sent] == ["sent"] * 3
        results = await read_topic(bootstrap, settings.registration_result_topic, 6, wait_seconds=60)
        outcomes = Counter((r["data"]["invoice_number"], r["data"]["outcome"]) for r in results)
        assert outcomes == Counter({(n, o): 1 for n in numbers for o in ("failed", "registered")})

        code, out, err = await cli("redrive", "--rule", "gave_up")
        assert code == 0, err
        assert "skipped 3" in err
        assert "already redriven" in out
        assert sum(await end_offsets(bootstrap, topic, 3)) == 6  # nothing sent the second time
        await asyncio.sleep(1)

    assert sorted(r["invoice_number"] for r in amili.store.all()) == numbers  # each registered once
    results = await read_topic(bootstrap, settings.registration_result_topic, 7, wait_seconds=2)
    assert len(results) == 6
    # What was sent: the original record, key and own headers byte for byte, and whence it came.
    redriven = [r for r in await read_records(bootstrap, topic, count=6) if is_redriven(r.headers)]
    assert len(redriven) == 3
    for record in redriven:
        headers = dict(record.headers)
        source, partition, offset = headers["redrive.origin"].decode().split("/")
        assert source == topic
        original = originals[(int(partition), int(offset))]
        assert (record.key, record.value) == (original.key, original.value)
        assert own_headers(record.headers) == list(original.headers)
        assert headers["redrive.dead_letter"].decode().startswith(f"{dlq}/0/")
        assert datetime.fromisoformat(headers["redrive.time"].decode()).tzinfo is not None
    listed = await cli.rows("list")
    assert all(row["redriven"]["sent_to"].startswith(f"{topic}/") for row in listed)


async def test_an_event_whose_content_type_is_wrong_is_fixed_with_edit_and_registered(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    amili_url, amili = emulator
    settings = settings_for(
        kafka_bootstrap_servers, amili_url, unique_name, ledger_url=f"sqlite:///{tmp_path}/ledger.db"
    )
    bootstrap, topic = kafka_bootstrap_servers, settings.invoice_created_topic
    await create_topics(
        bootstrap, {topic: 1, settings.registration_result_topic: 1, settings.dead_letter_topic: 1}
    )
    cli = Cli(settings, monkeypatch, capsys)
    bad = [numbered(sample_events[i], f"CT-{i}") for i in range(2)]
    for event in bad:
        event["datacontenttype"] = "text/plain"
    await produce(bootstrap, topic, bad, show_progress=False)

    async with build_registrar(settings).app:
        letters = await read_records(bootstrap, settings.dead_letter_topic, count=2, wait_seconds=30)
        assert len(letters) == 2
        listed = await cli.rows("list", "--rule", "content_type")
        assert [row["invoice"]["invoice_number"] for row in listed] == ["CT-0", "CT-1"]
        fixed = copy.deepcopy(bad[0])
        fixed["datacontenttype"] = "application/json"
        edit = tmp_path / "fixed.json"
        edit.write_text(json.dumps(fixed, indent=2))

        code, _, err = await cli("redrive", "--rule", "content_type", "--edit", str(edit))
        assert code == 1
        assert err.strip().splitlines()[-1] == (
            "amili-registrar dead-letters: --edit replaces the value of one dead letter, and 2 are "
            "selected: choose one with --origin"
        )
        (sent,) = await cli.rows("redrive", "--origin", listed[0]["origin"], "--edit", str(edit))
        assert sent["action"] == "sent"
        assert sent["value_sha256"] is not None
        (result,) = await read_topic(bootstrap, settings.registration_result_topic, 1, wait_seconds=30)
        assert (result["data"]["invoice_number"], result["data"]["outcome"]) == ("CT-0", "registered")
        (again,) = await cli.rows("redrive", "--origin", listed[0]["origin"], "--edit", str(edit))
        assert again["action"] == "skipped"

    assert [r["invoice_number"] for r in amili.store.all()] == ["CT-0"]
    records = await read_records(bootstrap, topic, count=3)
    assert records[2].value == edit.read_bytes()  # the file's content, as it is
    assert dict(records[2].headers)["redrive.edited"] == b"value"
    assert own_headers(records[2].headers) == list(records[0].headers)


async def test_a_truncated_dead_letter_is_redriven_from_its_source_or_refused_when_the_original_is_gone(
    kafka_bootstrap_servers: str,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bootstrap = kafka_bootstrap_servers
    settings = settings_for(bootstrap, "http://127.0.0.1:1", unique_name)
    source, dlq = settings.invoice_created_topic, settings.dead_letter_topic
    await create_topics(bootstrap, {source: 2}, {"max.message.bytes": str(3 * MiB)})
    await create_topics(bootstrap, {dlq: 1})
    cli = Cli(settings, monkeypatch, capsys)
    big = b'{"data": "' + b"x" * (3 * MiB // 2) + b'"}'
    many_headers = [(f"h{i}", b"y" * 1000) for i in range(20)]  # over 16 KiB: dropped when truncated
    originals: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = [
        (b"key-0", big, [("content-type", b"application/cloudevents+json"), ("x-trace", b"\x00\x01")]),
        (b"key-1", big + b" ", many_headers),
        (b"key-2", b"another record", []),
    ]
    async with kafka_producer(bootstrap, max_request_size=4 * MiB) as producer:
        for key, value, headers in originals:
            await producer.send_and_wait(source, value, key=key, headers=headers, partition=0)
        await producer.send_and_wait(source, big, key=b"key-gone", partition=1)
        letters = [
            InboundRecord(source, 0, index, key, value, tuple(headers))
            for index, (key, value, headers) in enumerate(originals[:2])
        ] + [
            InboundRecord(source, 0, 2, b"key-2", big + b"!", ()),  # not what is at 0/2
            InboundRecord(source, 1, 0, b"key-gone", big, ()),
        ]
        for index, inbound in enumerate(letters):
            at = T0 + timedelta(minutes=index)
            headers = dead_letter_headers(inbound, "too_large", "larger than MAX_EVENT_BYTES", at)
            cut, kept = truncated_dead_letter(inbound, headers)
            await producer.send_and_wait(dlq, cut, key=inbound.key, headers=kept)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(source, 1): RecordsToDelete(1)})
    finally:
        await admin.close()

    listed = await cli.rows("list")
    assert [row["truncated"] for row in listed] == [True] * 4
    assert [row["original_size"] for row in listed] == [len(big), len(big) + 1, len(big) + 1, len(big)]

    planned = await cli.rows("redrive", "--all", "--dry-run", code=1)
    assert [row["action"] for row in planned] == ["would send", "would send", "refused", "refused"]
    assert "the record now at its origin is another one" in planned[2]["detail"]
    assert planned[3]["detail"] == (
        "truncated dead letter and its original is gone: "
        f"{source} partition 1 now begins at offset 1 (retention)"
    )
    assert planned[1]["headers"][:20] == [[name, value.decode()] for name, value in many_headers]
    assert await end_offsets(bootstrap, source, 2) == [3, 1]  # a dry run sends nothing
    assert memory_topic(settings) not in await topic_names(bootstrap)

    sent = await cli.rows("redrive", "--rule", "too_large", code=1)
    assert [row["action"] for row in sent] == ["sent", "sent", "refused", "refused"]
    records = await read_records(bootstrap, source, count=5)
    redriven = {r.key: r for r in records if is_redriven(r.headers)}
    assert redriven[b"key-0"].value == big
    assert own_headers(redriven[b"key-0"].headers) == originals[0][2]
    assert redriven[b"key-1"].value == big + b" "
    assert own_headers(redriven[b"key-1"].headers) == many_headers  # restored from the original

    again = await cli.rows("redrive", "--all", code=1)
    assert [row["action"] for row in again] == ["skipped", "skipped", "refused", "refused"]
    assert sum(await end_offsets(bootstrap, source, 2)) == 6


async def test_list_filters_dry_run_force_origin_and_file(
    kafka_bootstrap_servers: str,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bootstrap = kafka_bootstrap_servers
    settings = settings_for(bootstrap, "http://127.0.0.1:1", unique_name)
    source, dlq = settings.invoice_created_topic, settings.dead_letter_topic
    await create_topics(bootstrap, {source: 3, dlq: 1})
    cli = Cli(settings, monkeypatch, capsys)
    event = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "urn:test",
        "type": "billing.invoice.created.v1",
        "data": {"invoice_number": "INV-A", "creditor": "cred-1"},
    }
    other_type = {**event, "type": "billing.invoice.deleted.v1", "data": {"invoice_number": "INV-B"}}
    structured = (("content-type", b"application/cloudevents+json"),)
    dead = [
        (InboundRecord(source, 0, 0, None, b"\xff not json", ()), "json", "x" * 300, T0),
        (InboundRecord(source, 1, 5, b"k", json.dumps(event).encode(), structured), "gave_up", "Amili", T0),
        (InboundRecord(source, 2, 9, None, json.dumps(other_type).encode(), structured), "type", "t", T0),
    ]
    async with kafka_producer(bootstrap) as producer:
        for index, (inbound, rule, reason, at) in enumerate(dead):
            headers = dead_letter_headers(inbound, rule, reason, at + timedelta(hours=index))
            await producer.send_and_wait(dlq, inbound.value, key=inbound.key, headers=headers)
        await producer.send_and_wait(dlq, b"by hand", headers=[("dlq.rule", b"\xfe"), ("x", b"\x00")])

    every = await cli.rows("list")
    assert [(row["rule"], row["origin"]) for row in every] == [
        ("json", f"{source}/0/0"),
        ("gave_up", f"{source}/1/5"),
        ("type", f"{source}/2/9"),
        ("\ufffd", None),  # no time: last
    ]
    assert every[0]["reason"] == "x" * 300  # whole in JSON
    assert every[0]["invoice"] is None
    assert every[1]["invoice"] == {"creditor": "cred-1", "invoice_number": "INV-A"}
    assert every[2]["invoice"] == {"creditor": None, "invoice_number": "INV-B"}
    assert every[1]["dead_letter"] == {"topic": dlq, "partition": 0, "offset": 1}
    assert every[1]["source"] == {"topic": source, "partition": 1, "offset": 5}
    assert every[1]["time"] == (T0 + timedelta(hours=1)).isoformat()

    async def origins(*argv: str) -> list[str | None]:
        return [row["origin"] for row in await cli.rows("list", *argv)]

    assert await origins("--rule", "gave_up", "--rule", "type") == [f"{source}/1/5", f"{source}/2/9"]
    assert await origins("--since", "2026-12-01T09:00", "--until", "2026-12-01T10:00+00:00") == [
        f"{source}/1/5"
    ]
    assert await origins("--since", "2026-12-01T10:00+01:00") == [f"{source}/1/5", f"{source}/2/9"]
    assert await origins("--partition", "2") == [f"{source}/2/9"]
    assert await origins("--limit", "2") == [f"{source}/0/0", f"{source}/1/5"]

    code, table, _ = await cli("list", "--rule", "json")
    assert code == 0
    assert f"dead letters on {dlq}: 1 of 4" in table
    assert "x" * 300 not in table.replace("\n", "").replace("│", "").replace(" ", "")
    assert "…" in table

    gave_up = f"{source}/1/5"
    (planned,) = await cli.rows("redrive", "--origin", gave_up, "--dry-run")
    assert planned["action"] == "would send"
    assert planned["key"] == "k"
    assert [name for name, _ in planned["headers"]] == [
        "content-type",
        "redrive.origin",
        "redrive.dead_letter",
        "redrive.time",
    ]
    assert await end_offsets(bootstrap, source, 3) == [0, 0, 0]
    assert memory_topic(settings) not in await topic_names(bootstrap)

    picked = tmp_path / "picked.jsonl"
    code, out, _ = await cli("list", "--rule", "gave_up", "--json")
    picked.write_text(out)
    (sent,) = await cli.rows("redrive", "--file", str(picked))
    assert (sent["action"], sent["origin"]) == ("sent", gave_up)
    assert memory_topic(settings) in await topic_names(bootstrap)
    (skipped,) = await cli.rows("redrive", "--origin", gave_up)
    assert skipped["action"] == "skipped"
    (forced,) = await cli.rows("redrive", "--origin", gave_up, "--force")
    assert forced["action"] == "sent"
    assert "sent again (--force)" in forced["detail"]
    assert sum(await end_offsets(bootstrap, source, 3)) == 2

    (unknown,) = await cli.rows("redrive", "--origin", f"{source}/0/77", code=1)
    assert unknown["action"] == "refused"
    code, _, err = await cli("redrive", "--origin", gave_up, "--to", "no-such-topic-" + unique_name)
    assert (code, err.strip()) == (
        1,
        f"amili-registrar dead-letters: topic no-such-topic-{unique_name} does not exist",
    )
    code, _, err = await cli("redrive")
    assert code == 1
    assert "say which dead letters" in err

    monkeypatch.setenv("DEAD_LETTER_TOPIC", f"absent-{unique_name}")
    code, out, err = await cli("list")
    assert (code, out) == (1, "")
    assert (
        err.strip()
        == f"amili-registrar dead-letters: topic absent-{unique_name} (DEAD_LETTER_TOPIC) does not exist"
    )
