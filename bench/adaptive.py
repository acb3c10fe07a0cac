"""Flow control towards Amili under overload: the adaptive limit against a fixed window, on a real
broker and the Amili emulator's capacity model. (A benchmark, not a test.)

The emulator answers every request after a fixed 50 ms; its capacity model (``devkit/emulator/
faults.py``) bounds what it carries: ``AMILI_EMULATOR_CAPACITY`` requests in service at once (the
others queue, FIFO; throughput at most capacity ÷ latency) and ``AMILI_EMULATOR_RATE_LIMIT``
requests a second per API key (beyond it 429 at once, with X-RateLimit-* and Retry-After). The
*bound* of a configuration is min(capacity ÷ latency, rate limit): nominal with the injected
latency, *here* with the time a request really held a place at the emulator (its ``/_admin/load``
measures it: the latency plus the handling, which on a small machine shared with the broker and
the service adds a few ms; the mean over the contenders of a configuration). Each scenario gets a fresh
emulator process; each run of the service a fresh 6-partition topic, consumer group and result
topic, and the emulator's load counters are reset (``DELETE /_admin/load``). The service runs as
``python -m service run``, as ``bench/throughput.py`` starts it (same environment, SQLite ledger,
``LOG_LEVEL=WARNING``), with the demo API key. Every second the harness samples the results read
back, the emulator's ``/_admin/load`` (requests, 429s, in service, queued) and each service's
``/metrics`` (``registrar_amili_concurrency_limit`` and the other flow gauges and counters).

Contenders: ``adaptive-gradient`` (AMILI_CONCURRENCY=adaptive, AMILI_LIMIT_ALGORITHM=gradient),
``adaptive-aimd`` (the same with aimd), ``fixed-128`` (AMILI_CONCURRENCY=fixed, MAX_IN_FLIGHT=128);
MAX_IN_FLIGHT is 128 for all (the adaptive limit's upper bound). All keep to the rate budget learnt
from X-RateLimit-*; ``--contenders`` can add ``adaptive-gradient-no-budget`` and
``fixed-128-no-budget`` (AMILI_RATE_BUDGET=false: only 429s slow the instance down) to scenario A.

A. **Overload**: capacity 32, rate limit 400/s (bound 400/s, rate-bound) and capacity 16, rate
   limit 400/s (bound 320/s, capacity-bound). Each contender drains a backlog of 40 s worth of the
   nominal bound (time box 3 times the ideal time + 15 s), then a paced run at 80% of the bound
   here for 20 s; the adaptive-gradient contender also a paced run at 10% of it ("unloaded").
   Targets: goodput ≥ 90% of the bound here; 429s < 1% of the requests after the first 10 s; p99
   event→result at 80% ≤ 3 times the unloaded p99.
B. **No overload**: no capacity nor rate limit; adaptive-gradient and fixed-128 on a backlog of
   20,000, two rounds in turn (the second in the other order; a single run of 10,000 varied by
   ±15% from one run to the next). Target: adaptive's mean sustained rate ≥ 95% of fixed's.
C. **Fairness**: capacity 32 (640/s), two creditors. A small creditor S sends 100 invoices at 10/s,
   alone and then 3 s after the first result of a big creditor's backlog of 20,000 (produced before
   the service starts), once with MAX_EVENTS_HELD at its default (25,000: all read ahead) and once
   at 10,000 (S's events are behind 10,000 events not yet read: the reach of fairness). Each run's
   peak resident memory is reported. Target: S's p99 with the backlog ≤ 2 times alone.
D. **Three replicas**: rate limit 300/s, no capacity limit, one API key; three services in one
   consumer group sharing one PostgreSQL ledger (``scripts/postgres.sh``; separate SQLite ledgers if
   PostgreSQL is not to be had, which the report then says); a backlog of 30 s worth (9,000).
   Targets: goodput ≥ 85% of the rate limit; 429s < 2% of the requests.

Goodput is results per second between 10% and 90% of the results (``bench.measure.
sustained_window``); event→result is the result's ``time`` minus the event's.

    .venv/bin/python -m bench.adaptive                    # all four scenarios, about 10 minutes
    .venv/bin/python -m bench.adaptive --quick            # a smoke run, about 4 minutes
    .venv/bin/python -m bench.adaptive --scenarios a,d --json adaptive.json

Uses ``KAFKA_BOOTSTRAP_SERVERS`` when set, else starts a local broker and stops it at the end.
Prints tables, the verdicts and a Markdown block of the figures (for ``docs/performance.md``);
writes ``docs/performance-adaptive.png`` (``--plot``) and the figures as JSON (``--json``, and
``results.json`` in the work dir, where the logs of every process are).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    Progress,
)
from rich.table import Table

from bench.measure import Result, ResultCollector, peak_rss_bytes, per_second, percentile, sustained_window
from bench.throughput import (
    PARTITIONS,
    ROOT,
    Contender,
    Profile,
    machine_description,
    profile_emulator,
    progress_display,
    run_benchmark,
)
from bench.workload import EventFactory, load_templates, produce_backlog, produce_paced
from devkit.emulator.settings import DEMO_CREDITOR
from devkit.harness import Child, Topics, broker, create_run_topics, service_command
from devkit.localkafka import free_port
from devkit.postgres import PostgresUnavailable, scratch_database
from service.config import Settings

SECOND_CREDITOR = "674dbeb208847b9501cc9139"  # the small sender of scenario C (the emulator is told)
MAX_IN_FLIGHT = 128
SCENARIOS = ("a", "b", "c", "d")

CONTENDERS: dict[str, dict[str, str]] = {
    "adaptive-gradient": {"AMILI_CONCURRENCY": "adaptive", "AMILI_LIMIT_ALGORITHM": "gradient"},
    "adaptive-aimd": {"AMILI_CONCURRENCY": "adaptive", "AMILI_LIMIT_ALGORITHM": "aimd"},
    "fixed-128": {"AMILI_CONCURRENCY": "fixed"},
    # diagnostics (scenario A, only when asked for with --contenders): without the rate budget only
    # 429s slow the instance down
    "adaptive-gradient-no-budget": {
        "AMILI_CONCURRENCY": "adaptive",
        "AMILI_LIMIT_ALGORITHM": "gradient",
        "AMILI_RATE_BUDGET": "false",
    },
    "fixed-128-no-budget": {"AMILI_CONCURRENCY": "fixed", "AMILI_RATE_BUDGET": "false"},
}
OVERLOAD_CONTENDERS = ("adaptive-gradient", "adaptive-aimd", "fixed-128")
COLOURS = {
    "adaptive-gradient": "tab:blue",
    "adaptive-aimd": "tab:green",
    "fixed-128": "tab:red",
    "adaptive-gradient-no-budget": "tab:cyan",
    "fixed-128-no-budget": "tab:orange",
}

# the samples taken from each service's /metrics (summed over their labels)
LIMIT = "registrar_amili_concurrency_limit"
SHARING = "registrar_amili_creditors_sharing"
MIN_LATENCY = "registrar_amili_min_latency_seconds"
RATE_LIMITED = "registrar_amili_rate_limited_total"
BUDGET_WAIT = "registrar_amili_rate_budget_wait_seconds_total"
WAITING = "registrar_registrations_waiting"
AT_AMILI = "registrar_registrations_in_flight"
HELD = "registrar_events_in_flight"
PUBLISHED = "registrar_results_published_total"
CALLS = "registrar_amili_request_duration_seconds_count"
CALL_SECONDS = "registrar_amili_request_duration_seconds_sum"
RETRIES = "registrar_retries_total"
METRICS = (
    LIMIT,
    SHARING,
    MIN_LATENCY,
    RATE_LIMITED,
    BUDGET_WAIT,
    WAITING,
    AT_AMILI,
    HELD,
    PUBLISHED,
    CALLS,
    CALL_SECONDS,
    RETRIES,
)
HELD_BY_DEFAULT: int = Settings.model_fields["max_events_held"].default


# options ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    scenarios: tuple[str, ...]
    contenders: tuple[str, ...]  # of scenario A
    quick: bool
    latency_ms: float
    overload_seconds: float  # A: the backlog is this many seconds worth of the bound
    paced_seconds: float  # A: each paced run
    no_overload_backlog: int  # B
    no_overload_rounds: int  # B: runs of each contender, in turn
    no_overload_creditors: int  # B: the backlog's creditors, its events in turn of them
    fairness_backlog: int  # C: the big creditor's backlog
    replicas_seconds: float  # D: the backlog is this many seconds worth of the rate limit
    plot: Path
    json: Path | None
    workdir: Path
    postgres_dsn: str | None
    postgres_dir: Path
    service_env: dict[str, str]  # added to every service's environment, last (--service-env)
    trace_service: bool  # run bench/trace_service.py instead of the service, a trace per phase
    command: str


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.adaptive", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="which to run, comma separated: a (overload), b (no overload), c (fairness), d (three "
        "replicas) (default a,b,c,d)",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(OVERLOAD_CONTENDERS),
        help=f"scenario A's contenders, comma separated, from {','.join(CONTENDERS)} (default "
        f"{','.join(OVERLOAD_CONTENDERS)}; the -no-budget ones run with AMILI_RATE_BUDGET=false)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: smaller backlogs, shorter runs")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the emulator's fixed latency")
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "docs" / "performance-adaptive.png", help="PNG to write"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument(
        "--no-overload-creditors",
        type=int,
        choices=(1, 2),
        default=1,
        help="B: the backlog's creditors, its events in turn of them (default 1; with 2, two "
        "backlogs side by side)",
    )
    parser.add_argument("--workdir", type=Path, help="logs, ledgers and results.json (default: a temp dir)")
    parser.add_argument(
        "--postgres-dsn",
        help="D: an admin DSN of a PostgreSQL server to make the shared ledger's database in (default: "
        "a local cluster with scripts/postgres.sh)",
    )
    parser.add_argument(
        "--postgres-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bench-adaptive-postgres",
        help="D: the local cluster's folder (stopped at the end if it was not running)",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every service of the run, over the contenders' own (repeatable); to try "
        "a setting before changing its default",
    )
    parser.add_argument(
        "--trace-service",
        action="store_true",
        help="diagnostic: time the steps of each event in the service (bench/trace_service.py); the "
        "totals of each phase are printed and written beside its logs",
    )
    args = parser.parse_args(argv)
    service_env: dict[str, str] = {}
    for setting in args.service_env:
        name, equals, value = setting.partition("=")
        if not equals or not name:
            parser.error(f"--service-env: NAME=VALUE expected (got {setting!r})")
        service_env[name] = value
    scenarios = tuple(dict.fromkeys(s.strip().lower() for s in args.scenarios.split(",") if s.strip()))
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        parser.error(f"--scenarios: pick from {','.join(SCENARIOS)} (got {args.scenarios!r})")
    contenders = tuple(dict.fromkeys(c.strip() for c in args.contenders.split(",") if c.strip()))
    if not contenders or any(c not in CONTENDERS for c in contenders):
        parser.error(f"--contenders: pick from {','.join(CONTENDERS)} (got {args.contenders!r})")
    quick = bool(args.quick)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-adaptive-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return Options(
        scenarios=scenarios,
        contenders=contenders,
        quick=quick,
        latency_ms=args.latency_ms,
        overload_seconds=10.0 if quick else 40.0,
        paced_seconds=8.0 if quick else 20.0,
        no_overload_backlog=3000 if quick else 20_000,
        no_overload_rounds=1 if quick else 2,
        no_overload_creditors=args.no_overload_creditors,
        fairness_backlog=5000 if quick else 20_000,
        replicas_seconds=10.0 if quick else 30.0,
        plot=args.plot,
        json=args.json,
        workdir=workdir.resolve(),
        postgres_dsn=args.postgres_dsn,
        postgres_dir=args.postgres_dir,
        service_env=service_env,
        trace_service=bool(args.trace_service),
        command=shlex.join(["python", "-m", "bench.adaptive", *(argv if argv is not None else sys.argv[1:])]),
    )


# the emulator's configurations ----------------------------------------------------------------------


@dataclass(frozen=True)
class Amili:
    """One configuration of the emulator's capacity model."""

    name: str
    latency_ms: float
    capacity: int = 0
    rate_limit: float = 0.0
    creditors: tuple[str, ...] = (DEMO_CREDITOR,)

    def bound_here(self, mean_service_seconds: float) -> float:
        """The bound with the time a request really holds a place at the emulator instead of the
        injected latency: the handling adds to it, the more the busier the machine's cores are."""
        if not self.capacity or not mean_service_seconds > 0:
            return self.bound
        limits = [self.capacity / mean_service_seconds]
        if self.rate_limit:
            limits.append(self.rate_limit)
        return min(min(limits), self.bound)

    @property
    def bound(self) -> float:
        """Registrations per second it can carry: min(capacity ÷ latency, rate limit); inf if neither."""
        limits = [math.inf]
        if self.capacity:
            limits.append(self.capacity / (self.latency_ms / 1000))
        if self.rate_limit:
            limits.append(self.rate_limit)
        return min(limits)

    @property
    def title(self) -> str:
        parts = [f"{self.latency_ms:g} ms"]
        parts.append(f"capacity {self.capacity}" if self.capacity else "no capacity limit")
        parts.append(f"rate limit {self.rate_limit:g}/s" if self.rate_limit else "no rate limit")
        if len(self.creditors) > 1:
            parts.append(f"{len(self.creditors)} creditors")
        text = ", ".join(parts)
        return f"{text} (bound {self.bound:,.0f}/s)" if math.isfinite(self.bound) else text

    def profile(self) -> Profile:
        env = {
            "AMILI_EMULATOR_LATENCY_MS": f"{self.latency_ms:g}",
            "AMILI_EMULATOR_CAPACITY": str(self.capacity),
            "AMILI_EMULATOR_RATE_LIMIT": f"{self.rate_limit:g}",
            "AMILI_EMULATOR_CREDITORS": ",".join(self.creditors),
        }
        return Profile(self.name, self.title, env, self.latency_ms)


