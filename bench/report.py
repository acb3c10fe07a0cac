"""The figures of a throughput run, the targets of the issue, and how they are shown: rich tables on
the terminal, the same tables in Markdown, a PNG plot of throughput over time, and JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SERVICE = "service"
TRANSACTIONAL = "+tx"
"""The suffix of a service contender run with KAFKA_TRANSACTIONS=true (``service+tx``)."""
SEQUENTIAL = "sequential"
FASTSTREAM = "faststream"
LABELS = {
    SERVICE: "amili-registrar",
    SEQUENTIAL: "sequential aiokafka + httpx",
    FASTSTREAM: "FastStream max_workers",
}
COLOURS = {SERVICE: "tab:blue", SEQUENTIAL: "tab:red", FASTSTREAM: "tab:green"}
# the service at in-flight limits other than the primary one, in the order they ran
_MORE_SERVICE_COLOURS = ("tab:purple", "tab:cyan", "tab:orange", "tab:olive", "tab:brown", "tab:pink")


def service_contender(in_flight: int, primary: bool) -> str:
    """The contender name of the service at that in-flight limit: ``service`` for the primary one
    (the first ``--max-in-flight``), ``service@64`` for the others."""
    return SERVICE if primary else f"{SERVICE}@{in_flight}"


def is_service(contender: str) -> bool:
    name = contender.removesuffix(TRANSACTIONAL)
    return name == SERVICE or name.startswith(f"{SERVICE}@")


def label(contender: str, in_flight: int) -> str:
    """How a contender is shown; the service with its in-flight limit, e.g. ``amili-registrar (64)``."""
    if is_service(contender):
        transactions = ", transactions" if contender.endswith(TRANSACTIONAL) else ""
        return f"{LABELS[SERVICE]} ({in_flight}{transactions})"
    return LABELS.get(contender, contender)


@dataclass
class Paced:
    """Latency at a steady rate: events produced at ``rate`` per second, each stamped with its send
    time; time from event to result = result ``time`` minus event ``time``."""

    rate: float
    sent: int
    received: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class Run:
    """One contender under one latency profile."""

    contender: str
    profile: str
    in_flight: int
    mean_latency_ms: float  # the emulator's configured mean latency
    backlog: int  # events produced before the contender started
    done: int  # events with a result when the run ended
    outcomes: dict[str, int]
    duplicates: int
    time_boxed: bool
    run_seconds: float
    sustained: float  # results per second between 10% and 90% of ``done``
    window_seconds: float
    cpu_ms: float  # contender CPU per registration in that window
    main_thread_cpu_ms: float  # of which its main thread (the event loop)
    emulator_cpu_ms: float
    broker_cpu_ms: float  # nan when the broker is not ours
    harness_cpu_ms: float
    machine_busy: float  # share of all cores busy in that window
    other_busy: float  # share of all cores busy with processes other than the four measured
    peak_rss_mb: float
    observed_latency_ms: float  # mean Amili call as the contender saw it (nan if unknown)
    buckets: list[int] = field(default_factory=list)  # results per second since the start
    rss_mb: list[float] = field(default_factory=list)  # the contender's RSS, each second since the start
    paced: Paced | None = None
    trace: dict[str, list[float]] = field(default_factory=dict)  # step → [calls, seconds] (diagnostic)

    @property
    def label(self) -> str:
        return label(self.contender, self.in_flight)

    @property
    def ideal(self) -> float:
        return self.in_flight / (self.mean_latency_ms / 1000)

    @property
    def cpu_bound(self) -> float:
        return 1000 / self.cpu_ms if self.cpu_ms > 0 else math.inf

    def machine_capacity(self, cores: int) -> float:
        """Registrations per second the whole machine could carry at this run's CPU per registration:
        all cores' CPU seconds per second ÷ (contender + emulator + broker + harness CPU per
        registration); the broker's share is left out when the broker is not ours (nan)."""
        parts = (self.cpu_ms, self.emulator_cpu_ms, self.broker_cpu_ms, self.harness_cpu_ms)
        total = sum(part for part in parts if not math.isnan(part))
        if math.isnan(self.cpu_ms) or total <= 0:
            return math.nan
        return cores * 1000 / total


@dataclass(frozen=True)
class Verdict:
    target: str
    profile: str
    contender: str
    in_flight: int
    measured: str
    required: str
    passed: bool
    note: str = ""


@dataclass
class Settings:
    """What the run was asked to do (for the report)."""

    command: str
    invoices: int
    partitions: int
    max_in_flight: list[int]  # the service's, one contender each; the first is the primary one
    faststream_workers: int
    baseline_seconds: float
    paced_seconds: float
    paced_load: float
    cores: int
    machine: str
    profiles: dict[str, str]


