"""An unhappy start, as an operator meets it: each ends in one clear line and a non-zero exit, or
in a visible, bounded retry (readiness false, saying why)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devkit.emulator.app import Emulator
from devkit.localkafka import free_port
from tests.integration.harness import service_process, settings_for, wait_for

pytestmark = pytest.mark.kafka


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


async def _ended(process: subprocess.Popen[bytes], seconds: float) -> int:
    try:
        return await asyncio.to_thread(process.wait, seconds)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_an_unreachable_broker_is_retried_visibly_then_the_process_exits(
    emulator: tuple[str, Emulator], unique_name: str, tmp_path: Path
) -> None:
    amili_url, _ = emulator
    unreachable = f"127.0.0.1:{free_port()}"
    settings = settings_for(unreachable, amili_url, unique_name, kafka_startup_timeout_seconds=6.0)
    output = tmp_path / "service.log"
    process = service_process(settings, output)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}") as http:

            async def waiting() -> bool:
                try:
                    response = await http.get("/readyz")
                except httpx.TransportError:
                    return False
                detail = response.json()["checks"]["kafka"]["detail"]
                return response.status_code == 503 and detail.startswith("waiting for the broker at start")

            await wait_for(waiting, 5)
            assert (await http.get("/healthz")).status_code == 200  # alive: it is waiting on purpose
        code = await _ended(process, 30)
    finally:
        if process.poll() is None:
            process.kill()
    lines = _lines(output)
    assert code == 1, lines
    retries = [line for line in lines if "unreachable at start (attempt" in line]
    assert 2 <= len(retries) <= 8, lines  # backoff: not a hot loop
    final = [line for line in lines if line.startswith("amili-registrar: ")]
    assert final == [
        f"amili-registrar: Kafka at {unreachable} did not answer for 6s (KAFKA_STARTUP_TIMEOUT_SECONDS): "
        + final[0].split("(KAFKA_STARTUP_TIMEOUT_SECONDS): ", 1)[1]
    ]
    assert not [line for line in lines if "Traceback" in line]


async def test_a_missing_topic_refuses_the_start_naming_it_and_a_likely_name(
    kafka_bootstrap_servers: str, emulator: tuple[str, Emulator], unique_name: str, tmp_path: Path
) -> None:
    amili_url, _ = emulator
    settings = settings_for(
        kafka_bootstrap_servers, amili_url, unique_name, kafka_allow_auto_create_topics=False
    )
    from devkit.produce import create_topics

    await create_topics(
        kafka_bootstrap_servers, {settings.registration_result_topic: 1, settings.dead_letter_topic: 1}
    )
    await create_topics(kafka_bootstrap_servers, {settings.invoice_created_topic + "-x": 1})
    output = tmp_path / "service.log"
    code = await _ended(service_process(settings, output), 60)
    lines = _lines(output)
    assert code == 2, lines
    expected = (
        f"amili-registrar: INVOICE_CREATED_TOPIC: topic {settings.invoice_created_topic!r} does not exist "
        f"(did you mean {settings.invoice_created_topic + '-x'!r}?): create it, correct the name, or set "
        "KAFKA_ALLOW_AUTO_CREATE_TOPICS=true if the broker is meant to create topics on first use"
    )
    assert [line for line in lines if line.startswith("amili-registrar: ")] == [expected]
    assert not [line for line in lines if "Traceback" in line]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("HTTP_PORT", "99999", "HTTP_PORT: Input should be less than or equal to 65535 (got '99999')"),
        (
            "AMILI_BASE_URL",
            "not a url",
            "AMILI_BASE_URL: 'not a url' is not an http(s) URL such as https://api.example.com",
        ),
        (
            "KAFKA_BOOTSTRAP_SERVERS",
            "",
            "KAFKA_BOOTSTRAP_SERVERS: '' is not a list of host:port, comma separated "
            "(as kafka-0:9092,kafka-1:9092)",
        ),
        (
            "INVOICE_CREATED_TOPIC",
            "invoice created!",
            "INVOICE_CREATED_TOPIC: 'invoice created!' is not a Kafka topic name: 1 to 249 of "
            "a-z A-Z 0-9 . _ -",
        ),
        (
            "MAX_IN_FLIGHT",
            "many",
            "MAX_IN_FLIGHT: Input should be a valid integer, unable to parse string as an integer "
            "(got 'many')",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable_and_exit_code_2(
    variable: str, value: str, expected: str
) -> None:
    env = {**os.environ, "AMILI_API_KEY": "k", variable: value}
    done = subprocess.run(
        [sys.executable, "-m", "service", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"amili-registrar: invalid configuration: {expected}"]
    assert done.stdout == ""


def test_log_level_is_read_in_any_letter_case() -> None:
    from service.config import Settings

    assert Settings(log_level="info").log_level == "INFO"


def test_a_ledger_that_cannot_be_reached_is_one_line_and_exit_code_1() -> None:
    env = {
        **os.environ,
        "AMILI_API_KEY": "k",
        "LEDGER_URL": f"postgresql://registrar:hunter2@127.0.0.1:{free_port()}/registrar",
        "HTTP_PORT": str(free_port()),
        "HTTP_HOST": "127.0.0.1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "service", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("amili-registrar: ")]
    assert said == ["amili-registrar: postgres connect: [Errno 111] Connection refused"], done.stderr
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