# one run of the service ---------------------------------------------------------------------------


@dataclass
class Point:
    """One sample, ``t`` seconds after the services started. The emulator's counts are since its
    counters were reset (just before); nan when it did not answer."""

    t: float
    results: int
    requests: float
    rate_limited: float
    in_service: float
    queued: float
    served: float
    service_seconds: float  # the seconds the requests served held their places, all together
    metrics: dict[str, dict[str, float]]  # service name → sample name → value


@dataclass(frozen=True)
class Feed:
    """Events sent at a steady rate while the service runs: from the start (after the warm-up), or
    ``after_first_result`` seconds after the first result."""

    group: str
    factory: EventFactory
    rate: float
    seconds: float
    after_first_result: float | None = None


@dataclass
class LogSummary:
    lines: int = 0
    levels: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)  # "level: message" of warnings and worse

    def add(self, other: LogSummary) -> None:
        self.lines += other.lines
        for level, count in other.levels.items():
            self.levels[level] = self.levels.get(level, 0) + count
        for message, count in other.messages.items():
            self.messages[message] = self.messages.get(message, 0) + count


def summarise_log(path: Path) -> LogSummary:
    """Counts of a service log's lines by level, and its warnings and errors by message."""
    summary = LogSummary()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return summary
    for line in text.splitlines():
        if not line.strip():
            continue
        summary.lines += 1
        try:
            entry = json.loads(line)
            level = str(entry.get("level", "?"))
            message = str(entry.get("message", ""))[:160]
        except (ValueError, AttributeError):
            level, message = "raw", line.strip()[:160]
        summary.levels[level] = summary.levels.get(level, 0) + 1
        if level not in ("debug", "info"):
            key = f"{level}: {message}"
            summary.messages[key] = summary.messages.get(key, 0) + 1
    return summary


