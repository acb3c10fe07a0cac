"""Sustained throughput of the service against a real broker and the Amili emulator, side by side
with a hand-written sequential consumer and a FastStream subscriber. (A benchmark, not a test.)

The service runs once per in-flight limit of ``--max-in-flight`` (default 128,64: one run where the
machine is the bound, one where the window is), each its own contender: ``service`` for the first
(primary) limit, ``service@64`` for the others, shown as ``amili-registrar (128)``, ``(64)``...

For each latency profile (fixed 50 ms; heavy tail: median 50 ms, 99th percentile 500 ms) the
emulator runs in its own process; for each contender a fresh 6-partition topic gets a backlog of
``--invoices`` events first, then the contender runs as its own process until the backlog is done
(the two baselines stop after ``--baseline-seconds``: they would take many minutes). Every contender
publishes one result per event to its own topic, which the harness reads, so all are measured
alike:

- sustained registrations per second: between 10% and 90% of the events it finished;
- the ideal for its in-flight limit: in flight ÷ the emulator's mean latency;
- CPU seconds per registration of the contender's process (user + system, all threads) in the
  same window, the CPU-bound rate (its inverse) and peak RSS (the kernel's high-water mark);
- time from event to result (p50, p99), measured in a second, short run of the same contender on
  a fresh topic fed at a steady ``--paced-load`` share of its sustained rate (a backlog would only
  measure how long events waited in it).

A progress display runs meanwhile; at the end, tables, the targets' verdicts (for each service
contender; the heavy tail's also say how many registrations per second the machine could carry at
that run's CPU per registration of the service, emulator, broker and harness together), and a PNG
plot of throughput over time.

    .venv/bin/python -m bench.throughput                 # both profiles, about 10 minutes
    .venv/bin/python -m bench.throughput --quick         # a smoke run, about 2.5 minutes

Uses ``KAFKA_BOOTSTRAP_SERVERS`` when set, else starts a local broker (``devkit.localkafka``) and
stops it at the end. Diagnostics: ``--trace-service`` (``bench/trace_service.py``), ``--ledger-dir``,
``--switch-interval``, ``--profiler`` (then ``python -m bench.hotspots``). The figures and what they
mean: ``docs/performance.md``.
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
import platform
import shlex
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from bench import report
from bench.measure import (
    MAIN_THREAD,
    ProcessSampler,
    Rates,
    Result,
    ResultCollector,
    Sample,
    cpu_in_window,
    machine_busy_share,
    peak_rss_bytes,
    per_second,
    percentile,
    sustained_window,
)
from bench.workload import EventFactory, load_templates, produce_backlog, produce_paced
from devkit.emulator.settings import DEMO_API_KEY
from devkit.harness import (
    Child,
    Emulator,
    Topics,
    broker,
    clean_environment,
    create_run_topics,
    emulator,
    service_env,
)
from devkit.localkafka import free_port

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 6
_Z99 = 2.3263478740408408  # the standard normal's 99th percentile
EMULATOR = "emulator"
BROKER = "broker"
HARNESS = "harness"


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    env: Mapping[str, str]
    mean_latency_ms: float


def fixed_profile(milliseconds: float) -> Profile:
    return Profile(
        "fixed",
        f"fixed {milliseconds:g} ms",
        {"AMILI_EMULATOR_LATENCY_MS": f"{milliseconds:g}"},
        milliseconds,
    )


def heavy_profile(median_ms: float, p99_ms: float) -> Profile:
    """Log-normal latency with that median and 99th percentile; its mean is median·e^(σ²/2)."""
    sigma = math.log(p99_ms / median_ms) / _Z99
    mean = median_ms * math.exp(sigma**2 / 2)
    return Profile(
        "heavy",
        f"heavy tail: median {median_ms:g} ms, p99 {p99_ms:g} ms (mean {mean:.1f} ms)",
        {
            "AMILI_EMULATOR_LATENCY_MEDIAN_MS": f"{median_ms:g}",
            "AMILI_EMULATOR_LATENCY_P99_MS": f"{p99_ms:g}",
        },
        mean,
    )


@dataclass(frozen=True)
class Options:
    invoices: int
    profiles: tuple[str, ...]
    contenders: tuple[str, ...]
    max_in_flight: tuple[int, ...]  # one service contender each; the first is the primary one
    faststream_workers: int
    baseline_seconds: float
    service_max_seconds: float
    paced_seconds: float
    paced_load: float
    fixed_ms: float
    median_ms: float
    p99_ms: float
    plot: Path
    markdown: Path | None
    workdir: Path
    profiler: str
    ledger_dir: Path
    switch_interval: float | None
    trace_service: bool
    command: str
    transactions: bool = False
    service_env: tuple[tuple[str, str], ...] = ()  # added to every service's environment, last


def _in_flight_limits(text: str) -> tuple[int, ...]:
    """``--max-in-flight``: a comma-separated list of distinct positive integers."""
    try:
        limits = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not limits or any(limit < 1 for limit in limits):
        raise argparse.ArgumentTypeError(f"in-flight limits must be positive integers: {text!r}")
    if len(set(limits)) != len(limits):
        raise argparse.ArgumentTypeError(f"an in-flight limit is given twice: {text!r}")
    return limits


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--invoices", type=int, help="backlog per contender (default 20000; --quick 2000)")
    parser.add_argument("--profiles", default="fixed,heavy", help="latency profiles to run: fixed,heavy")
    parser.add_argument(
        "--contenders",
        default="service,sequential,faststream",
        help="contenders to run: service,sequential,faststream",
    )
    parser.add_argument(
        "--max-in-flight",
        type=_in_flight_limits,
        default=(128, 64),
        help="the service's MAX_IN_FLIGHT, comma separated: one service contender each, the first the "
        "primary one ('service'; the others 'service@N') (default 128,64)",
    )
    parser.add_argument(
        "--faststream-workers", type=int, default=PARTITIONS, help="max_workers of the FastStream baseline"
    )
    parser.add_argument(
        "--baseline-seconds", type=float, help="time box of each baseline run (default 60; --quick 15)"
    )
    parser.add_argument("--service-max-seconds", type=float, default=600, help="safety cap of a service run")
    parser.add_argument(
        "--paced-seconds", type=float, help="length of each latency run (default 15; --quick 5)"
    )
    parser.add_argument(
        "--paced-load", type=float, default=0.5, help="rate of the latency run, as a share of the sustained"
    )
    parser.add_argument("--fixed-ms", type=float, default=50.0, help="latency of the fixed profile")
    parser.add_argument("--median-ms", type=float, default=50.0, help="median of the heavy-tailed profile")
    parser.add_argument(
        "--p99-ms", type=float, default=500.0, help="99th percentile of the heavy-tailed profile"
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "performance.png", help="PNG to write")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument("--workdir", type=Path, help="logs, ledgers and results.json (default: a temp dir)")
    parser.add_argument(
        "--profiler",
        choices=("none", "pyinstrument", "cprofile"),
        default="none",
        help="run the service under a profiler (its report lands in the workdir; slows it down)",
    )
    parser.add_argument(
        "--ledger-dir",
        type=Path,
        help="where the service's SQLite ledgers go (default: the work dir; /dev/shm takes fsync out)",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="diagnostic: run the service with sys.setswitchinterval(this) (Python's default: 0.005)",
    )
    parser.add_argument(
        "--trace-service",
        action="store_true",
        help="diagnostic: time the steps of each event in the service (bench/trace_service.py)",
    )
    parser.add_argument(
        "--transactions",
        action="store_true",
        help="also run the primary service contender with KAFKA_TRANSACTIONS=true, right after it; "
        "then every contender's results are read with read_committed and timed when read",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every service contender, over the run's own (repeatable); to compare a "
        "setting with its default",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 2 minutes")
    args = parser.parse_args(argv)
    settings: list[tuple[str, str]] = []
    for setting in args.service_env:
        name, equals, value = setting.partition("=")
        if not equals or not name:
            parser.error(f"--service-env: NAME=VALUE expected (got {setting!r})")
        settings.append((name, value))
    quick = bool(args.quick)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return Options(
        invoices=args.invoices or (2000 if quick else 20000),
        profiles=tuple(p for p in args.profiles.split(",") if p),
        contenders=tuple(c for c in args.contenders.split(",") if c),
        max_in_flight=args.max_in_flight,
        faststream_workers=args.faststream_workers,
        baseline_seconds=args.baseline_seconds or (15.0 if quick else 60.0),
        service_max_seconds=args.service_max_seconds,
        paced_seconds=args.paced_seconds or (5.0 if quick else 15.0),
        paced_load=args.paced_load,
        fixed_ms=args.fixed_ms,
        median_ms=args.median_ms,
        p99_ms=args.p99_ms,
        plot=args.plot,
        markdown=args.markdown,
        workdir=workdir.resolve(),
        profiler=args.profiler,
        ledger_dir=(args.ledger_dir or workdir).resolve(),
        switch_interval=args.switch_interval,
        trace_service=args.trace_service,
        transactions=args.transactions,
        service_env=tuple(settings),
        command=shlex.join(
            ["python", "-m", "bench.throughput", *(argv if argv is not None else sys.argv[1:])]
        ),
    )


def profile_emulator(profile: Profile, workdir: Path) -> contextlib.AbstractAsyncContextManager[Emulator]:
    """The emulator in its own process, with the profile's latency, for as long as the context."""
    quiet = {"AMILI_EMULATOR_FAULT_SEED": "7", "AMILI_EMULATOR_ACCESS_LOG": "false"}
    return emulator({**profile.env, **quiet}, workdir / f"emulator-{profile.name}.log")


