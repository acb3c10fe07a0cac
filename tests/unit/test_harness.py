"""The harness the chaos run and the benchmarks share (``devkit/harness.py``): the environment its
processes get and how they are started and stopped. Its broker, emulator and topic reader run in
every chaos run (``tests/chaos/``)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from devkit.demo import demo_topics
from devkit.emulator.settings import DEMO_API_KEY
from devkit.harness import Child, Topics, clean_environment, service_env
from service.config import Settings

TOPICS = Topics("run.invoices", "run.results", "run.dead-letters", "run-group")


def test_the_callers_settings_do_not_reach_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_IN_FLIGHT", "3")
    monkeypatch.setenv("amili_base_url", "http://elsewhere")
    monkeypatch.setenv("AMILI_EMULATOR_HANG_RATE", "0.5")
    monkeypatch.setenv("HARNESS_TEST_KEPT", "yes")
    env = clean_environment()
    assert "MAX_IN_FLIGHT" not in env
    assert "amili_base_url" not in env
    assert "AMILI_EMULATOR_HANG_RATE" not in env
    assert env["HARNESS_TEST_KEPT"] == "yes"


def test_the_service_environment_names_the_runs_parts_and_tuning_comes_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEDGER_URL", "sqlite:///somewhere-else.db")
    env = service_env(
        "127.0.0.1:9092",
        TOPICS,
        "http://127.0.0.1:8080",
        ledger_url="sqlite:///run.db",
        max_in_flight=64,
        tuning={"LOG_LEVEL": "ERROR", "HTTP_PORT": "9000"},
    )
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:9092"
    assert (env["INVOICE_CREATED_TOPIC"], env["REGISTRATION_RESULT_TOPIC"]) == ("run.invoices", "run.results")
    assert (env["DEAD_LETTER_TOPIC"], env["CONSUMER_GROUP_ID"]) == ("run.dead-letters", "run-group")
    assert env["AMILI_API_KEY"] == DEMO_API_KEY
    assert env["LEDGER_URL"] == "sqlite:///run.db"
    assert env["MAX_IN_FLIGHT"] == "64"
    assert (env["LOG_LEVEL"], env["HTTP_PORT"]) == ("ERROR", "9000")


def test_events_and_results_get_the_partitions_asked_for_and_dead_letters_one() -> None:
    assert TOPICS.partitions(6) == {"run.invoices": 6, "run.results": 6, "run.dead-letters": 1}


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_a_child_is_stopped_with_its_signal_and_its_log_kept(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    waits_for_term = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('stopping', flush=True), sys.exit(3)))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = Child.start("first", _python(waits_for_term), {}, log)
    while "started" not in child.tail():
        assert child.running, child.tail()
        await _moment()
    await child.stop(signal.SIGTERM, grace_seconds=30)
    assert not child.running
    assert child.returncode == 3
    assert child.tail().splitlines() == ["started", "stopping"]

    again = Child.start("second", _python("print('second life')"), {}, log, append=True)
    while again.running:
        await _moment()
    await again.stop()  # ended already: nothing to stop
    assert again.returncode == 0
    assert again.tail().splitlines() == ["started", "stopping", "second life"]


async def test_a_child_that_ignores_its_signal_is_killed_after_the_grace(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = Child.start("stubborn", _python(stubborn), {}, tmp_path / "stubborn.log")
    while "up" not in child.tail():
        await _moment()
    await child.stop(grace_seconds=0.5)
    assert child.returncode == -signal.SIGKILL


async def _moment() -> None:
    await asyncio.sleep(0.05)


def test_the_demo_uses_the_default_topics_on_its_own_broker_and_new_ones_on_a_given_broker() -> None:
    own = demo_topics(given_broker=False)
    defaults = Settings.model_construct()
    assert (own.inbound, own.results, own.dead_letters) == (
        defaults.invoice_created_topic,
        defaults.registration_result_topic,
        defaults.dead_letter_topic,
    )
    first, second = demo_topics(given_broker=True), demo_topics(given_broker=True)
    assert first.inbound != second.inbound
    assert first.group != second.group
    assert first.inbound.startswith(own.inbound)
    assert first.results.startswith(own.results)