@dataclass
class Phase:
    """What one run of the service (one or more replicas) did."""

    label: str
    services: list[str]
    started: float  # wall clock, when the services were started
    seconds: float  # until the run ended (all results in, or the time box)
    finished: bool
    error: str
    sent: dict[str, float]  # event id → event time, every event of the run
    groups: dict[str, list[str]]  # backlog / warmup / a feed's group → its event ids
    results: dict[str, Result]
    duplicates: int
    points: list[Point]
    logs: LogSummary
    peak_resident_mb: dict[str, float]  # service name → its peak resident memory (VmHWM)

    def ids(self, group: str | None = None) -> list[str]:
        return list(self.sent) if group is None else self.groups.get(group, [])

    def done(self, group: str | None = None) -> int:
        return sum(1 for event_id in self.ids(group) if event_id in self.results)

    def result_times(self, group: str | None = None) -> list[float]:
        return [self.results[i].time for i in self.ids(group) if i in self.results]

    def latencies_ms(self, group: str) -> list[float]:
        return [(self.results[i].time - self.sent[i]) * 1000 for i in self.ids(group) if i in self.results]

    def outcomes(self, group: str | None = None) -> dict[str, int]:
        return dict(Counter(self.results[i].outcome for i in self.ids(group) if i in self.results))

    def goodput(self, group: str | None = None) -> float:
        window = sustained_window(self.result_times(group))
        return window.rate if window is not None else math.nan

    def series(self, name: str, service: str) -> list[float]:
        """A service's metric at each sample."""
        return [point.metrics.get(service, {}).get(name, math.nan) for point in self.points]

    def final(self, name: str, service: str) -> float:
        for point in reversed(self.points):
            value = point.metrics.get(service, {}).get(name)
            if value is not None and not math.isnan(value):
                return value
        return math.nan

    def share_429(self, since: float = 0.0) -> tuple[float, float, float]:
        """(429s, requests, share) at the emulator from ``since`` seconds after the start to the end."""
        points = [p for p in self.points if not math.isnan(p.requests)]
        if not points:
            return math.nan, math.nan, math.nan
        last = points[-1]
        base_requests = base_limited = 0.0
        if since > 0:
            base = next((p for p in points if p.t >= since), None)
            if base is None:
                return math.nan, math.nan, math.nan
            base_requests, base_limited = base.requests, base.rate_limited
        requests = last.requests - base_requests
        limited = last.rate_limited - base_limited
        return limited, requests, (limited / requests if requests > 0 else math.nan)

    def limit_median(self, service: str) -> float:
        """The service's limit over the sustained window (its median), else over the run."""
        return self.gauge_median(service, LIMIT)

    def gauge_median(self, service: str, name: str) -> float:
        """One of the service's gauges over the sustained window (its median), else over the run."""
        window = sustained_window(self.result_times())
        points = [
            point
            for point in self.points
            if window is None or window.start - self.started <= point.t <= window.end - self.started
        ]
        values = self.values(name, service, points)
        return statistics.median(values) if values else math.nan

    @staticmethod
    def values(name: str, service: str, points: Sequence[Point]) -> list[float]:
        """A service's metric at each of ``points`` that has it."""
        found = (point.metrics.get(service, {}).get(name, math.nan) for point in points)
        return [value for value in found if not math.isnan(value)]

    def while_group_ran(self, group: str) -> list[Point]:
        """The samples taken from the first of ``group``'s events sent to the last of its results."""
        sent = [self.sent[i] for i in self.ids(group)]
        done = self.result_times(group)
        if not sent or not done:
            return []
        start, end = min(sent) - self.started, max(done) - self.started
        return [point for point in self.points if start <= point.t <= end]

    def per_second_results(self) -> list[int]:
        return per_second(self.result_times(), self.started)

    def per_second_429(self) -> list[float]:
        """The emulator's 429s in each sampled second."""
        return increments([point.rate_limited for point in self.points])

    def per_second_admitted(self) -> list[float]:
        """The requests the emulator admitted (not refused with 429) in each sampled second."""
        return increments([point.requests - point.rate_limited for point in self.points])

    def mean_service_seconds(self) -> float:
        """How long a request held its place at the emulator, on average over the run."""
        for point in reversed(self.points):
            if point.served > 0:
                return point.service_seconds / point.served
        return math.nan

    def max_load(self) -> tuple[float, float]:
        """The most requests in service and queued at the emulator seen in a sample."""
        in_service = [p.in_service for p in self.points if not math.isnan(p.in_service)]
        queued = [p.queued for p in self.points if not math.isnan(p.queued)]
        return max(in_service, default=math.nan), max(queued, default=math.nan)


def increments(counts: list[float]) -> list[float]:
    """Each sample's count less the last one known before it (nan where a sample was missed)."""
    rates: list[float] = []
    previous = 0.0
    for count in counts:
        rates.append(count - previous)
        if not math.isnan(count):
            previous = count
    return rates


def parse_metrics(text: str) -> dict[str, float]:
    wanted = set(METRICS)
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                values[sample.name] = values.get(sample.name, 0.0) + float(sample.value)
    return values


# the benchmark ------------------------------------------------------------------------------------


@dataclass
class Verdict:
    scenario: str
    target: str
    subject: str
    measured: str
    required: str
    passed: bool
    note: str = ""


class PhaseError(Exception):
    pass