@dataclass(frozen=True)
class Contender:
    name: str  # also its process's name for the sampler: service, service@64, service+tx, sequential...
    in_flight: int
    time_box: float | None  # seconds, or None: until the backlog is done

    @property
    def transactions(self) -> bool:
        return self.name.endswith(report.TRANSACTIONAL)

    @property
    def is_service(self) -> bool:
        return report.is_service(self.name)

    @property
    def label(self) -> str:
        return report.label(self.name, self.in_flight)

    @property
    def slug(self) -> str:
        """The name as it may go into a topic name (no '@')."""
        return self.name.replace("@", "-").replace("+", "-")

    @property
    def code(self) -> str:
        """A short tag for invoice numbers, distinct per contender (the emulator refuses a number it
        has seen, and all contenders of a profile share one emulator)."""
        kind, _, limit = self.name.partition("@")  # SER, SER64, SEQ, FAS, SERTX
        limit = limit.removesuffix(report.TRANSACTIONAL)
        return (kind[:3] + limit + ("TX" if self.transactions else "")).upper()

    def argv(self, topics: Topics, bootstrap: str, url: str, stats: Path, options: Options) -> list[str]:
        if self.is_service:
            if options.profiler == "pyinstrument":
                profile = stats.with_suffix(".pyisession")
                return [
                    sys.executable,
                    "-m",
                    "pyinstrument",
                    "-r",
                    "pyisession",
                    "-o",
                    str(profile),
                    "-m",
                    "service",
                    "run",
                ]
            if options.profiler == "cprofile":
                return [
                    sys.executable,
                    "-m",
                    "cProfile",
                    "-o",
                    str(stats.with_suffix(".prof")),
                    "-m",
                    "service",
                    "run",
                ]
            if options.trace_service:
                return [sys.executable, "-m", "bench.trace_service"]
            if options.switch_interval is not None:  # a diagnostic: the GIL's hand-over interval
                prelude = (
                    f"import sys; sys.setswitchinterval({options.switch_interval!r}); "
                    "from service.cli import main; sys.exit(main(['run']))"
                )
                return [sys.executable, "-c", prelude]
            return [sys.executable, "-m", "service", "run"]
        module = (
            "bench.sequential_consumer" if self.name == report.SEQUENTIAL else "bench.faststream_consumer"
        )
        return [
            sys.executable,
            "-m",
            module,
            "--bootstrap",
            bootstrap,
            "--topic",
            topics.inbound,
            "--results",
            topics.results,
            "--group",
            topics.group,
            "--amili-url",
            url,
            "--api-key",
            DEMO_API_KEY,
            "--workers",
            str(self.in_flight),
            "--stats",
            str(stats),
        ]

    def env(
        self,
        topics: Topics,
        bootstrap: str,
        url: str,
        ledger_dir: Path,
        http_port: int,
        trace: Path | None = None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> dict[str, str]:
        if not self.is_service:
            return clean_environment()
        tuning = {"HTTP_PORT": str(http_port), "SHUTDOWN_GRACE_SECONDS": "5"}
        if trace is not None:
            tuning["BENCH_TRACE_FILE"] = str(trace)
        tuning["KAFKA_TRANSACTIONS"] = "true" if self.transactions else "false"
        return service_env(
            bootstrap,
            topics,
            url,
            ledger_url=f"sqlite:///{ledger_dir / f'ledger-{topics.inbound}.db'}",
            max_in_flight=self.in_flight,
            tuning=tuning | dict(extra),
        )


async def service_mean_latency_ms(http_port: int) -> float:
    """The mean of the service's successful Amili registration calls, from its /metrics."""
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"http://127.0.0.1:{http_port}/metrics")).text
    except httpx.HTTPError:
        return math.nan
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "registrar_amili_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("endpoint") != "register" or sample.labels.get("status_class") != "2xx":
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return total / count * 1000 if count else math.nan


