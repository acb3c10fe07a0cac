"""The processes of a chaos run: starting ``amili-registrar`` commands, stopping them, and measuring
them (CPU from ``/proc``, lines in their logs).

The benchmarks start their services the same way (``clean_environment``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings

CPU_SAMPLE_SECONDS = 0.5
MARKER = "----- chaos:"  # lines the run writes into the service logs (not counted as the service's)


def clean_environment() -> dict[str, str]:
    """This process's environment without any of the service's or the emulator's settings, so
    nothing set in the caller's shell changes the run."""
    ours = {name.upper() for name in Settings.model_fields}
    return {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in ours and not name.upper().startswith("AMILI_EMULATOR_")
    }


def spawn_command(arguments: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    """Start ``amili-registrar ARGUMENTS`` (``run``, ``emulator``) with exactly ``env``, its output
    appended to ``log_file``."""
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service", *arguments],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches only the chaos run
        )


def end_process(process: subprocess.Popen[bytes] | None, *, grace: float = 10.0) -> None:
    """Stop ``process`` (SIGTERM, then SIGKILL) and reap it."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_ticks(pid: int) -> int | None:
    """The CPU a process used so far (utime + stime, in clock ticks), from ``/proc/PID/stat``;
    None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": state is field 3 of stat(5)
    try:
        return int(fields[11]) + int(fields[12])  # utime is field 14, stime field 15
    except (IndexError, ValueError):
        return None


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def lines_since(path: Path, offset: int) -> int:
    """Lines written to ``path`` after byte ``offset``, without the run's own markers."""
    count = 0
    with contextlib.suppress(OSError), path.open("rb") as log:
        log.seek(offset)
        for line in log:
            if not line.startswith(MARKER.encode()):
                count += 1
    return count


@dataclass
class Replica:
    """One instance of the service; all of them consume in the run's consumer group."""

    index: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # time.monotonic() of its current life
    lives: int = 0

    @property
    def name(self) -> str:
        return f"r{self.index}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class CpuSampler:
    """The CPU each replica uses over a window, sampled from ``/proc``: a replica started again
    within the window counts its new process from its start."""

    def __init__(self, replicas: Sequence[Replica]) -> None:
        self._replicas = replicas
        self._spans: dict[tuple[str, int], list[int]] = {}  # (replica, pid) → [first, last] ticks
        self._started = False

    def sample(self) -> None:
        for replica in self._replicas:
            if replica.process is None:
                continue
            ticks = cpu_ticks(replica.process.pid)
            if ticks is None:
                continue
            span = self._spans.setdefault(
                (replica.name, replica.process.pid), [ticks if not self._started else 0, ticks]
            )
            span[1] = ticks
        self._started = True

    async def run(self) -> None:
        while True:  # until cancelled at the end of the window
            await asyncio.sleep(CPU_SAMPLE_SECONDS)
            self.sample()

    def cores(self, seconds: float) -> dict[str, float]:
        """Cores used per replica over a window of ``seconds``."""
        self.sample()
        if seconds <= 0:
            return {}
        ticks = dict.fromkeys((replica.name for replica in self._replicas), 0)
        for (name, _), (first, last) in self._spans.items():
            ticks[name] += max(0, last - first)
        return {name: used / CLOCK_TICKS / seconds for name, used in ticks.items()}