class Bench:
    def __init__(self, options: Options, bootstrap: str, progress: Progress, console: Console) -> None:
        self.options = options
        self.bootstrap = bootstrap
        self.progress = progress
        self.console = console
        self.templates = load_templates()
        self.run_id = uuid.uuid4().hex[:6]
        self._serial = 0
        self.figures: dict[str, Any] = {}
        self.verdicts: list[Verdict] = []
        self.traces: dict[str, Phase] = {}  # what the plot shows
        self.logs = LogSummary()
        self.notes: list[str] = []
        self.code = code_version()  # at the start: the service's processes start from this checkout

    def say(self, message: str) -> None:
        self.progress.console.print(message)

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    def factory(self, tag: str, creditor: str | None = None, *more: str) -> EventFactory:
        """Events with invoice numbers no other run of this benchmark uses (the emulator refuses a
        number it has seen), of ``creditor`` (the templates' own by default), or of ``creditor``
        and ``more`` in turn."""
        templates = self.templates
        if creditor is not None:
            each = (creditor, *more)
            templates = [{**t, "data": {**t["data"], "creditor": c}} for t in self.templates for c in each]
        return EventFactory(templates, f"{tag}{self.run_id}{self._next():02d}".upper())

    def topics(self, label: str) -> Topics:
        base = f"adaptive-{self.run_id}-{self._next():02d}-{label}"
        return Topics(f"{base}-invoices", f"{base}-results", f"{base}-dead-letters", f"{base}-group")

    def service_env(
        self, topics: Topics, url: str, http_port: int, env: Mapping[str, str], ledger_url: str | None
    ) -> dict[str, str]:
        base = Contender("service", MAX_IN_FLIGHT, None).env(
            topics, self.bootstrap, url, self.options.workdir, http_port
        )
        extra = {"LEDGER_URL": ledger_url} if ledger_url else {}
        return base | dict(env) | extra | self.options.service_env

    def print_traces(self, label: str, traces: Sequence[Path]) -> None:
        for trace in traces:
            if not trace.exists():
                self.say(f"{label}: no trace in {trace.name} (the service did not exit normally)")
                continue
            steps: dict[str, list[float]] = json.loads(trace.read_text())
            self.say(f"{label}: steps of the service ({trace.name}): calls, mean ms")
            for step, (calls, seconds) in sorted(steps.items()):
                mean_ms = 1000 * seconds / calls if calls else math.nan
                self.say(escape(f"  {step}: {int(calls):,}, {mean_ms:,.2f}"))

    async def sample(
        self, http: httpx.AsyncClient, url: str, ports: Mapping[str, int], results: int, started: float
    ) -> Point:
        async def load() -> dict[str, float]:
            try:
                answer = await http.get(f"{url}/_admin/load")
                return {k: float(v) for k, v in answer.json().items()}
            except (httpx.HTTPError, ValueError, AttributeError):
                return {}

        async def metrics(port: int) -> dict[str, float]:
            try:
                return parse_metrics((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
            except (httpx.HTTPError, ValueError):
                return {}

        moment = time.time()
        emulator_load, *services = await asyncio.gather(load(), *(metrics(port) for port in ports.values()))
        return Point(
            t=moment - started,
            results=results,
            requests=emulator_load.get("requests", math.nan),
            rate_limited=emulator_load.get("rate_limited", math.nan),
            in_service=emulator_load.get("in_service", math.nan),
            queued=emulator_load.get("queued", math.nan),
            served=emulator_load.get("served", math.nan),
            service_seconds=emulator_load.get("service_seconds", math.nan),
            metrics=dict(zip(ports, services, strict=True)),
        )

    async def phase(
        self,
        label: str,
        url: str,
        env: Mapping[str, str],
        *,
        time_box: float,
        replicas: int = 1,
        ledger_url: str | None = None,
        backlog: Sequence[tuple[str, EventFactory, int]] = (),
        warmup: EventFactory | None = None,
        feeds: Sequence[Feed] = (),
    ) -> Phase:
        """Fresh topics; the backlogs produced; the emulator's counters reset; the services started;
        the warm-up's results awaited; the feeds sent; until every event has its result or
        ``time_box`` seconds since the start."""
        options = self.options
        topics = self.topics(label)
        await create_run_topics(self.bootstrap, topics, PARTITIONS)
        sent: dict[str, float] = {}
        groups: dict[str, list[str]] = {}
        for group, factory, count in backlog:
            task = self.progress.add_task(f"{label}: producing {count:,} ({group})", total=count, status="")
            produced = await produce_backlog(
                self.bootstrap, topics.inbound, factory, count, functools.partial(self.progress.advance, task)
            )
            self.progress.remove_task(task)
            sent.update(produced)
            groups[group] = list(produced)
        expected = len(sent) + (10 if warmup else 0) + sum(round(f.rate * f.seconds) for f in feeds)
        points: list[Point] = []
        peak_resident: dict[str, float] = {}
        finished = False
        error = ""
        async with contextlib.AsyncExitStack() as stack:
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=2.0))
            await http.delete(f"{url}/_admin/load")
            collector = ResultCollector(self.bootstrap, topics.results, PARTITIONS)
            await collector.start()
            stack.push_async_callback(collector.stop)
            ports: dict[str, int] = {}
            children: list[Child] = []
            traces: list[Path] = []
            stack.callback(self.print_traces, label, traces)
            started = time.time()
            for index in range(replicas):
                name = "service" if replicas == 1 else f"replica-{index + 1}"
                port = ports[name] = free_port()
                service_env = self.service_env(topics, url, port, env, ledger_url)
                command = service_command("run")
                if options.trace_service:
                    trace = options.workdir / f"{topics.inbound}.{name}.trace.json"
                    traces.append(trace)
                    service_env["BENCH_TRACE_FILE"] = str(trace)
                    command = [sys.executable, "-m", "bench.trace_service"]
                child = Child.start(
                    name,
                    command,
                    service_env,
                    options.workdir / f"{topics.inbound}.{name}.log",
                    cwd=ROOT,
                )
                children.append(child)
            stopping: list[asyncio.Task[None]] = []

            async def stop_all() -> None:
                for child in children:  # once, while they run (the exit stack calls this again)
                    if child.running and child.name not in peak_resident:
                        peak = peak_rss_bytes(child.pid)
                        peak_resident[child.name] = math.nan if peak is None else peak / 2**20
                await asyncio.gather(*(child.stop() for child in children))

            stack.push_async_callback(stop_all)

            async def sampling() -> None:
                while True:
                    points.append(await self.sample(http, url, ports, collector.count, started))
                    await asyncio.sleep(1.0 - (time.time() - started) % 1.0)

            sampler = asyncio.create_task(sampling())
            stopping.append(sampler)
            task = self.progress.add_task(f"{label}", total=expected, status="starting")

            def check_children() -> None:
                for child in children:
                    if not child.running:
                        raise PhaseError(
                            f"{child.name} exited early (code {child.returncode}):\n{child.tail()}"
                        )

            async def first_result() -> float:
                while True:
                    if collector.results:
                        return min(result.time for result in collector.results.values())
                    await asyncio.sleep(0.05)

            async def feed(spec: Feed) -> None:
                if spec.after_first_result is not None:
                    first = await first_result()
                    await asyncio.sleep(max(0.0, first + spec.after_first_result - time.time()))
                produced = await produce_paced(
                    self.bootstrap, topics.inbound, spec.factory, spec.rate, spec.seconds, lambda _: None
                )
                sent.update(produced)
                groups[spec.group] = list(produced)

            feeding: list[asyncio.Task[None]] = []
            try:
                if warmup is not None:
                    self.progress.update(task, status="warming up")
                    warm = await produce_backlog(self.bootstrap, topics.inbound, warmup, 10, lambda _: None)
                    sent.update(warm)
                    groups["warmup"] = list(warm)
                    deadline = time.monotonic() + 60
                    while any(event_id not in collector.results for event_id in warm):
                        check_children()
                        if time.monotonic() > deadline:
                            raise PhaseError("the warm-up events got no result within 60 s")
                        await asyncio.sleep(0.1)
                feeding = [asyncio.create_task(feed(spec)) for spec in feeds]
                stopping.extend(feeding)
                while True:
                    check_children()
                    fed = all(t.done() for t in feeding)
                    for t in feeding:
                        if t.done() and t.exception() is not None:
                            raise PhaseError(f"a feed failed: {t.exception()!r}")
                    if fed and collector.count >= len(sent) and all(i in collector.results for i in sent):
                        finished = True
                        break
                    if time.time() - started > time_box:
                        break
                    status = f"{collector.count:,} results"
                    if points:
                        last = points[-1]
                        limits = "/".join(
                            f"{last.metrics.get(name, {}).get(LIMIT, math.nan):.0f}" for name in ports
                        )
                        status += f", limit {limits}, 429s {last.rate_limited:,.0f} of {last.requests:,.0f}"
                    self.progress.update(task, completed=collector.count, status=status)
                    await asyncio.sleep(0.5)
            except PhaseError as failure:
                error = str(failure)
                self.say(f"[red]{label}: {error}[/]")
            seconds = time.time() - started
            with contextlib.suppress(Exception):
                points.append(await self.sample(http, url, ports, collector.count, started))
            for pending in stopping:
                pending.cancel()
            for pending in stopping:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
            self.progress.remove_task(task)
            await stop_all()
            await asyncio.sleep(0.5)  # the last results
        logs = LogSummary()
        for child in children:
            logs.add(summarise_log(child.log))
        self.logs.add(logs)
        return Phase(
            label=label,
            services=list(ports),
            started=started,
            seconds=seconds,
            finished=finished,
            error=error,
            sent=sent,
            groups=groups,
            results=dict(collector.results),
            duplicates=collector.duplicates,
            points=points,
            logs=logs,
            peak_resident_mb=peak_resident,
        )

    def verdict(
        self,
        scenario: str,
        target: str,
        subject: str,
        measured: str,
        required: str,
        passed: bool,
        note: str = "",
    ) -> None:
        self.verdicts.append(Verdict(scenario, target, subject, measured, required, passed, note))

    # A ----------------------------------------------------------------------------------------------

    async def overload(self) -> None:
        options = self.options
        configs = [
            Amili("a-c32-r400", options.latency_ms, capacity=32, rate_limit=400),
            Amili("a-c16-r400", options.latency_ms, capacity=16, rate_limit=400),
        ]
        rows: list[dict[str, Any]] = []
        for index, amili in enumerate(configs):
            bound = amili.bound
            count = round(bound * options.overload_seconds)
            ideal_seconds = count / bound
            self.say(f"[bold cyan]A. overload: {amili.title}[/]; backlog {count:,} per contender")
            async with profile_emulator(amili.profile(), options.workdir) as emulated:
                url = emulated.url
                by_contender: dict[str, dict[str, Any]] = {}
                for name in options.contenders:
                    env = CONTENDERS[name]
                    phase = await self.phase(
                        f"{amili.name}-{name}",
                        url,
                        env,
                        time_box=3 * ideal_seconds + 15,
                        backlog=[("backlog", self.factory("A"), count)],
                    )
                    if index == 0:
                        self.traces[f"a:{name}"] = phase
                    row = self.backlog_row(phase, amili, name, count)
                    by_contender[name] = row
                    self.say(
                        f"[bold]{amili.name} · {name}[/]: {row['done']:,}/{count:,} in {row['seconds']:.1f} s"
                        f"{'' if row['finished'] else ' (NOT FINISHED: time box)'}, goodput "
                        f"{row['goodput']:,.1f}/s = {row['goodput_share']:.0%} of {bound:,.0f}/s, 429s "
                        f"{row['share_429_after_10s']:.2%} after 10 s ({row['share_429']:.2%} overall), "
                        f"limit median {row['limit_median']:.0f}, emulator max queued "
                        f"{row['max_queued']:.0f}, time in service {row['mean_service_ms']:.1f} ms"
                    )
                # The bound on this machine: capacity ÷ the time a request held a place at the
                # emulator (the injected latency plus its handling, on cores shared with the
                # broker and the service), the same for all contenders: their mean.
                held = [r["mean_service_ms"] / 1000 for r in by_contender.values()]
                held = [seconds for seconds in held if math.isfinite(seconds)]
                bound = amili.bound_here(statistics.fmean(held) if held else math.nan)
                for row in by_contender.values():
                    row["bound_here"] = bound
                    row["goodput_share"] = row["goodput"] / bound
                    self.say(
                        f"[bold]{amili.name} · {row['contender']}[/]: goodput {row['goodput_share']:.1%} of "
                        f"{bound:,.0f}/s, the bound on this machine ({row['goodput_share_nominal']:.1%} of "
                        f"the nominal {amili.bound:,.0f}/s)"
                    )
                for name in options.contenders:
                    env = CONTENDERS[name]
                    paced = await self.paced(f"{amili.name}-{name}-p80", url, env, 0.8 * bound)
                    by_contender[name] |= {"p80_" + k: v for k, v in paced.items()}
                    self.say(
                        f"[bold]{amili.name} · {name}[/]: at {0.8 * bound:,.0f}/s p50 "
                        f"{paced['p50_ms']:,.0f} ms, p99 {paced['p99_ms']:,.0f} ms "
                        f"({paced['received']}/{paced['sent']} results), 429s "
                        f"{paced['share_429']:.2%}"
                    )
                unloaded = await self.paced(
                    f"{amili.name}-unloaded", url, CONTENDERS["adaptive-gradient"], 0.1 * bound
                )
                self.say(
                    f"[bold]{amili.name} · unloaded[/] (adaptive-gradient at {0.1 * bound:,.0f}/s): "
                    f"p50 {unloaded['p50_ms']:,.0f} ms, p99 {unloaded['p99_ms']:,.0f} ms"
                )
            for name, row in by_contender.items():
                row["unloaded_p50_ms"] = unloaded["p50_ms"]
                row["unloaded_p99_ms"] = unloaded["p99_ms"]
                row["p99_ratio"] = row["p80_p99_ms"] / unloaded["p99_ms"] if unloaded["p99_ms"] else math.nan
                subject = f"{amili.name} {name}"
                note = "reference: a fixed window" if name.startswith("fixed") else ""
                if name.endswith("-no-budget"):
                    note = "diagnostic: AMILI_RATE_BUDGET=false" + (f", {note}" if note else "")
                if not row["finished"]:
                    note = (note + "; " if note else "") + f"time box: {row['done']:,}/{count:,} done"
                self.verdict(
                    "A",
                    "goodput ≥ 90% of the bound",
                    subject,
                    f"{row['goodput']:,.1f}/s = {row['goodput_share']:.1%} of {bound:,.0f}/s "
                    f"({row['goodput_share_nominal']:.1%} of the nominal {amili.bound:,.0f}/s)",
                    f"≥ {0.9 * bound:,.0f}/s",
                    row["goodput_share"] >= 0.9,
                    note,
                )
                self.verdict(
                    "A",
                    "429s < 1% of requests after the first 10 s",
                    subject,
                    f"{row['share_429_after_10s']:.2%} ({row['limited_after_10s']:,.0f} of "
                    f"{row['requests_after_10s']:,.0f})",
                    "< 1%",
                    row["share_429_after_10s"] < 0.01,
                    note,
                )
                self.verdict(
                    "A",
                    "p99 at 80% of the bound ≤ 3x unloaded p99",
                    subject,
                    f"{row['p80_p99_ms']:,.0f} ms = {row['p99_ratio']:.2f}x {unloaded['p99_ms']:,.0f} ms",
                    f"≤ {3 * unloaded['p99_ms']:,.0f} ms",
                    row["p99_ratio"] <= 3,
                    note,
                )
            rows.extend(by_contender.values())
        self.figures["A"] = rows

    def backlog_row(self, phase: Phase, amili: Amili, contender: str, count: int) -> dict[str, Any]:
        limited, requests, share = phase.share_429()
        limited_10, requests_10, share_10 = phase.share_429(since=10.0)
        outcomes = phase.outcomes()
        service = phase.services[0]
        max_in_service, max_queued = phase.max_load()
        calls = phase.final(CALLS, service)
        nominal_share = phase.goodput() / amili.bound if math.isfinite(amili.bound) else math.nan
        return {
            "config": amili.name,
            "amili": amili.title,
            "contender": contender,
            "bound": amili.bound,
            "backlog": count,
            "done": phase.done(),
            "finished": phase.finished,
            "error": phase.error,
            "seconds": phase.seconds,
            "goodput": phase.goodput(),
            # of the nominal bound; scenario A puts the share of the bound here in its place
            "goodput_share": nominal_share,
            "goodput_share_nominal": nominal_share,
            "requests": requests,
            "rate_limited": limited,
            "share_429": share,
            "requests_after_10s": requests_10,
            "limited_after_10s": limited_10,
            "share_429_after_10s": share_10,
            "outcomes": outcomes,
            "failed": sum(n for outcome, n in outcomes.items() if outcome != "registered"),
            "duplicates": phase.duplicates,
            "limit_median": phase.limit_median(service),
            "limit_final": phase.final(LIMIT, service),
            "min_latency_ms": phase.final(MIN_LATENCY, service) * 1000,
            "service_429s": phase.final(RATE_LIMITED, service),
            "budget_wait_seconds": phase.final(BUDGET_WAIT, service),
            "retries": phase.final(RETRIES, service),
            "mean_call_ms": phase.final(CALL_SECONDS, service) / calls * 1000 if calls else math.nan,
            "max_in_service": max_in_service,
            "max_queued": max_queued,
            "mean_service_ms": phase.mean_service_seconds() * 1000,
            "log_levels": phase.logs.levels,
            "results_per_second": phase.per_second_results(),
            "limit_each_second": phase.series(LIMIT, service),
            "rate_limited_each_second": phase.per_second_429(),
            "sample_seconds": [round(p.t, 2) for p in phase.points],
        }

    async def paced(self, label: str, url: str, env: Mapping[str, str], rate: float) -> dict[str, Any]:
        """Latency at a steady rate: 10 warm-up events, then ``rate`` a second for ``--paced-seconds``."""
        seconds = self.options.paced_seconds
        phase = await self.phase(
            label,
            url,
            env,
            time_box=seconds + 90,
            warmup=self.factory("W"),
            feeds=[Feed("paced", self.factory("P"), rate, seconds)],
        )
        latencies = phase.latencies_ms("paced")
        _, _, share = phase.share_429()
        worst: dict[int, float] = {}  # second of sending (since the service started) → slowest event
        for event_id in phase.ids("paced"):
            if event_id in phase.results:
                second = int(phase.sent[event_id] - phase.started)
                latency = (phase.results[event_id].time - phase.sent[event_id]) * 1000
                worst[second] = max(worst.get(second, 0.0), latency)
        return {
            "rate": rate,
            "seconds": seconds,
            "sent": len(phase.ids("paced")),
            "received": len(latencies),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": max(latencies, default=math.nan),
            "percentiles_ms": {str(q): percentile(latencies, q) for q in (0.5, 0.9, 0.95, 0.99, 0.999)},
            "slowest_by_second_ms": [round(worst[second]) for second in sorted(worst)],
            "share_429": share,
            "limit_median": phase.limit_median(phase.services[0]),
            "error": phase.error,
        }

    # B ----------------------------------------------------------------------------------------------

    async def no_overload(self) -> None:
        options = self.options
        creditors = (DEMO_CREDITOR, SECOND_CREDITOR)[: options.no_overload_creditors]
        amili = Amili("b-unlimited", options.latency_ms, creditors=creditors)
        count = options.no_overload_backlog
        names = ("adaptive-gradient", "fixed-128")
        rounds = options.no_overload_rounds
        self.say(
            f"[bold cyan]B. no overload: {amili.title}[/]; backlog {count:,} per run"
            + (f" of {len(creditors)} creditors in turn" if len(creditors) > 1 else "")
            + f", {rounds} round(s) of both contenders, in turn"
        )
        rows: list[dict[str, Any]] = []

        def backlog_factory() -> EventFactory:
            return self.factory("B", *creditors) if len(creditors) > 1 else self.factory("B")

        async with profile_emulator(amili.profile(), options.workdir) as emulated:
            url = emulated.url
            for round_number in range(1, rounds + 1):
                # each round in the other order: a machine that slows down or speeds up over the
                # run favours neither
                for name in names if round_number % 2 else tuple(reversed(names)):
                    phase = await self.phase(
                        f"b-{name}-{round_number}",
                        url,
                        CONTENDERS[name],
                        time_box=300,
                        backlog=[("backlog", backlog_factory(), count)],
                    )
                    row = self.backlog_row(phase, amili, name, count) | {"round": round_number}
                    rows.append(row)
                    self.say(
                        f"[bold]B · {name} (round {round_number})[/]: {row['done']:,}/{count:,} in "
                        f"{row['seconds']:.1f} s, sustained {row['goodput']:,.1f}/s, limit median "
                        f"{row['limit_median']:.0f}, mean call {row['mean_call_ms']:.1f} ms"
                    )
        mean = {
            name: statistics.fmean(r["goodput"] for r in rows if r["contender"] == name) for name in names
        }
        adaptive, fixed = mean["adaptive-gradient"], mean["fixed-128"]
        ratio = adaptive / fixed if fixed else math.nan
        for row in rows:
            row["ratio_to_fixed"] = row["goodput"] / fixed if fixed else math.nan
        limits = [r["limit_median"] for r in rows if r["contender"] == "adaptive-gradient"]
        self.verdict(
            "B",
            "adaptive within 5% of fixed (no overload)",
            "adaptive-gradient vs fixed-128",
            f"{adaptive:,.1f}/s vs {fixed:,.1f}/s = {ratio:.3f} (mean of {rounds} run(s) each)",
            "≥ 0.95",
            ratio >= 0.95,
            f"adaptive limit median {' / '.join(_n(limit) for limit in limits)}",
        )
        self.figures["B"] = rows

    # C ----------------------------------------------------------------------------------------------

    async def fairness(self) -> None:
        options = self.options
        amili = Amili(
            "c-fairness", options.latency_ms, capacity=32, creditors=(DEMO_CREDITOR, SECOND_CREDITOR)
        )
        count = options.fairness_backlog
        env = CONTENDERS["adaptive-gradient"]
        self.say(
            f"[bold cyan]C. fairness: {amili.title}[/]; small creditor S: 100 invoices at 10/s; big "
            f"creditor B: backlog {count:,}"
        )
        # the default read-ahead, and the other of 10,000 (short of the backlog) and 25,000 (past it)
        reads_ahead = [HELD_BY_DEFAULT, 25_000 if count > HELD_BY_DEFAULT else 10_000]
        rows: list[dict[str, Any]] = []

        def small() -> Feed:
            return Feed("S", self.factory("S", SECOND_CREDITOR), 10.0, 10.0)

        async with profile_emulator(amili.profile(), options.workdir) as emulated:
            url = emulated.url
            alone = await self.phase(
                "c-alone", url, env, time_box=90, warmup=self.factory("W"), feeds=[small()]
            )
            rows.append(self.fairness_row(alone, "alone", HELD_BY_DEFAULT, 0))
            self.say(self.fairness_line(rows[-1]))
            for held in reads_ahead:
                label = "default" if held == HELD_BY_DEFAULT else str(held)
                phase = await self.phase(
                    f"c-backlog-held-{label}",
                    url,
                    env | {"MAX_EVENTS_HELD": str(held)},
                    time_box=3 * (count + 100) / amili.bound + 40,
                    backlog=[("B", self.factory("B"), count)],
                    feeds=[dataclasses.replace(small(), after_first_result=3.0)],
                )
                rows.append(self.fairness_row(phase, "with backlog", held, count))
                self.say(self.fairness_line(rows[-1]))
        alone_p99 = rows[0]["s_p99_ms"]
        for row in rows[1:]:
            row["ratio_to_alone"] = row["s_p99_ms"] / alone_p99 if alone_p99 else math.nan
            held = row["max_events_held"]
            reach = (
                f"read-ahead {held:,} ≥ backlog {count:,}: S's events are read at once"
                if held >= count
                else f"read-ahead {held:,} < backlog {count:,}: S's events wait behind "
                f"{count - held:,} unread events (fairness reaches as far as the read-ahead)"
            )
            self.verdict(
                "C",
                "S's p99 with the backlog ≤ 2x alone",
                f"MAX_EVENTS_HELD={held:,}",
                f"{row['s_p99_ms']:,.0f} ms = {row['ratio_to_alone']:.2f}x {alone_p99:,.0f} ms",
                f"≤ {2 * alone_p99:,.0f} ms",
                row["ratio_to_alone"] <= 2,
                reach,
            )
        self.figures["C"] = rows

    def fairness_row(self, phase: Phase, run: str, held: int, backlog: int) -> dict[str, Any]:
        latencies = phase.latencies_ms("S")
        service = phase.services[0]
        calls = phase.final(CALLS, service)
        return {
            "run": run,
            "max_events_held": held,
            "backlog": backlog,
            "s_sent": len(phase.ids("S")),
            "s_received": len(latencies),
            "s_p50_ms": percentile(latencies, 0.5),
            "s_p99_ms": percentile(latencies, 0.99),
            "s_max_ms": max(latencies, default=math.nan),
            "b_done": phase.done("B"),
            "b_goodput": phase.goodput("B") if backlog else math.nan,
            "finished": phase.finished,
            "error": phase.error,
            "seconds": phase.seconds,
            "limit_median": phase.limit_median(service),
            "min_latency_ms": phase.gauge_median(service, MIN_LATENCY) * 1000,
            "mean_call_ms": phase.final(CALL_SECONDS, service) / calls * 1000 if calls else math.nan,
            "max_queued": phase.max_load()[1],
            **self.while_small_sends(phase, service),
            "peak_resident_mb": phase.peak_resident_mb.get(service, math.nan),
            "outcomes": phase.outcomes(),
            "duplicates": phase.duplicates,
            "log_levels": phase.logs.levels,
            "s_latencies_ms": sorted(latencies),
        }

    @staticmethod
    def while_small_sends(phase: Phase, service: str) -> dict[str, float]:
        """The limit, Amili's queue and how often the limit kept no queue there for a light creditor,
        while S's events were under way (the limit's median over the run is mostly B's alone)."""
        points = phase.while_group_ran("S")
        limits, sharing = phase.values(LIMIT, service, points), phase.values(SHARING, service, points)
        queued = [p.queued for p in points if not math.isnan(p.queued)]
        return {
            "s_limit_median": statistics.median(limits) if limits else math.nan,
            "s_queued_median": statistics.median(queued) if queued else math.nan,
            "s_sharing_share": statistics.fmean(sharing) if sharing else math.nan,
        }

    @staticmethod
    def fairness_line(row: dict[str, Any]) -> str:
        text = (
            f"[bold]C · {row['run']}[/] (MAX_EVENTS_HELD {row['max_events_held']:,}): S p50 "
            f"{row['s_p50_ms']:,.0f} ms, p99 {row['s_p99_ms']:,.0f} ms, max {row['s_max_ms']:,.0f} ms "
            f"({row['s_received']}/{row['s_sent']})"
        )
        if row["backlog"]:
            text += f"; B {row['b_done']:,}/{row['backlog']:,} at {row['b_goodput']:,.1f}/s"
        # The adaptive limit's view: where it settled, on which minimum, and what the calls took.
        text += (
            f"; limit median {row['limit_median']:,.0f}, minimum {row['min_latency_ms']:,.1f} ms, "
            f"mean call {row['mean_call_ms']:,.1f} ms; while S sent: limit median "
            f"{row['s_limit_median']:,.0f}, queued at Amili {row['s_queued_median']:,.0f}, "
            f"{SHARING} = 1 in {row['s_sharing_share']:.0%} of the samples"
        )
        return text

    # D ----------------------------------------------------------------------------------------------

    async def replicas(self) -> None:
        options = self.options
        amili = Amili("d-r300", options.latency_ms, rate_limit=300)
        count = round(amili.rate_limit * options.replicas_seconds)
        self.say(f"[bold cyan]D. three replicas: {amili.title}[/]; backlog {count:,}, one consumer group")
        async with contextlib.AsyncExitStack() as stack:
            ledger: str | None = None
            try:
                ledger = await stack.enter_async_context(postgres_ledger(options, self.say))
                ledger_note = "one shared PostgreSQL ledger"
            except PostgresUnavailable as missing:
                ledger_note = (
                    "separate SQLite ledgers (PostgreSQL not available: "
                    f"{missing}); partitions are disjoint, so no invoice is handled by two replicas "
                    "except at rebalances"
                )
                self.notes.append(f"D: {ledger_note}")
                self.say(f"[yellow]D: {ledger_note}[/]")
            url = (await stack.enter_async_context(profile_emulator(amili.profile(), options.workdir))).url
            phase = await self.phase(
                "d-replicas",
                url,
                CONTENDERS["adaptive-gradient"],
                time_box=3 * count / amili.rate_limit + 30,
                replicas=3,
                ledger_url=ledger,
                backlog=[("backlog", self.factory("D"), count)],
            )
        self.traces["d"] = phase
        limited, requests, share = phase.share_429()
        limited_10, requests_10, share_10 = phase.share_429(since=10.0)
        goodput = phase.goodput()
        outcomes = phase.outcomes()
        row: dict[str, Any] = {
            "amili": amili.title,
            "ledger": ledger_note,
            "backlog": count,
            "done": phase.done(),
            "finished": phase.finished,
            "error": phase.error,
            "seconds": phase.seconds,
            "goodput": goodput,
            "goodput_share": goodput / amili.rate_limit,
            "requests": requests,
            "rate_limited": limited,
            "share_429": share,
            "share_429_after_10s": share_10,
            "requests_after_10s": requests_10,
            "limited_after_10s": limited_10,
            "outcomes": outcomes,
            "failed": sum(n for outcome, n in outcomes.items() if outcome != "registered"),
            "duplicates": phase.duplicates,
            "replicas": {
                name: {
                    "final_limit": phase.final(LIMIT, name),
                    "limit_median": phase.limit_median(name),
                    "results_published": phase.final(PUBLISHED, name),
                    "service_429s": phase.final(RATE_LIMITED, name),
                    "budget_wait_seconds": phase.final(BUDGET_WAIT, name),
                    "limit_each_second": phase.series(LIMIT, name),
                }
                for name in phase.services
            },
            "log_levels": phase.logs.levels,
            "results_per_second": phase.per_second_results(),
            "rate_limited_each_second": phase.per_second_429(),
            "admitted_each_second": phase.per_second_admitted(),
            "sample_seconds": [round(p.t, 2) for p in phase.points],
        }
        limits = ", ".join(f"{name} {r['final_limit']:.0f}" for name, r in row["replicas"].items())
        self.say(
            f"[bold]D[/]: {row['done']:,}/{count:,} in {row['seconds']:.1f} s, goodput {goodput:,.1f}/s = "
            f"{row['goodput_share']:.0%} of {amili.rate_limit:g}/s, 429s {share:.2%} ({limited:,.0f} of "
            f"{requests:,.0f}); final limits {limits}"
        )
        note = "" if phase.finished else f"time box: {row['done']:,}/{count:,} done"
        self.verdict(
            "D",
            "goodput ≥ 85% of the rate limit (3 replicas)",
            "3 replicas, adaptive-gradient",
            f"{goodput:,.1f}/s = {row['goodput_share']:.1%} of {amili.rate_limit:g}/s",
            f"≥ {0.85 * amili.rate_limit:,.0f}/s",
            row["goodput_share"] >= 0.85,
            note,
        )
        self.verdict(
            "D",
            "429s < 2% of requests (3 replicas)",
            "3 replicas, adaptive-gradient",
            f"{share:.2%} ({limited:,.0f} of {requests:,.0f})",
            "< 2%",
            share < 0.02,
            f"final limits {limits}",
        )
        self.figures["D"] = row