def baseline_mean_latency_ms(stats: Path) -> float:
    try:
        document = json.loads(stats.read_text())
        return float(document["http_seconds"]) / int(document["http_calls"]) * 1000
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return math.nan


# the benchmark ------------------------------------------------------------------------------------


def paced_rate(earlier: Sequence[report.Run], run: report.Run, share: float) -> float:
    """The latency run's rate: ``share`` of the contender's sustained rate; for the transactional
    contender, the rate its counterpart without transactions was paced at under the same profile,
    so that the two p99s the transactions' target compares are taken at the same load (a
    transactional run that happened to sustain more would otherwise be paced harder)."""
    if run.contender.endswith(report.TRANSACTIONAL):
        counterpart = run.contender.removesuffix(report.TRANSACTIONAL)
        for other in earlier:
            if other.profile == run.profile and other.contender == counterpart and other.paced is not None:
                return other.paced.rate
    return max(1.0, run.sustained * share)


class Bench:
    def __init__(self, options: Options, bootstrap: str, broker_pid: int | None, progress: Progress) -> None:
        self.options = options
        self.bootstrap = bootstrap
        self.broker_pid = broker_pid
        self.progress = progress
        self.templates = load_templates()
        self.run_id = uuid.uuid4().hex[:6]
        self.runs: list[report.Run] = []

    def say(self, message: str) -> None:
        self.progress.console.print(message)

    def topics(self, profile: Profile, contender: Contender, phase: str) -> Topics:
        base = f"bench-{self.run_id}-{profile.name}-{contender.slug}-{phase}"
        return Topics(f"{base}-invoices", f"{base}-results", f"{base}-dead-letters", f"{base}-group")

    async def watch(
        self,
        task: TaskID,
        child: Child,
        collector: ResultCollector,
        sampler: ProcessSampler,
        done: Callable[[], bool],
        baseline: int = 0,
    ) -> None:
        """Update the progress display until ``done()`` or the child exits."""
        rates = Rates()
        last_cpu: tuple[float, float] | None = None
        while not done():
            if not child.running:
                raise RuntimeError(f"{child.name} exited early (code {child.returncode}):\n{child.tail()}")
            await asyncio.sleep(0.5)
            count = collector.count - baseline
            sample = sampler.latest()
            cpu = rss = ""
            if sample is not None and child.name in sample.cpu:
                if last_cpu is not None and sample.time > last_cpu[0]:
                    cpu = f"CPU {(sample.cpu[child.name] - last_cpu[1]) / (sample.time - last_cpu[0]):4.0%}"
                last_cpu = (sample.time, sample.cpu[child.name])
                rss = f"RSS {sample.rss.get(child.name, 0) / 2**20:4.0f} MB"
            self.progress.update(task, completed=count, status=f"{rates.add(count):8,.0f}/s  {cpu}  {rss}")

    async def run_contender(self, profile: Profile, contender: Contender, amili: Emulator) -> None:
        options = self.options
        url = amili.url
        label = f"{profile.name} · {contender.label}"
        topics = self.topics(profile, contender, "backlog")
        await create_run_topics(self.bootstrap, topics, PARTITIONS)
        produce_task = self.progress.add_task(
            f"{label}: producing the backlog", total=options.invoices, status=""
        )
        factory = EventFactory(self.templates, f"B{self.run_id}{profile.name[0]}".upper() + contender.code)
        await produce_backlog(
            self.bootstrap,
            topics.inbound,
            factory,
            options.invoices,
            lambda n: self.progress.advance(produce_task, n),
        )
        self.progress.remove_task(produce_task)

        http_port = free_port()
        stats = options.workdir / f"{topics.inbound}.stats.json"
        trace = (
            options.workdir / f"{topics.inbound}.trace.json"
            if options.trace_service and contender.is_service
            else None
        )
        box = f" (time box {contender.time_box:.0f} s)" if contender.time_box else ""
        task = self.progress.add_task(f"{label}: backlog{box}", total=options.invoices, status="starting")
        async with contextlib.AsyncExitStack() as stack:
            collector = ResultCollector(
                self.bootstrap, topics.results, PARTITIONS, read_committed=options.transactions
            )
            await collector.start()
            stack.push_async_callback(collector.stop)
            started = time.time()
            child = Child.start(
                contender.name,
                contender.argv(topics, self.bootstrap, url, stats, options),
                contender.env(
                    topics, self.bootstrap, url, options.ledger_dir, http_port, trace, options.service_env
                ),
                options.workdir / f"{topics.inbound}.log",
                cwd=ROOT,
            )
            stack.push_async_callback(asyncio.sleep, 0.5)  # the last results, after the child stopped
            stop_signal = signal.SIGINT if options.profiler != "none" else signal.SIGTERM
            stack.push_async_callback(child.stop, stop_signal, 120.0)
            processes = {contender.name: child.pid, EMULATOR: amili.child.pid, HARNESS: os.getpid()}
            if self.broker_pid is not None:
                processes[BROKER] = self.broker_pid
            sampler = ProcessSampler(processes)
            await sampler.start()
            stack.push_async_callback(sampler.stop)
            limit = contender.time_box or options.service_max_seconds
            await self.watch(
                task,
                child,
                collector,
                sampler,
                lambda: collector.count >= options.invoices or time.time() - started >= limit,
            )
            run_seconds = time.time() - started  # until the stop request
            hwm = peak_rss_bytes(child.pid) or 0
            latency = await service_mean_latency_ms(http_port) if contender.is_service else math.nan
        self.progress.remove_task(task)
        if not contender.is_service:
            latency = baseline_mean_latency_ms(stats)
        run = self.summarise(profile, contender, collector, sampler, started, run_seconds, hwm, latency)
        if trace is not None:
            run.trace = read_trace(trace)
        self.runs.append(run)
        self.say(
            f"[bold]{label}[/]: {run.done:,} done, sustained {run.sustained:,.1f}/s "
            f"({run.sustained / run.ideal:.0%} of ideal {run.ideal:,.0f}/s), "
            f"{run.cpu_ms:.2f} ms CPU/registration, peak RSS {run.peak_rss_mb:.0f} MB"
        )
        if run.done:
            run.paced = await self.run_paced(
                profile, contender, url, paced_rate(self.runs, run, options.paced_load)
            )
            self.say(
                f"[bold]{label}[/]: at {run.paced.rate:,.0f}/s event→result p50 {run.paced.p50_ms:,.0f} ms, "
                f"p99 {run.paced.p99_ms:,.0f} ms ({run.paced.received:,}/{run.paced.sent:,} results)"
            )

    def stamp(self, result: Result) -> float:
        """When a result counts as out: its event's ``time``, or, comparing transactions with their
        absence, when the harness read it (a transaction's results are visible only once it commits;
        the same clock for every contender of the run)."""
        return result.seen if self.options.transactions else result.time

    def summarise(
        self,
        profile: Profile,
        contender: Contender,
        collector: ResultCollector,
        sampler: ProcessSampler,
        started: float,
        run_seconds: float,
        hwm: int,
        latency: float,
    ) -> report.Run:
        results = list(collector.results.values())
        times = [self.stamp(result) for result in results]
        outcomes = dict(Counter(result.outcome for result in results))
        window = sustained_window(times)
        samples = sampler.samples
        if window is None:
            sustained = window_seconds = math.nan
            per = dict.fromkeys((contender.name, EMULATOR, BROKER, HARNESS), math.nan)
            main_thread = math.nan
            busy = other = math.nan
        else:
            sustained, window_seconds = window.rate, window.seconds
            per = {
                name: cpu_in_window(samples, window, name) / window.results * 1000
                for name in (contender.name, EMULATOR, BROKER, HARNESS)
            }
            main_thread = cpu_in_window(samples, window, contender.name + MAIN_THREAD) / window.results * 1000
            busy = machine_busy_share(samples, window)
            cores = psutil.cpu_count() or 1
            ours = sum(0.0 if math.isnan(value) else value for value in per.values()) / 1000 * window.results
            other = busy - ours / (window.seconds * cores)
        return report.Run(
            contender=contender.name,
            profile=profile.name,
            in_flight=contender.in_flight,
            mean_latency_ms=profile.mean_latency_ms,
            backlog=self.options.invoices,
            done=len(results),
            outcomes=outcomes,
            duplicates=collector.duplicates,
            time_boxed=contender.time_box is not None and len(results) < self.options.invoices,
            run_seconds=run_seconds,
            sustained=sustained,
            window_seconds=window_seconds,
            cpu_ms=per[contender.name],
            main_thread_cpu_ms=main_thread,
            emulator_cpu_ms=per[EMULATOR],
            broker_cpu_ms=per[BROKER] if self.broker_pid is not None else math.nan,
            harness_cpu_ms=per[HARNESS],
            machine_busy=busy,
            other_busy=other,
            peak_rss_mb=max(hwm, sampler.peak_rss(contender.name)) / 2**20,
            observed_latency_ms=latency,
            buckets=per_second(times, started),
            rss_mb=rss_each_second(samples, contender.name, started),
        )

    async def run_paced(self, profile: Profile, contender: Contender, url: str, rate: float) -> report.Paced:
        """Latency at a steady rate: the contender on a fresh topic, a few events to warm it up, then
        ``rate`` events per second for ``--paced-seconds``."""
        options = self.options
        label = f"{profile.name} · {contender.label}"
        topics = self.topics(profile, contender, "paced")
        await create_run_topics(self.bootstrap, topics, PARTITIONS)
        stats = options.workdir / f"{topics.inbound}.stats.json"
        factory = EventFactory(self.templates, f"P{self.run_id}{profile.name[0]}".upper() + contender.code)
        total = max(1, round(rate * options.paced_seconds))
        task = self.progress.add_task(f"{label}: latency at {rate:,.0f}/s", total=total, status="warming up")
        sent: dict[str, float] = {}
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.progress.remove_task, task)
            collector = ResultCollector(
                self.bootstrap, topics.results, PARTITIONS, read_committed=options.transactions
            )
            await collector.start()
            stack.push_async_callback(collector.stop)
            child = Child.start(
                contender.name,
                contender.argv(
                    topics,
                    self.bootstrap,
                    url,
                    stats,
                    dataclasses.replace(options, profiler="none", trace_service=False),
                ),
                contender.env(
                    topics, self.bootstrap, url, options.ledger_dir, free_port(), None, options.service_env
                ),
                options.workdir / f"{topics.inbound}.log",
                cwd=ROOT,
            )
            stack.push_async_callback(child.stop)
            sampler = ProcessSampler({contender.name: child.pid})
            await sampler.start()
            stack.push_async_callback(sampler.stop)
            warm = await produce_backlog(self.bootstrap, topics.inbound, factory, 10, lambda _: None)
            deadline = time.monotonic() + 60
            while collector.count < len(warm):
                if not child.running or time.monotonic() > deadline:
                    raise RuntimeError(f"{child.name} did not warm up:\n{child.tail()}")
                await asyncio.sleep(0.1)

            async def feed() -> None:
                sent.update(
                    await produce_paced(
                        self.bootstrap, topics.inbound, factory, rate, options.paced_seconds, lambda _: None
                    )
                )

            feeding = asyncio.create_task(feed())
            stack.push_async_callback(_finish, feeding)
            finish_by = time.monotonic() + options.paced_seconds + 30
            await self.watch(
                task,
                child,
                collector,
                sampler,
                lambda: (
                    (feeding.done() and collector.count >= len(warm) + len(sent))
                    or time.monotonic() > finish_by
                ),
                baseline=len(warm),
            )
            await feeding
        answered = [
            (collector.results[event_id], moment)
            for event_id, moment in sent.items()
            if event_id in collector.results
        ]
        latencies = [(self.stamp(result) - moment) * 1000 for result, moment in answered]
        if self.options.transactions:
            # Where a result's time goes: until the service made it (the event's ``time``), and from
            # there until a read_committed reader saw it (for a transaction, its wait and commit).
            made = [(result.time - moment) * 1000 for result, moment in answered]
            shown = [(result.seen - result.time) * 1000 for result, _ in answered]
            self.say(
                f"{contender.label}: event→made p50 {percentile(made, 0.5):,.0f} / p99 "
                f"{percentile(made, 0.99):,.0f} ms; made→read p50 {percentile(shown, 0.5):,.0f} / "
                f"p99 {percentile(shown, 0.99):,.0f} ms"
            )
        return report.Paced(
            rate=rate,
            sent=len(sent),
            received=len(latencies),
            p50_ms=percentile(latencies, 0.5),
            p99_ms=percentile(latencies, 0.99),
            max_ms=max(latencies, default=math.nan),
        )

    async def run(self, profiles: list[Profile], contenders: list[Contender]) -> None:
        for profile in profiles:
            self.say(f"[bold cyan]{profile.title}[/]: emulator in its own process")
            async with profile_emulator(profile, self.options.workdir) as amili:
                for contender in contenders:
                    await self.run_contender(profile, contender, amili)