def _machine_note(run: Run, cores: int) -> str:
    """Whether the run's ideal is within what the machine can carry (see ``Run.machine_capacity``)."""
    capacity = run.machine_capacity(cores)
    if math.isnan(capacity):
        return "machine capacity unknown (no sustained window)"
    reach = "within" if run.ideal <= capacity else "beyond"
    broker = "" if not math.isnan(run.broker_cpu_ms) else ", broker not measured"
    per_registration = 1000 * cores / capacity
    return (
        f"machine can carry ≈ {capacity:,.0f}/s ({cores} cores ÷ {per_registration:.2f} ms CPU/reg{broker}): "
        f"ideal {reach} it"
    )


def _service_verdicts(run: Run, sequential: Run | None, cores: int) -> list[Verdict]:
    """The targets for one service contender (one in-flight limit) in one profile."""

    def verdict(target: str, measured: str, required: str, passed: bool, note: str = "") -> Verdict:
        return Verdict(target, run.profile, run.contender, run.in_flight, measured, required, passed, note)

    result: list[Verdict] = []
    if run.profile == "fixed":
        bound = min(run.ideal, run.cpu_bound)
        result.append(
            verdict(
                "≥ 80% of min(ideal, CPU-bound rate)",
                f"{run.sustained:,.0f}/s = {run.sustained / bound:.0%} of {bound:,.0f}/s",
                f"≥ {0.8 * bound:,.0f}/s",
                run.sustained >= 0.8 * bound,
            )
        )
        if sequential is not None and sequential.sustained > 0:
            times = run.sustained / sequential.sustained
            result.append(
                verdict(
                    "≥ 10 times the sequential consumer",
                    f"{times:,.1f} times ({sequential.sustained:,.1f}/s)",
                    f"≥ {10 * sequential.sustained:,.0f}/s",
                    times >= 10,
                )
            )
    # The issue sets the CPU target at fixed latency; with the heavy tail, answers come back spread
    # out rather than together, so each wake-up of every process serves fewer events.
    cpu_target = "≤ 1 ms service CPU per registration"
    result.append(
        verdict(
            cpu_target if run.profile == "fixed" else f"(diagnostic) {cpu_target}",
            f"{run.cpu_ms:.2f} ms",
            "≤ 1.00 ms",
            run.cpu_ms <= 1.0,
        )
    )
    result.append(
        verdict("peak RSS < 200 MB", f"{run.peak_rss_mb:.0f} MB", "< 200 MB", run.peak_rss_mb < 200)
    )
    if run.profile == "heavy":
        result.append(
            verdict(
                "≥ 70% of the ideal (heavy tail)",
                f"{run.sustained:,.0f}/s = {run.sustained / run.ideal:.0%} of {run.ideal:,.0f}/s",
                f"≥ {0.7 * run.ideal:,.0f}/s",
                run.sustained >= 0.7 * run.ideal,
                _machine_note(run, cores),
            )
        )
        bound = min(run.ideal, run.cpu_bound)
        result.append(
            verdict(
                "(diagnostic) ≥ 70% of min(ideal, CPU-bound rate)",
                f"{run.sustained / bound:.0%} of {bound:,.0f}/s",
                f"≥ {0.7 * bound:,.0f}/s",
                run.sustained >= 0.7 * bound,
            )
        )
    return result


TRANSACTION_INTERVAL_MS = 100.0
"""KAFKA_TRANSACTION_INTERVAL_MS as the benchmark runs it (the default)."""


def _transaction_verdicts(plain: Run, transactional: Run) -> list[Verdict]:
    """Transactions against the same service without them, side by side in one run."""

    def verdict(target: str, measured: str, required: str, passed: bool) -> Verdict:
        run = transactional
        return Verdict(target, run.profile, run.contender, run.in_flight, measured, required, passed)

    share = transactional.sustained / plain.sustained if plain.sustained > 0 else math.nan
    result = [
        verdict(
            "transactions: ≥ 85% of the throughput without",
            f"{transactional.sustained:,.0f}/s = {share:.0%} of {plain.sustained:,.0f}/s",
            f"≥ {0.85 * plain.sustained:,.0f}/s",
            share >= 0.85,
        )
    ]
    if plain.paced is not None and transactional.paced is not None:
        bound = TRANSACTION_INTERVAL_MS + plain.paced.p99_ms
        result.append(
            verdict(
                "transactions: event→result p99 ≤ interval + p99 without",
                f"{transactional.paced.p99_ms:,.0f} ms",
                f"≤ {TRANSACTION_INTERVAL_MS:.0f} + {plain.paced.p99_ms:,.0f} ms",
                transactional.paced.p99_ms <= bound,
            )
        )
    return result


