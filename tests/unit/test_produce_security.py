"""``produce`` connects as the service does: KAFKA_SECURITY_PROTOCOL, SASL and TLS reach both the
producer and the admin client that creates missing topics (no SASL broker here: fake clients)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiokafka.errors import KafkaConnectionError

import devkit.produce as produce_module
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "service/examples/invoices.ndjson"


class Seen:
    options: ClassVar[list[dict[str, Any]]] = []
    created: ClassVar[list[str]] = []
    sent: ClassVar[int] = 0
    refuse: ClassVar[bool] = False


class FakeAdmin:
    def __init__(self, **options: Any) -> None:
        Seen.options.append({"client": "admin", **options})

    async def start(self) -> None:
        if Seen.refuse:
            raise KafkaConnectionError("Unable to bootstrap from [('kafka-0', 9093)]")

    async def close(self) -> None: ...

    async def list_topics(self) -> list[str]:
        return ["registration-result"]

    async def create_topics(self, topics: list[Any]) -> None:
        Seen.created.extend(topic.name for topic in topics)


class FakeProducer:
    def __init__(self, **options: Any) -> None:
        Seen.options.append({"client": "producer", **options})

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, topic: str, **_: Any) -> asyncio.Future[None]:
        Seen.sent += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@pytest.fixture(autouse=True)
def fake_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(produce_module, "AIOKafkaAdminClient", FakeAdmin)
    monkeypatch.setattr(produce_module, "AIOKafkaProducer", FakeProducer)
    for name in (
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "INVOICE_CREATED_TOPIC",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REGISTRATION_RESULT_TOPIC", raising=False)
    monkeypatch.delenv("DEAD_LETTER_TOPIC", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9093")
    Seen.options, Seen.created, Seen.sent, Seen.refuse = [], [], 0, False


def test_sasl_and_tls_settings_reach_the_producer_and_the_admin_client(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "registrar")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    assert main(["produce", str(SAMPLES)]) == 0
    out = capsys.readouterr().out
    assert "sent 9 event(s)" in out
    assert Seen.sent == 9
    assert sorted(Seen.created) == ["invoice-created", "invoice-created.dead-letter"]
    assert [o["client"] for o in Seen.options] == ["admin", "producer"]
    for options in Seen.options:
        assert options["bootstrap_servers"] == "kafka-0:9093"
        assert options["security_protocol"] == "SASL_SSL"
        assert isinstance(options["ssl_context"], ssl.SSLContext)
        assert options["sasl_mechanism"] == "SCRAM-SHA-256"
        assert options["sasl_plain_username"] == "registrar"
        assert options["sasl_plain_password"] == "s3cret"
    producer = Seen.options[1]
    assert (producer["acks"], producer["enable_idempotence"]) == ("all", True)


def test_tls_without_sasl(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    assert main(["produce", str(SAMPLES), "--bootstrap", "kafka-1:9094"]) == 0
    capsys.readouterr()
    for options in Seen.options:
        assert options["bootstrap_servers"] == "kafka-1:9094"  # --bootstrap wins over the setting
        assert options["security_protocol"] == "SSL"
        assert isinstance(options["ssl_context"], ssl.SSLContext)
        assert "sasl_mechanism" not in options


def test_plaintext_by_default(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KAFKA_SECURITY_PROTOCOL", raising=False)
    assert main(["produce", str(SAMPLES)]) == 0
    capsys.readouterr()
    assert {(o["security_protocol"], o["ssl_context"]) for o in Seen.options} == {("PLAINTEXT", None)}


def test_a_refused_connection_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "registrar")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    Seen.refuse = True
    assert main(["produce", str(SAMPLES)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Kafka at kafka-0:9093 did not take the events" in err
    assert "s3cret" not in err
