from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devkit.demo import sample_events_path
from devkit.emulator.app import Emulator
from devkit.emulator.server import serve_emulator
from devkit.emulator.settings import DEMO_API_KEY, EmulatorSettings
from devkit.localkafka import free_port
from tests.ci import under_ci

pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.ledger", "tests.fixtures.prometheus"]


@pytest.fixture
def sample_events() -> list[dict[str, Any]]:
    """The shipped sample invoice-created events (CloudEvents, structured)."""
    lines = sample_events_path().read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[tuple[str, Emulator]]:
    """The Amili emulator on a loopback port, keeping its registrations in a file."""
    settings = EmulatorSettings(
        port=free_port(), api_keys=[DEMO_API_KEY], store_path=str(tmp_path / "amili.jsonl")
    )
    async with serve_emulator(settings) as served:
        yield served


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI nothing may be skipped: a skipped test is a test that did not run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if under_ci() and skipped and reporter is not None:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; failing the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