def verdicts(runs: Sequence[Run], cores: int) -> list[Verdict]:
    """The issue's targets, for each service contender (in-flight limit), from the runs at hand."""
    found = {(run.contender, run.profile): run for run in runs}
    services = list(dict.fromkeys(run.contender for run in runs if is_service(run.contender)))
    result: list[Verdict] = []
    for service in services:
        for profile in ("fixed", "heavy"):
            run = found.get((service, profile))
            if run is None:
                continue
            result += _service_verdicts(run, found.get((SEQUENTIAL, profile)), cores)
            plain = found.get((service.removesuffix(TRANSACTIONAL), profile))
            if service.endswith(TRANSACTIONAL) and plain is not None:
                result += _transaction_verdicts(plain, run)
    return result


# tables -------------------------------------------------------------------------------------------

_HEADERS = (
    "contender",
    "in flight",
    "done",
    "sustained /s",
    "ideal /s",
    "% of ideal",
    "CPU ms/reg",
    "CPU-bound /s",
    "peak RSS MB",
    "event→result p50 ms",
    "p99 ms",
)


def _row(run: Run) -> list[str]:
    done = f"{run.done:,}" + (
        f" of {run.backlog:,} (time-boxed {run.run_seconds:.0f} s)" if run.time_boxed else ""
    )
    paced = run.paced
    return [
        run.label,
        str(run.in_flight),
        done,
        f"{run.sustained:,.1f}",
        f"{run.ideal:,.1f}",
        f"{run.sustained / run.ideal:.0%}",
        f"{run.cpu_ms:.2f}",
        f"{run.cpu_bound:,.0f}",
        f"{run.peak_rss_mb:.0f}",
        f"{paced.p50_ms:,.0f}" if paced else "-",
        f"{paced.p99_ms:,.0f}" if paced else "-",
    ]


_MACHINE_HEADERS = (
    "contender",
    "CPU ms/reg: main thread + others",
    "observed mean Amili call ms",
    "emulator CPU ms/reg",
    "broker CPU ms/reg",
    "harness CPU ms/reg",
    "machine busy (others)",
    "paced load",
    "outcomes",
)


def _machine_row(run: Run) -> list[str]:
    paced = run.paced
    outcomes = ", ".join(f"{name} {count:,}" for name, count in sorted(run.outcomes.items()))
    if run.duplicates:
        outcomes += f", duplicates {run.duplicates:,}"
    return [
        run.label,
        f"{run.main_thread_cpu_ms:.2f} + {run.cpu_ms - run.main_thread_cpu_ms:.2f}",
        "-" if math.isnan(run.observed_latency_ms) else f"{run.observed_latency_ms:.1f}",
        f"{run.emulator_cpu_ms:.2f}",
        "-" if math.isnan(run.broker_cpu_ms) else f"{run.broker_cpu_ms:.2f}",
        f"{run.harness_cpu_ms:.2f}",
        f"{run.machine_busy:.0%} ({run.other_busy:.0%})",
        f"{paced.rate:,.0f}/s, {paced.received:,}/{paced.sent:,} results" if paced else "-",
        outcomes,
    ]


_VERDICT_HEADERS = ("target", "profile", "in flight", "measured", "required", "verdict", "note")


def _verdict_row(verdict: Verdict, passed: str, failed: str) -> list[str]:
    return [
        verdict.target,
        verdict.profile,
        str(verdict.in_flight),
        verdict.measured,
        verdict.required,
        passed if verdict.passed else failed,
        verdict.note,
    ]


def _by_profile(runs: Sequence[Run], settings: Settings) -> Iterator[tuple[str, list[Run]]]:
    """Each profile's title and runs, for the profiles that have runs."""
    for profile, title in settings.profiles.items():
        chosen = [run for run in runs if run.profile == profile]
        if chosen:
            yield title, chosen


