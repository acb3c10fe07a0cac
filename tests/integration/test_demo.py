"""The README's first command, ``amili-registrar demo``: a broker of its own, the emulator, the
service and the sample invoices, end to end; its output is the table and a few lines of its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devkit.harness import clean_environment

pytestmark = pytest.mark.kafka


def test_the_demo_registers_the_samples_and_prints_nothing_but_its_own_lines() -> None:
    done = subprocess.run(  # without KAFKA_BOOTSTRAP_SERVERS: a fresh broker, as on a first run
        [sys.executable, "-m", "service", "demo"],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "9 of 9 results received" in done.stdout
    assert done.stdout.count("│ registered │") == 8
    assert done.stdout.count("│ rejected   │") == 1
    # A fresh broker's coordinators are ready before the service asks for them: no library's
    # error line about them (aiokafka logs one, then asks again) among the table.
    assert "CoordinatorNotAvailable" not in done.stdout + done.stderr
    assert done.stderr == "", done.stderr
