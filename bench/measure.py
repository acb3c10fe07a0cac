"""What the benchmark measures, the same way for every contender.

- ``ResultCollector`` reads a contender's result topic from the start (no consumer group) and keeps,
  per inbound event id, the result's CloudEvents ``time`` and outcome (the first one, should an
  event be processed twice).
- ``ProcessSampler`` polls the CPU time (user + system, all threads) and RSS of the processes that
  share the machine (the contender, the emulator, the broker, this harness) and the machine's CPU
  counters; peak RSS is also read from the kernel's high-water mark (``VmHWM``) before a contender
  stops.
- ``sustained_window``, ``cpu_in_window``, ``machine_busy_share`` and ``per_second`` turn those into
  the figures of the report: sustained rate between 10% and 90% of the events done, CPU over the
  same window, throughput per 1-second bucket.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil
from aiokafka import TopicPartition

from devkit.harness import TopicReader


@dataclass(frozen=True, slots=True)
class Result:
    time: float
    outcome: str
    seen: float = 0.0
    """When the collector read it (wall clock): with transactions, when it became visible."""


class ResultCollector:
    """Reads a result topic from its beginning while a contender runs (``devkit.harness.TopicReader``)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, *, read_committed: bool = False) -> None:
        self.results: dict[str, Result] = {}
        self.duplicates = 0
        self._reader = TopicReader(
            bootstrap,
            [TopicPartition(topic, p) for p in range(partitions)],
            lambda record: self._take(record.value),
            name="bench-result-collector",
            read_committed=read_committed,
        )

    @property
    def count(self) -> int:
        return len(self.results)

    async def start(self) -> None:
        await self._reader.start()

    async def stop(self) -> None:
        await self._reader.stop()

    def _take(self, value: bytes | None) -> None:
        try:
            document = json.loads(value or b"")
            data = document["data"]
            event_id = str(data["inbound_event_id"])
            moment = datetime.fromisoformat(document["time"]).timestamp()
            outcome = str(data["outcome"])
        except (ValueError, KeyError, TypeError):
            return  # not a result event: not counted
        if event_id in self.results:
            self.duplicates += 1
            return
        self.results[event_id] = Result(moment, outcome, time.time())


MAIN_THREAD = ":main"  # suffix of a process name: its main thread only


@dataclass(frozen=True, slots=True)
class Sample:
    time: float
    cpu: Mapping[str, float]  # process name (or name + MAIN_THREAD) → CPU seconds so far
    rss: Mapping[str, int]  # process name → bytes
    machine_busy: float  # CPU seconds of all cores, not idle
    machine_total: float  # CPU seconds of all cores


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def peak_rss_bytes(pid: int) -> int | None:
    """The kernel's high-water mark of the resident set (Linux), while the process lives."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class ProcessSampler:
    """Polls CPU time and RSS of named processes, and the machine's CPU counters."""

    def __init__(self, processes: Mapping[str, int], interval: float = 0.25) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self._interval = interval
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> Sample:
        cpu: dict[str, float] = {}
        rss: dict[str, int] = {}
        for name, process in self._processes.items():
            try:
                with process.oneshot():
                    cpu[name] = _cpu_seconds(process)
                    rss[name] = int(process.memory_info().rss)
                    for thread in process.threads():
                        if thread.id == process.pid:  # the main thread: the event loop
                            cpu[f"{name}{MAIN_THREAD}"] = float(thread.user_time + thread.system_time)
            except psutil.Error:
                continue
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        total = float(sum(machine))
        taken = Sample(time.time(), cpu, rss, total - idle, total)
        self.samples.append(taken)
        return taken

    async def start(self) -> None:
        self.sample()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.sample()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    def peak_rss(self, name: str) -> int:
        return max((s.rss.get(name, 0) for s in self.samples), default=0)

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None


def _interpolate(samples: Sequence[Sample], moment: float, read: Callable[[Sample], float]) -> float:
    """A counter of the samples, as ``read`` takes it from each, at ``moment``."""
    index = bisect.bisect_left(samples, moment, key=lambda sample: sample.time)
    if index <= 0:
        return read(samples[0])
    if index >= len(samples):
        return read(samples[-1])
    before, after = samples[index - 1], samples[index]
    span = after.time - before.time
    share = (moment - before.time) / span if span > 0 else 0.0
    return read(before) + (read(after) - read(before)) * share


@dataclass
class Window:
    """The sustained part of a run: from 10% to 90% of the events it finished."""

    start: float
    end: float
    results: int

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def rate(self) -> float:
        return self.results / self.seconds if self.seconds > 0 else math.nan


def sustained_window(result_times: Sequence[float], low: float = 0.1, high: float = 0.9) -> Window | None:
    ordered = sorted(result_times)
    if len(ordered) < 10:
        return None
    first, last = int(len(ordered) * low), int(len(ordered) * high) - 1
    return Window(ordered[first], ordered[last], last - first)


def _growth(samples: Sequence[Sample], window: Window, read: Callable[[Sample], float]) -> float:
    """How much a counter of the samples grew during the window."""
    return _interpolate(samples, window.end, read) - _interpolate(samples, window.start, read)


def cpu_in_window(samples: Sequence[Sample], window: Window, name: str) -> float:
    """CPU seconds the named process used during the window."""
    if not samples:
        return math.nan
    return _growth(samples, window, lambda sample: sample.cpu.get(name, math.nan))


def machine_busy_share(samples: Sequence[Sample], window: Window) -> float:
    """Share of the machine's CPU capacity (all cores) busy during the window."""
    if not samples:
        return math.nan
    busy = _growth(samples, window, lambda sample: sample.machine_busy)
    total = _growth(samples, window, lambda sample: sample.machine_total)
    return busy / total if total > 0 else math.nan


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def per_second(result_times: Sequence[float], since: float) -> list[int]:
    """Results per 1-second bucket from ``since``."""
    if not result_times:
        return []
    buckets = [0] * (int(max(result_times) - since) + 1)
    for moment in result_times:
        index = int(moment - since)
        if index >= 0:
            buckets[index] += 1
    return buckets


@dataclass
class Rates:
    """A rolling rate for the progress display."""

    points: list[tuple[float, int]] = field(default_factory=list)

    def add(self, count: int) -> float:
        now = time.monotonic()
        self.points.append((now, count))
        while len(self.points) > 2 and now - self.points[0][0] > 3.0:
            self.points.pop(0)
        first_time, first_count = self.points[0]
        return (count - first_count) / (now - first_time) if now > first_time else 0.0