def print_tables(console: Console, runs: Sequence[Run], settings: Settings) -> None:
    for title, chosen in _by_profile(runs, settings):
        table = Table(title=f"{title}: throughput", title_justify="left")
        for header in _HEADERS:
            table.add_column(header, justify="left" if header == "contender" else "right")
        for run in chosen:
            table.add_row(*_row(run))
        console.print(table)
        machine = Table(title=f"{title}: where the CPU went (per registration, sustained window)")
        for header in _MACHINE_HEADERS:
            machine.add_column(header, justify="left" if header in ("contender", "outcomes") else "right")
        for run in chosen:
            machine.add_row(*_machine_row(run))
        console.print(machine)
    for run in runs:
        if run.trace:
            console.print(_trace_table(run))
    table = Table(title="targets (the service, at each in-flight limit)", title_justify="left")
    for header in _VERDICT_HEADERS:
        table.add_column(header, justify="right" if header == "in flight" else "left")
    for verdict in verdicts(runs, settings.cores):
        table.add_row(*_verdict_row(verdict, "[green]PASS[/]", "[red]FAIL[/]"))
    console.print(table)


def _trace_rows(run: Run) -> list[list[str]]:
    events = run.trace.get("event in flight (engine, admitted → finished)", [run.done, 0.0])[0] or 1
    rows = []
    for step, (calls, seconds) in run.trace.items():
        rows.append(
            [
                step,
                f"{calls:,.0f}",
                f"{calls / events:.2f}",
                f"{seconds / calls * 1000:.2f}" if calls else "-",
                f"{seconds / events * 1000:.2f}",
            ]
        )
    return rows


_TRACE_HEADERS = ("step", "calls", "calls/event", "ms per call", "ms per event")


def _trace_table(run: Run) -> Table:
    table = Table(title=f"{run.profile}: {run.label}, time per step (whole run, waiting included)")
    for header in _TRACE_HEADERS:
        table.add_column(header, justify="left" if header == "step" else "right")
    for row in _trace_rows(run):
        table.add_row(*row)
    return table


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(runs: Sequence[Run], settings: Settings) -> str:
    parts: list[str] = []
    for title, chosen in _by_profile(runs, settings):
        parts.append(f"### {title}\n")
        parts.append(_markdown_table(_HEADERS, [_row(run) for run in chosen]) + "\n")
        parts.append(_markdown_table(_MACHINE_HEADERS, [_machine_row(run) for run in chosen]) + "\n")
    for run in runs:
        if run.trace:
            parts.append(f"### {run.profile}: {run.label}, time per step\n")
            parts.append(_markdown_table(_TRACE_HEADERS, _trace_rows(run)) + "\n")
    parts.append("### Targets\n")
    parts.append(
        _markdown_table(
            _VERDICT_HEADERS,
            [_verdict_row(verdict, "**PASS**", "**FAIL**") for verdict in verdicts(runs, settings.cores)],
        )
        + "\n"
    )
    return "\n".join(parts)


def write_json(path: Path, runs: Sequence[Run], settings: Settings) -> None:
    def encode(run: Run) -> dict[str, Any]:
        data = dataclasses.asdict(run)
        data |= {
            "ideal": run.ideal,
            "cpu_bound": run.cpu_bound,
            "machine_capacity": run.machine_capacity(settings.cores),
            "label": run.label,
        }
        return data

    document = {
        "settings": dataclasses.asdict(settings),
        "runs": [encode(run) for run in runs],
        "verdicts": [dataclasses.asdict(v) for v in verdicts(runs, settings.cores)],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


# the plot -----------------------------------------------------------------------------------------


def plot(path: Path, runs: Sequence[Run], profiles: dict[str, str]) -> None:
    """Throughput over time (results per 1-second bucket), one panel per profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [profile for profile in profiles if any(run.profile == profile for run in runs)]
    more_services = [
        name for name in dict.fromkeys(run.contender for run in runs) if is_service(name) and name != SERVICE
    ]
    colours = COLOURS | {
        name: _MORE_SERVICE_COLOURS[index % len(_MORE_SERVICE_COLOURS)]
        for index, name in enumerate(more_services)
    }
    figure, axes = plt.subplots(len(shown), 1, figsize=(10, 4.2 * len(shown)), squeeze=False)
    for axis, profile in zip((row[0] for row in axes), shown, strict=True):
        for run in (run for run in runs if run.profile == profile):
            colour = colours.get(run.contender, "tab:gray")
            seconds = list(range(len(run.buckets)))
            values = [max(count, 0.8) for count in run.buckets]  # zero shown just under 1 on log scale
            axis.step(seconds, values, where="post", color=colour, label=f"{run.label}")
            axis.axhline(run.ideal, color=colour, linestyle=":", linewidth=1)
        axis.set_yscale("log")
        axis.set_ylim(bottom=0.8)
        axis.set_title(f"{profiles[profile]} — dotted: ideal (in flight ÷ mean latency)")
        axis.set_xlabel("seconds since the contender started")
        axis.set_ylabel("registrations per second")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