def read_trace(path: Path) -> dict[str, list[float]]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(step): [float(count), float(seconds)] for step, (count, seconds) in document.items()}


def rss_each_second(samples: list[Sample], name: str, since: float) -> list[float]:
    """The process's RSS (MB) at each whole second since ``since`` (the last sample before it)."""
    series: list[float] = []
    for sample in samples:
        index = int(sample.time - since)
        if index < 0 or name not in sample.rss:
            continue
        while len(series) <= index:
            series.append(sample.rss[name] / 2**20)
        series[index] = sample.rss[name] / 2**20
    return series


async def _finish(task: asyncio.Task[None]) -> None:
    """Cancel a task that may still run and wait for it."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def progress_display(console: Console) -> Progress:
    """The live display of a benchmark: a line per task with its count, status and time."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )


def run_benchmark(work: Callable[[Console], Coroutine[Any, Any, object]], width: int) -> int:
    """Run ``work`` with a console (``width`` columns when the output is no terminal); 130 when
    interrupted."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=width)
    try:
        asyncio.run(work(console))
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    return 0


def machine_description() -> str:
    memory = psutil.virtual_memory().total / 2**30
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{psutil.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, Python {platform.python_version()}"


async def main_async(options: Options, console: Console) -> list[report.Run]:
    all_profiles = {
        "fixed": fixed_profile(options.fixed_ms),
        "heavy": heavy_profile(options.median_ms, options.p99_ms),
    }
    profiles = [all_profiles[name] for name in options.profiles]
    all_contenders = {
        # the service once per in-flight limit, the primary one first
        report.SERVICE: [
            Contender(name, limit, None)
            for index, limit in enumerate(options.max_in_flight)
            for name in (
                [report.service_contender(limit, primary=index == 0)]
                + ([report.SERVICE + report.TRANSACTIONAL] if options.transactions and index == 0 else [])
            )
        ],
        report.SEQUENTIAL: [Contender(report.SEQUENTIAL, 1, options.baseline_seconds)],
        # NACK_ON_ERROR: one consumer per worker, so no more in flight than partitions
        report.FASTSTREAM: [
            Contender(
                report.FASTSTREAM, min(options.faststream_workers, PARTITIONS), options.baseline_seconds
            )
        ],
    }
    contenders = [contender for name in options.contenders for contender in all_contenders[name]]
    with progress_display(console) as progress:
        progress.console.print(f"machine: {machine_description()}; work dir {options.workdir}")
        start = progress.add_task("starting the broker", total=None, status="")
        async with broker("bench-throughput", os.environ.get("KAFKA_BOOTSTRAP_SERVERS")) as kafka:
            bootstrap, broker_pid = kafka.bootstrap, kafka.pid
            progress.remove_task(start)
            progress.console.print(f"broker {bootstrap}" + (" (ours)" if broker_pid else " (given)"))
            bench = Bench(options, bootstrap, broker_pid, progress)
            try:
                await bench.run(profiles, contenders)
            finally:
                runs = bench.runs
    settings = report.Settings(
        command=options.command,
        invoices=options.invoices,
        partitions=PARTITIONS,
        max_in_flight=list(options.max_in_flight),
        faststream_workers=options.faststream_workers,
        baseline_seconds=options.baseline_seconds,
        paced_seconds=options.paced_seconds,
        paced_load=options.paced_load,
        cores=psutil.cpu_count() or 1,
        machine=machine_description(),
        profiles={p.name: p.title for p in profiles},
    )
    report.print_tables(console, runs, settings)
    report.plot(options.plot, runs, settings.profiles)
    report.write_json(options.workdir / "results.json", runs, settings)
    text = report.markdown(runs, settings)
    (options.workdir / "report.md").write_text(text)
    if options.markdown is not None:
        options.markdown.write_text(text)
    console.print(
        f"plot: {options.plot}; figures: {options.workdir / 'results.json'}, {options.workdir / 'report.md'}"
    )
    return runs


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    return run_benchmark(functools.partial(main_async, options), width=200)


if __name__ == "__main__":
    sys.exit(main())
