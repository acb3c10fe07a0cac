"""A wrong AMILI_BASE_URL against the real emulator and the real broker: the service pauses, says
why on /readyz, /metrics and in one log line, fails no invoice, and resumes by itself once the
path answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from devkit.emulator.app import Emulator
from devkit.emulator.settings import DEMO_API_KEY, EmulatorSettings
from devkit.localkafka import free_port
from devkit.produce import produce
from service.bootstrap import build_registrar
from tests.integration.harness import numbered, read_topic, settings_for, wait_for

pytestmark = pytest.mark.kafka

PREFIX = "/amili"


class Ingress:
    """The way to the emulator: ``PREFIX`` is routed to it only once ``fixed`` (before, the
    emulator sees the prefixed path, which it does not have: 404, as Eve answers a wrong path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.fixed = False
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.calls += 1
            path: str = scope["path"]
            if self.fixed and path.startswith(f"{PREFIX}/"):
                scope = {**scope, "path": path[len(PREFIX) :], "raw_path": path[len(PREFIX) :].encode()}
        await self.app(scope, receive, send)


@pytest.fixture
async def ingress(tmp_path: Path) -> AsyncIterator[tuple[str, Ingress, Emulator]]:
    """The emulator behind an ``Ingress`` on a loopback port: the base URL with the prefix."""
    settings = EmulatorSettings(
        port=free_port(), api_keys=[DEMO_API_KEY], store_path=str(tmp_path / "amili.jsonl")
    )
    emulator = Emulator(settings)
    front = Ingress(emulator.app())
    server = uvicorn.Server(
        uvicorn.Config(front, host=settings.host, port=settings.port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the emulator stopped during start-up"
        await asyncio.sleep(0.02)
    try:
        yield f"http://{settings.host}:{settings.port}{PREFIX}", front, emulator
    finally:
        server.should_exit = True
        await task


async def test_a_wrong_base_url_pauses_the_service_until_the_path_answers(
    kafka_bootstrap_servers: str,
    ingress: tuple[str, Ingress, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    amili_url, front, emulator = ingress
    settings = settings_for(
        kafka_bootstrap_servers,
        amili_url,
        unique_name,
        ledger_url=f"sqlite:///{tmp_path}/ledger.db",
        max_attempts=2,  # a configuration error must never count towards giving up
        unauthorized_retry_seconds=0.5,  # how often the endpoint is probed again
    )
    events = [numbered(sample_events[i % 5], f"CFG-{i}") for i in range(10)]
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, events, show_progress=False)
    registrar = build_registrar(settings)
    transport = httpx.ASGITransport(app=registrar.app)
    async with registrar.app, httpx.AsyncClient(transport=transport, base_url="http://registrar") as http:

        async def misconfigured() -> bool:
            readiness = await http.get("/readyz")
            return readiness.status_code == 503 and not readiness.json()["checks"]["amili_config"]["ok"]

        await wait_for(misconfigured, 60)
        detail = (await http.get("/readyz")).json()["checks"]["amili_config"]["detail"]
        assert detail.endswith(f"{PREFIX}/invoice--registrations answered 404: check AMILI_BASE_URL")
        assert detail.startswith(("POST http://", "GET http://"))
        metrics = (await http.get("/metrics")).text
        assert "registrar_amili_config_ok 0.0" in metrics
        calls_then = front.calls
        await asyncio.sleep(3)  # paused: probed every 0.5 s, not retried per event
        assert front.calls - calls_then <= 10
        assert await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 1, 1) == []
        assert await read_topic(kafka_bootstrap_servers, settings.dead_letter_topic, 1, 1) == []
        assert emulator.store.all() == []
        assert (await http.get("/healthz")).status_code == 200  # paused, alive: never restarted for it

        front.fixed = True  # the path answers now: the service resumes by itself
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 10, 60)

        async def ready() -> bool:
            return (await http.get("/readyz")).status_code == 200

        await wait_for(ready, 30)
        assert "registrar_amili_config_ok 1.0" in (await http.get("/metrics")).text
        letters = await read_topic(kafka_bootstrap_servers, settings.dead_letter_topic, 1, 1)
    assert sorted(r["data"]["outcome"] for r in results) == ["registered"] * 10
    assert letters == []
    assert len(emulator.store.all()) == 10
    errors = [r for r in caplog.records if r.name == "service.circuit" and r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "amili configuration error: calls held back, consumption paused"
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "service.circuit"]
    assert "amili configuration error resolved" in messages
    # No line per event or per probe: the client's failures are left to the circuit's one line.
    assert not [r for r in caplog.records if r.name.startswith("service") and "retrying" in r.getMessage()]