# PostgreSQL for scenario D ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def postgres_ledger(options: Options, say: Callable[[str], None]) -> AsyncIterator[str]:
    """A LEDGER_URL of a fresh database, dropped afterwards: on ``--postgres-dsn``, else on a local
    cluster in ``--postgres-dir`` (``devkit.postgres``)."""
    async with scratch_database(
        "bench_adaptive", admin_dsn=options.postgres_dsn, cluster=options.postgres_dir, say=say
    ) as url:
        yield url


# the report ---------------------------------------------------------------------------------------


def _n(value: float, digits: int = 0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _pct(value: float, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}%}"


def _done(row: Mapping[str, Any]) -> str:
    text = f"{row['done']:,}/{row['backlog']:,}"
    if row.get("error"):
        return text + " (error)"
    return text if row["finished"] else text + " (time box)"


A_HEADERS = (
    "config",
    "contender",
    "done",
    "s",
    "goodput /s",
    "bound here /s",
    "% of bound here",
    "% of nominal bound",
    "in service ms",
    "429s after 10 s",
    "429s overall",
    "failed",
    "dup",
    "limit median",
    "mean call ms",
    "budget wait s",
    "max queued",
    "p50 @80% ms",
    "p99 @80% ms",
    "unloaded p99 ms",
)


