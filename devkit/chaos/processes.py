"""The replicas of a chaos run and what is measured of them: CPU from ``/proc``, lines in their
logs. Starting and stopping them is the harness's (``devkit.harness``), shared with the benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devkit.harness import Child

CPU_SAMPLE_SECONDS = 0.5
MARKER = "----- chaos:"  # lines the run writes into the service logs (not counted as the service's)
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
    process: Child | None = None
    started: float = 0.0  # time.monotonic() of its current life
    lives: int = 0

    @property
    def name(self) -> str:
        return f"r{self.index}"

    def running(self) -> bool:
        return self.process is not None and self.process.running


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
