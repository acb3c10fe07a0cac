"""The service as ops run it: its own process, /metrics scraped by a real Prometheus server,
/healthz and /readyz, JSON log lines per event, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.emulator.app import Emulator
from devkit.emulator.settings import DEMO_API_KEY
from devkit.produce import produce
from service.bootstrap import build_registrar
from tests.fixtures.prometheus import query
from tests.integration.harness import (
    numbered,
    read_topic,
    service_process,
    set_faults,
    settings_for,
    wait_for,
)

pytestmark = pytest.mark.kafka


async def test_prometheus_scrapes_the_running_service_and_health_reflects_its_state(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    prometheus: tuple[str, Path],
    tmp_path: Path,
) -> None:
    amili_url, _ = emulator
    prometheus_url, targets = prometheus
    settings = settings_for(
        kafka_bootstrap_servers, amili_url, unique_name, ledger_url=f"sqlite:///{tmp_path}/ledger.db"
    )
    port = settings.http_port
    targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"app": "amili-registrar"}}]))
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, sample_events, show_progress=False)
    log_file = tmp_path / "service.log"
    process = service_process(settings, log_file)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def ready() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, 60)
            assert (await http.get("/healthz")).json()["status"] == "ok"
            results = await read_topic(
                kafka_bootstrap_servers, settings.registration_result_topic, len(sample_events), 60
            )
            assert len(results) == len(sample_events)
            metrics = (await http.get("/metrics")).text
            assert "registrar_events_consumed_total" in metrics
            # FastStream's middleware is not wired: consumption and publishing do not go through it.
            assert "faststream_" not in metrics
            assert "invoice_number" not in metrics

            async def scraped() -> bool:
                series = await query(
                    prometheus_url, 'sum(registrar_events_consumed_total{app="amili-registrar"})'
                )
                return bool(series) and float(series[0]["value"][1]) == len(sample_events)

            await wait_for(scraped, 60)
            rejected = await query(prometheus_url, 'registrar_events_consumed_total{outcome="rejected"}')
            assert float(rejected[0]["value"][1]) == 1
            up = await query(prometheus_url, 'up{job="amili-registrar"}')
            assert float(up[0]["value"][1]) == 1
            histogram = await query(prometheus_url, "registrar_amili_request_duration_seconds_count")
            assert {s["metric"]["endpoint"] for s in histogram} >= {"register"}

            # Amili refuses the key: not ready (credentials), yet alive.
            await set_faults(amili_url, fail_next_count=50, fail_next_status=401)
            extra = numbered(sample_events[0], "OPS-401", event_id="after-the-key-broke")
            await produce(
                kafka_bootstrap_servers, settings.invoice_created_topic, [extra], show_progress=False
            )

            async def refused() -> bool:
                readiness = await http.get("/readyz")
                return readiness.status_code == 503 and not readiness.json()["checks"]["credentials"]["ok"]

            await wait_for(refused, 30)
            assert (await http.get("/healthz")).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down gracefully: -15 is a clean exit here.
        assert await asyncio.to_thread(process.wait, 60) in (0, -signal.SIGTERM)

    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    handled = [line for line in lines if line["message"] == "event handled"]
    assert {line["invoice_number"] for line in handled} >= {
        e["data"]["invoice_number"] for e in sample_events
    }
    for line in handled:
        assert {"creditor", "topic", "partition", "offset", "outcome", "attempts", "duration_ms"} <= set(line)
    text = log_file.read_text()
    assert "Application shutdown complete" in text
    assert DEMO_API_KEY not in text
    for personal in ("811218-9876", "astrid.lindqvist@example.se", "+46701234567", "Storgatan 12"):
        assert personal not in text


async def test_liveness_fails_at_once_when_the_consumption_loop_dies(
    kafka_bootstrap_servers: str, emulator: tuple[str, Emulator], unique_name: str
) -> None:
    amili_url, _ = emulator
    registrar = build_registrar(settings_for(kafka_bootstrap_servers, amili_url, unique_name))
    transport = httpx.ASGITransport(app=registrar.app)
    async with registrar.app, httpx.AsyncClient(transport=transport, base_url="http://registrar") as http:
        assert (await http.get("/healthz")).status_code == 200
        loop_task = registrar.engine._loop_task
        assert loop_task is not None
        loop_task.cancel()  # as if it had died: nobody asked it to stop
        await asyncio.sleep(0.05)
        response = await http.get("/healthz")
        assert response.status_code == 503
        assert not response.json()["checks"]["consume_loop_running"]["ok"]
        assert "cancelled" in response.json()["checks"]["consume_loop_running"]["detail"]