def _a_row(row: Mapping[str, Any]) -> list[str]:
    return [
        row["config"],
        row["contender"],
        _done(row),
        _n(row["seconds"], 1),
        _n(row["goodput"], 1),
        _n(row.get("bound_here", math.nan)),
        _pct(row["goodput_share"]),
        _pct(row.get("goodput_share_nominal", math.nan)),
        _n(row.get("mean_service_ms", math.nan), 1),
        _pct(row["share_429_after_10s"], 2),
        _pct(row["share_429"], 2),
        _n(row["failed"]),
        _n(row["duplicates"]),
        _n(row["limit_median"]),
        _n(row["mean_call_ms"], 1),
        _n(row["budget_wait_seconds"], 1),
        _n(row["max_queued"]),
        _n(row.get("p80_p50_ms", math.nan)),
        _n(row.get("p80_p99_ms", math.nan)),
        _n(row.get("unloaded_p99_ms", math.nan)),
    ]


B_HEADERS = (
    "contender",
    "round",
    "done",
    "s",
    "sustained /s",
    "ratio to fixed",
    "limit median",
    "mean call ms",
    "failed",
)


def _b_row(row: Mapping[str, Any]) -> list[str]:
    return [
        row["contender"],
        str(row.get("round", 1)),
        _done(row),
        _n(row["seconds"], 1),
        _n(row["goodput"], 1),
        _n(row.get("ratio_to_fixed", math.nan), 3),
        _n(row["limit_median"]),
        _n(row["mean_call_ms"], 1),
        _n(row["failed"]),
    ]


