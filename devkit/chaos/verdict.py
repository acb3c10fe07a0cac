"""The verdict of a chaos run: what it saw, held against its plan.

The run gathers the evidence (``Observed`` from the topics, ``AmiliRecords`` from the emulator,
``RunStats`` and ``OutageStats`` of its own); ``evaluate`` turns it into ``Check`` rows, each with
what was expected, what was found and whether that passes. Pure functions of their inputs, so the
checks can be tested without a run.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.chaos.plan import REGISTERED, Plan

# Dead-letter rules that are not about the event itself: a valid invoice dead-lettered.
NON_POISON_RULES = frozenset({"gave_up", "processing_error"})
# The broker outage: the bounds the report holds the service to.
LOG_LINES_PER_MINUTE = 200  # per replica and minute of outage
IDLE_CPU_CORES = 0.10  # per replica, while the broker is away


@dataclass
class Observed:
    """What came out of the service, as read from its topics."""

    results: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)  # key → (outcome, case)
    result_records: int = 0
    dead_letter_sources: Counter[tuple[int, int]] = field(default_factory=Counter)  # (partition, offset)
    dead_letter_rules: Counter[str] = field(default_factory=Counter)
    source_rules: dict[tuple[int, int], set[str]] = field(default_factory=dict)  # source → its rules
    dead_letter_records: int = 0
    activity: int = 0  # records seen on either topic

    def add_result(self, value: bytes | None) -> None:
        self.result_records += 1
        self.activity += 1
        try:
            data = json.loads(value or b"")["data"]
            key = f"{data['creditor']}/{data['invoice_number']}"
            case = (data.get("amili") or {}).get("_case")
            self.results.setdefault(key, []).append((str(data["outcome"]), case))
        except (ValueError, KeyError, TypeError):
            self.results.setdefault("<unreadable>", []).append(("unreadable", None))

    def add_dead_letter(self, headers: Iterable[tuple[str, bytes]], inbound_topic: str) -> None:
        self.dead_letter_records += 1
        self.activity += 1
        found = {name: value.decode("utf-8", "replace") for name, value in headers if name.startswith("dlq.")}
        rule = found.get("dlq.rule", "?")
        self.dead_letter_rules[rule] += 1
        source = (-1, self.dead_letter_records)
        if found.get("dlq.topic") == inbound_topic:
            with contextlib.suppress(KeyError, ValueError):
                source = (int(found["dlq.partition"]), int(found["dlq.offset"]))
        self.dead_letter_sources[source] += 1
        self.source_rules.setdefault(source, set()).add(rule)

    def outcomes(self, key: str) -> set[str]:
        return {outcome for outcome, _ in self.results.get(key, [])}


@dataclass
class OutageStats:
    """What happened around the broker outage; times are seconds into the run."""

    signal: str
    planned_seconds: float
    started_at: float | None = None  # when the signal was sent
    not_started: str = ""  # why it never started
    events_sent: int = 0  # when it started
    pending_invoices: int = 0  # invoices sent without a result when it started
    stop_seconds: float = 0.0  # from the signal until the broker process was gone
    away_seconds: float = 0.0  # from then until it was started again (the CPU window)
    restart_seconds: float = 0.0  # from then until its port accepted connections
    back_at: float | None = None
    first_result_after_back: float | None = None  # seconds from back to the next result
    port_busy_retries: int = 0
    log_lines: dict[str, int] = field(default_factory=dict)  # per replica, from the signal to back + 30 s
    log_window_seconds: float = 0.0
    log_window_complete: bool = False
    cpu_cores: dict[str, float] = field(default_factory=dict)  # per replica, while the broker was away

    @property
    def down_seconds(self) -> float | None:
        if self.started_at is None or self.back_at is None:
            return None
        return self.back_at - self.started_at


@dataclass
class RunStats:
    lives: int = 0
    unexpected_exits: int = 0
    stalls: int = 0
    events_sent: int = 0
    invoices_sent: int = 0
    produced_seconds: float = 0.0
    all_in_seconds: float | None = None
    settle_seconds: float = 0.0
    total_seconds: float = 0.0
    unconsumed: int | None = None
    life_seconds: list[float] = field(default_factory=list)  # of each life ended by a kill
    replicas: int = 1
    kills_enabled: bool = True
    outage: OutageStats | None = None
    transactions: bool = False
    """KAFKA_TRANSACTIONS on: the topics are read with read_committed and every event must have
    exactly one record (a result, or a dead letter for poison)."""
    frozen: list[float] = field(default_factory=list)  # seconds each replica freeze lasted

    @property
    def kills(self) -> int:
        return len(self.life_seconds)

    @property
    def restarts(self) -> int:
        """Replicas started again, after a kill or an exit of their own."""
        return max(0, self.lives - self.replicas)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    expected: str
    actual: str
    passed: bool | None  # None: for information
    detail: str = ""


_ACCESS_LINE = re.compile(r'"(GET|POST) (/invoice--registrations)\S* HTTP/[0-9.]+" (\d{3})')


def emulator_answers(log_file: Path) -> dict[str, int]:
    """Answers to registration calls by method and status, from the emulator's access log."""
    counts: Counter[str] = Counter()
    if not log_file.exists():
        return {}
    with log_file.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            match = _ACCESS_LINE.search(line)
            if match:
                method, _, status = match.groups()
                counts[f"{'POST' if method == 'POST' else 'look-up'} {status}"] += 1
    return dict(counts)


