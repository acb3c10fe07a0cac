"""bench.throughput's latency runs: the transactional contender is paced as its counterpart was."""

from __future__ import annotations

from dataclasses import replace

from bench import report
from bench.throughput import paced_rate


def _run(
    contender: str, sustained: float, *, profile: str = "fixed", paced_at: float | None = None
) -> report.Run:
    return report.Run(
        contender=contender,
        profile=profile,
        in_flight=128,
        mean_latency_ms=50.0,
        backlog=20_000,
        done=20_000,
        outcomes={},
        duplicates=0,
        time_boxed=False,
        run_seconds=20.0,
        sustained=sustained,
        window_seconds=15.0,
        cpu_ms=0.8,
        main_thread_cpu_ms=0.7,
        emulator_cpu_ms=0.3,
        broker_cpu_ms=0.1,
        harness_cpu_ms=1.0,
        machine_busy=0.8,
        other_busy=0.05,
        peak_rss_mb=150.0,
        observed_latency_ms=60.0,
        paced=None if paced_at is None else report.Paced(paced_at, 100, 100, 70.0, 150.0, 160.0),
    )


def test_a_contender_is_paced_at_its_share_of_what_it_sustained() -> None:
    assert paced_rate([], _run(report.SERVICE, 1200.0), 0.5) == 600.0


def test_the_transactional_contender_is_paced_as_its_counterpart_was_though_it_sustained_more() -> None:
    without = _run(report.SERVICE, 1200.0, paced_at=600.0)
    other_profile = _run(report.SERVICE, 900.0, profile="heavy", paced_at=450.0)
    transactional = _run(report.SERVICE + report.TRANSACTIONAL, 1500.0)
    assert paced_rate([other_profile, without], transactional, 0.5) == 600.0
    # No counterpart paced under its profile: its own share.
    assert paced_rate([other_profile], transactional, 0.5) == 750.0
    assert paced_rate([replace(without, paced=None)], transactional, 0.5) == 750.0