C_HEADERS = (
    "run",
    "MAX_EVENTS_HELD",
    "B backlog",
    "S results",
    "S p50 ms",
    "S p99 ms",
    "S max ms",
    "p99 ÷ alone",
    "B done",
    "B goodput /s",
    "limit median",
    "mean call ms",
    "max queued",
    "peak RSS MB",
)


def _c_row(row: Mapping[str, Any]) -> list[str]:
    return [
        row["run"],
        f"{row['max_events_held']:,}",
        f"{row['backlog']:,}" if row["backlog"] else "-",
        f"{row['s_received']}/{row['s_sent']}",
        _n(row["s_p50_ms"]),
        _n(row["s_p99_ms"]),
        _n(row["s_max_ms"]),
        _n(row.get("ratio_to_alone", math.nan), 2),
        f"{row['b_done']:,}" if row["backlog"] else "-",
        _n(row["b_goodput"], 1),
        _n(row["limit_median"]),
        _n(row["mean_call_ms"], 1),
        _n(row["max_queued"]),
        _n(row.get("peak_resident_mb", math.nan)),
    ]


D_HEADERS = (
    "ledger",
    "done",
    "s",
    "goodput /s",
    "% of rate limit",
    "429s",
    "429s after 10 s",
    "failed",
    "dup",
    "final limits",
    "results per replica",
)


def _d_row(row: Mapping[str, Any]) -> list[str]:
    replicas = row["replicas"]
    return [
        "PostgreSQL (shared)" if row["ledger"].startswith("one shared") else "SQLite (one each)",
        _done(row),
        _n(row["seconds"], 1),
        _n(row["goodput"], 1),
        _pct(row["goodput_share"]),
        _pct(row["share_429"], 2),
        _pct(row["share_429_after_10s"], 2),
        _n(row["failed"]),
        _n(row["duplicates"]),
        " / ".join(_n(r["final_limit"]) for r in replicas.values()),
        " / ".join(_n(r["results_published"]) for r in replicas.values()),
    ]


V_HEADERS = ("scenario", "target", "subject", "measured", "required", "verdict", "note")


def _v_row(verdict: Verdict, passed: str, failed: str) -> list[str]:
    return [
        verdict.scenario,
        verdict.target,
        verdict.subject,
        verdict.measured,
        verdict.required,
        passed if verdict.passed else failed,
        verdict.note,
    ]