@dataclass(frozen=True, slots=True)
class AmiliRecords:
    per_invoice: dict[str, int]  # "creditor/invoice_number" → registrations
    cases: dict[str, str]  # "creditor/invoice_number" → case id (from the emulator's store)


def _sample(keys: Iterable[Any], limit: int = 5) -> str:
    items = sorted(str(key) for key in keys)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def evaluate(
    plan: Plan,
    observed: Observed,
    amili: AmiliRecords,
    poison_sources: dict[tuple[int, int], str],
    stats: RunStats,
    answers: dict[str, int] | None = None,
) -> list[Check]:
    """The run's checks: what was sent against what Amili holds and what the topics carry."""
    checks: list[Check] = []

    def add(name: str, expected: Any, actual: Any, passed: bool | None, detail: str = "") -> None:
        checks.append(Check(name, str(expected), str(actual), passed, detail))

    add("invoices sent", len(plan.invoices), stats.invoices_sent, stats.invoices_sent == len(plan.invoices))
    add("events sent (with re-sends and poison)", len(plan.events), stats.events_sent, None)

    registered_at_amili = set(amili.per_invoice)
    missing = plan.registrable - registered_at_amili
    unexpected = registered_at_amili - plan.registrable
    add(
        "distinct registrations at Amili",
        len(plan.registrable),
        len(registered_at_amili),
        not missing and not unexpected,
        f"missing {_sample(missing)}; not meant to be registered {_sample(unexpected)}",
    )
    duplicates = {key: count for key, count in amili.per_invoice.items() if count > 1}
    add(
        "duplicate registrations at Amili",
        0,
        sum(count - 1 for count in duplicates.values()),
        not duplicates,
        _sample(duplicates),
    )

    without = plan.invoices - set(observed.results)
    add("invoices without a result", 0, len(without), not without, _sample(without))
    wrong = {
        key: sorted(observed.outcomes(key))
        for key in plan.invoices
        if key in observed.results and observed.outcomes(key) != plan.expected_outcomes(key)
    }
    strays = set(observed.results) - plan.invoices
    add(
        "invoices with another outcome than expected",
        0,
        len(wrong) + len(strays),
        not wrong and not strays,
        f"{_sample(f'{k}: {v}' for k, v in wrong.items())}; results for unknown invoices {_sample(strays)}",
    )
    two_cases = {
        key: cases
        for key, results in observed.results.items()
        if len(cases := {case for outcome, case in results if outcome == REGISTERED}) > 1
    }
    add("invoices with two different case ids", 0, len(two_cases), not two_cases, _sample(two_cases))
    disagreeing = {
        key
        for key, results in observed.results.items()
        for outcome, case in results
        if outcome == REGISTERED and amili.cases.get(key) != case
    }
    add(
        "registered results disagreeing with Amili",
        0,
        len(disagreeing),
        not disagreeing,
        _sample(disagreeing),
    )

    sources = set(observed.dead_letter_sources)
    poisoned = set(poison_sources)
    add(
        "dead letters (distinct events)",
        len(poisoned),
        len(sources),
        sources == poisoned,
        f"poison without a dead letter {_sample(poisoned - sources)}; dead letters of other events "
        f"{_sample(sources - poisoned)} (rules: {dict(observed.dead_letter_rules)})",
    )
    add("dead-letter records (re-deliveries included)", "-", observed.dead_letter_records, None)
    checks.extend(once_checks(plan, observed, stats.transactions))
    # A dead letter of a valid invoice: given up or failed processing, not anything wrong with the event.
    valid = {
        source: rules
        for source, rules in observed.source_rules.items()
        if rules & NON_POISON_RULES or source not in poisoned
    }
    add(
        "dead letters for valid invoices",
        0,
        len(valid),
        not valid,
        _sample(f"{source}: {'/'.join(sorted(rules))}" for source, rules in valid.items()),
    )
    add(
        "events left unconsumed at the end",
        0,
        "?" if stats.unconsumed is None else stats.unconsumed,
        stats.unconsumed == 0,
    )
    add("service exits not caused by a kill", 0, stats.unexpected_exits, stats.unexpected_exits == 0)
    replicas = f" ({stats.replicas} replicas)" if stats.replicas > 1 else ""
    if stats.kills_enabled:
        add(
            f"service restarts{replicas}",
            f"{stats.kills} (one per kill)",
            stats.restarts,
            stats.restarts == stats.kills,
        )
    else:
        add(f"service restarts{replicas}", 0, stats.restarts, stats.restarts == 0)
    # The emulator, like Amili, refuses a second registration of an invoice number (422, "not
    # unique"); the service adopts the first. Each such answer is a duplicate the service attempted.
    add("POSTs Amili refused as not unique", "-", (answers or {}).get("POST 422", 0), None)
    add("SIGKILLs", ">= 1" if stats.kills_enabled else "0 (--no-kills)", stats.kills, None)
    if stats.frozen:
        add("replica frozen (SIGSTOP, then SIGCONT)", "-", ", ".join(f"{f:.1f}s" for f in stats.frozen), None)
    if stats.outage is not None:
        checks.extend(outage_checks(stats.outage, stats.all_in_seconds))
    return checks