def _sections(bench: Bench) -> list[tuple[str, Sequence[str], list[list[str]]]]:
    figures, options = bench.figures, bench.options
    ms = f"{options.latency_ms:g} ms"
    sections: list[tuple[str, Sequence[str], list[list[str]]]] = []
    if "A" in figures:
        title = (
            f"A. overload ({ms}; backlog {options.overload_seconds:g} s worth of the bound; paced "
            f"{options.paced_seconds:g} s at 80% of it, and at 10% for 'unloaded')"
        )
        sections.append((title, A_HEADERS, [_a_row(r) for r in figures["A"]]))
    if "B" in figures:
        title = f"B. no overload ({ms}, no capacity nor rate limit)"
        sections.append((title, B_HEADERS, [_b_row(r) for r in figures["B"]]))
    if "C" in figures:
        title = f"C. fairness ({ms}, capacity 32; S: 100 invoices at 10/s)"
        sections.append((title, C_HEADERS, [_c_row(r) for r in figures["C"]]))
    if "D" in figures:
        title = f"D. three replicas ({ms}, rate limit 300/s, one API key)"
        sections.append((title, D_HEADERS, [_d_row(figures["D"])]))
    return sections


def print_tables(console: Console, bench: Bench) -> None:
    for title, headers, rows in _sections(bench):
        table = Table(title=title, title_justify="left")
        for header in headers:
            table.add_column(
                header, justify="left" if header in ("config", "contender", "run", "ledger") else "right"
            )
        for row in rows:
            table.add_row(*row)
        console.print(table)
    table = Table(title="targets", title_justify="left")
    for header in V_HEADERS:
        table.add_column(header)
    for verdict in bench.verdicts:
        table.add_row(*_v_row(verdict, "[green]PASS[/]", "[red]FAIL[/]"))
    console.print(table)


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def code_version() -> str:
    """The commit the service ran at, and which of its files differed from it (others may be
    changing them in this checkout meanwhile)."""

    def git(*arguments: str) -> str:
        try:
            done = subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=False)
        except OSError:
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    status = git("status", "--porcelain", "--", "service")
    changed = [line.split(maxsplit=1)[-1] for line in status.splitlines()]
    return f"commit {commit}" + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")


def markdown(bench: Bench, machine: str) -> str:
    options = bench.options
    parts = [
        f"Machine: {machine}. `{options.command}` on {bench.code}; emulator fixed "
        f"{options.latency_ms:g} ms, {PARTITIONS} partitions, MAX_IN_FLIGHT {MAX_IN_FLIGHT}.\n"
    ]
    for title, headers, rows in _sections(bench):
        parts.append(f"#### {title}\n")
        parts.append(_markdown_table(headers, rows) + "\n")
    parts.append("#### Targets\n")
    parts.append(
        _markdown_table(V_HEADERS, [_v_row(v, "**PASS**", "**FAIL**") for v in bench.verdicts]) + "\n"
    )
    if "C" in bench.figures:
        parts.append(
            "Fairness reaches as far as the read-ahead: an event another creditor sends is taken in "
            "turn only once it is read, and it is read only once fewer than MAX_EVENTS_HELD events are "
            "held.\n"
        )
    for note in bench.notes:
        parts.append(f"Note: {note}\n")
    return "\n".join(parts)


def write_json(path: Path, bench: Bench, machine: str) -> None:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    document = {
        "command": bench.options.command,
        "machine": machine,
        "code": bench.code,
        "latency_ms": bench.options.latency_ms,
        "quick": bench.options.quick,
        "scenarios": list(bench.options.scenarios),
        "figures": bench.figures,
        "verdicts": [dataclasses.asdict(v) for v in bench.verdicts],
        "notes": bench.notes,
        "service_logs": dataclasses.asdict(bench.logs),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(document), indent=2) + "\n")


def plot(path: Path, bench: Bench) -> bool:
    """Scenario A's first configuration (results/s and the limit over time, per contender) and, when
    run, scenario D (results/s and 429s/s, each replica's limit). False if there is nothing to show."""
    a_names = [name for name in CONTENDERS if f"a:{name}" in bench.traces]
    d_phase = bench.traces.get("d")
    columns = [column for column in ("a", "d") if (column == "a" and a_names) or (column == "d" and d_phase)]
    if not columns:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(columns), figsize=(8 * len(columns), 8), squeeze=False, sharex="col")
    for column, kind in enumerate(columns):
        top, bottom = axes[0][column], axes[1][column]
        if kind == "a":
            config = bench.figures.get("A", [{}])[0]
            bound = float(config.get("bound_here", config.get("bound", math.nan)))
            for name in a_names:
                phase = bench.traces[f"a:{name}"]
                colour = COLOURS.get(name, "tab:gray")
                results = phase.per_second_results()
                top.step(range(len(results)), results, where="post", color=colour, label=name)
                limited = phase.per_second_429()
                top.plot(
                    [p.t for p in phase.points], limited, color=colour, linestyle=":", linewidth=1,
                )  # fmt: skip
                bottom.step(
                    [p.t for p in phase.points], phase.series(LIMIT, phase.services[0]), where="post",
                    color=colour, label=name,
                )  # fmt: skip
            if math.isfinite(bound):
                top.axhline(bound, color="black", linestyle="--", linewidth=1, label=f"bound {bound:,.0f}/s")
            top.set_title(f"A. {config.get('amili', '')}\nresults/s (solid), emulator 429s/s (dotted)")
            bottom.set_title("A. concurrency limit (registrar_amili_concurrency_limit)")
        else:
            assert d_phase is not None
            results = d_phase.per_second_results()
            top.step(range(len(results)), results, where="post", color="tab:blue", label="results/s (all)")
            top.plot(
                [p.t for p in d_phase.points], d_phase.per_second_429(), color="tab:red", linestyle=":",
                label="emulator 429s/s",
            )  # fmt: skip
            rate_limit = 300.0
            top.axhline(rate_limit, color="black", linestyle="--", linewidth=1, label="rate limit 300/s")
            for index, name in enumerate(d_phase.services):
                bottom.step(
                    [p.t for p in d_phase.points], d_phase.series(LIMIT, name), where="post",
                    color=("tab:blue", "tab:green", "tab:purple")[index % 3], label=name,
                )  # fmt: skip
            top.set_title("D. three replicas, one group, rate limit 300/s\nresults/s and 429s/s")
            bottom.set_title("D. each replica's concurrency limit")
        top.set_ylabel("per second")
        bottom.set_ylabel("invoices at Amili at once (limit)")
        bottom.set_xlabel("seconds since the service started")
        for axis in (top, bottom):
            axis.grid(True, alpha=0.3)
            axis.legend(loc="upper right", fontsize="small")
        top.set_ylim(bottom=0)
        bottom.set_ylim(bottom=0)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


# main ---------------------------------------------------------------------------------------------


async def main_async(options: Options, console: Console) -> Bench:
    machine = machine_description()
    began = time.monotonic()
    with progress_display(console) as progress:
        progress.console.print(f"machine: {machine}; work dir {options.workdir}")
        progress.console.print(f"code: {code_version()}")
        async with broker("bench-adaptive-run", os.environ.get("KAFKA_BOOTSTRAP_SERVERS")) as kafka:
            bootstrap = kafka.bootstrap
            progress.console.print(f"broker {bootstrap}" + (" (ours)" if kafka.kafka else " (given)"))
            bench = Bench(options, bootstrap, progress, console)
            steps = {"a": bench.overload, "b": bench.no_overload, "c": bench.fairness, "d": bench.replicas}
            for scenario in options.scenarios:
                started = time.monotonic()
                try:
                    await steps[scenario]()
                except Exception as failure:  # one scenario failing leaves the others' figures
                    bench.notes.append(f"scenario {scenario.upper()} failed: {failure!r}")
                    progress.console.print(f"[red]scenario {scenario.upper()} failed: {failure!r}[/]")
                progress.console.print(f"scenario {scenario.upper()}: {time.monotonic() - started:.0f} s")
    print_tables(console, bench)
    logs = bench.logs
    levels = dict(sorted(logs.levels.items()))
    console.print(f"service logs: {logs.lines:,} lines, by level {levels} (in {options.workdir})")
    for message, count in sorted(logs.messages.items(), key=lambda item: -item[1])[:15]:
        console.print(f"  {count:6,} x {message}")
    if plot(options.plot, bench):
        console.print(f"plot: {options.plot}")
    for path in (options.workdir / "results.json", options.json):
        if path is not None:
            write_json(path, bench, machine)
            console.print(f"figures: {path}")
    console.print(f"\nruntime {time.monotonic() - began:.0f} s. Markdown:\n")
    console.print(markdown(bench, machine), markup=False, highlight=False, soft_wrap=True)
    return bench


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    return run_benchmark(functools.partial(main_async, options), width=220)


if __name__ == "__main__":
    sys.exit(main())