def once_checks(plan: Plan, observed: Observed, transactions: bool) -> list[Check]:
    """Exactly one record per event: a result for each event naming an invoice, a dead letter for
    each poison event. A check with transactions (the topics read with read_committed); without
    them, for information: a kill redelivers what was not committed yet."""
    per_invoice = Counter(event.invoice for event in plan.events if event.kind != "poison" and event.invoice)
    surplus = {
        key: len(results) - per_invoice.get(key, 0)
        for key, results in observed.results.items()
        if len(results) > per_invoice.get(key, 0)
    }
    short = {key: count - len(observed.results.get(key, [])) for key, count in per_invoice.items()}
    short = {key: missing for key, missing in short.items() if missing > 0}
    repeated_dead = {source: count for source, count in observed.dead_letter_sources.items() if count > 1}
    mode = "read_committed" if transactions else "at least once: for information"

    def verdict(ok: bool) -> bool | None:
        return ok if transactions else None

    return [
        Check(
            f"result records (one per event; {mode})",
            str(sum(per_invoice.values())),
            str(observed.result_records),
            verdict(observed.result_records == sum(per_invoice.values())),
        ),
        Check(
            f"duplicate result records ({mode})",
            "0",
            str(sum(surplus.values())),
            verdict(not surplus),
            _sample(surplus),
        ),
        Check(
            f"events without their own result record ({mode})",
            "0",
            str(sum(short.values())),
            verdict(not short),
            _sample(short),
        ),
        Check(
            f"duplicate dead-letter records ({mode})",
            "0",
            str(sum(count - 1 for count in repeated_dead.values())),
            verdict(not repeated_dead),
            _sample(repeated_dead),
        ),
    ]


def outage_checks(outage: OutageStats, all_in_seconds: float | None) -> list[Check]:
    """The broker outage: did it hit mid-run, and how did the service behave while it lasted."""
    name = "invoices waiting for a result when the broker stopped"
    if outage.started_at is None:
        return [Check(name, "> 0", f"never started: {outage.not_started}", False)]
    checks = [Check(name, "> 0", str(outage.pending_invoices), outage.pending_invoices > 0)]
    down = outage.down_seconds
    checks.append(
        Check(
            f"broker down ({outage.signal}, then started again)",
            f"{outage.planned_seconds:g}s + start",
            "never back" if down is None else f"{down:.1f}s",
            False if down is None else None,
        )
    )

    def per_replica(values: dict[str, float], form: str) -> str:
        return ", ".join(f"{name} {form.format(value)}" for name, value in sorted(values.items()))

    minutes = (down if down is not None else outage.log_window_seconds) / 60
    bound = math.ceil(LOG_LINES_PER_MINUTE * minutes)
    worst_lines = max(outage.log_lines.values(), default=0)
    cut = "" if outage.log_window_complete else ", window cut short"
    checks.append(
        Check(
            "log lines of the service during the outage",
            f"<= {bound}/replica ({LOG_LINES_PER_MINUTE}/min down)",
            f"max {worst_lines} ({per_replica(dict(outage.log_lines), '{:.0f}')}) in "
            f"{outage.log_window_seconds:.0f}s{cut}",
            worst_lines <= bound,
        )
    )
    if outage.cpu_cores:
        worst_cpu = max(outage.cpu_cores.values())
        checks.append(
            Check(
                "CPU of the service while the broker was away",
                f"<= {IDLE_CPU_CORES:.2f} core/replica",
                f"max {worst_cpu:.3f} ({per_replica(outage.cpu_cores, '{:.3f}')}) "
                f"over {outage.away_seconds:.0f}s",
                worst_cpu <= IDLE_CPU_CORES,
            )
        )
    else:
        checks.append(
            Check(
                "CPU of the service while the broker was away",
                f"<= {IDLE_CPU_CORES:.2f} core/replica",
                f"not measured: away {outage.away_seconds:.1f}s",
                None,
            )
        )
    if outage.back_at is None:
        recovered = "-"
    elif all_in_seconds is None:
        recovered = "never (timed out)"
    else:
        recovered = f"{max(0.0, all_in_seconds - outage.back_at):.1f}s"
    if outage.first_result_after_back is not None:
        recovered += f" (first result {outage.first_result_after_back:.1f}s)"
    checks.append(Check("time from broker back to every result in", "-", recovered, None))
    return checks
