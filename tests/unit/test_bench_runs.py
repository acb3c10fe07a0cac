"""``bench.adaptive_runs``: the verdicts of several runs of ``bench.adaptive`` side by side."""

from __future__ import annotations

from bench.adaptive_runs import spreads


def _verdict(scenario: str, subject: str, measured: str, passed: bool) -> dict[str, object]:
    return {
        "scenario": scenario,
        "target": "S's p99 with the backlog ≤ 2x alone",
        "subject": subject,
        "measured": measured,
        "required": "≤ 2x",
        "passed": passed,
        "note": "",
    }


def test_each_verdict_gets_its_figure_from_every_run_and_a_count_of_passes() -> None:
    first = [_verdict("C", "held 25,000", "2.51x", False), _verdict("C", "held 10,000", "220x", False)]
    second = [_verdict("C", "held 25,000", "1.98x", True), _verdict("C", "held 10,000", "183x", False)]
    third: list[dict[str, object]] = []  # a run that failed before its verdicts
    found = spreads([first, second, third])
    assert [(spread.subject, spread.measured, spread.passed, spread.passes) for spread in found] == [
        ("held 25,000", ["2.51x", "1.98x", None], [False, True, None], 1),
        ("held 10,000", ["220x", "183x", None], [False, False, None], 0),
    ]


def test_a_verdict_only_a_later_run_gave_keeps_its_place_after_the_others() -> None:
    found = spreads(
        [[_verdict("A", "x", "1", True)], [_verdict("B", "y", "2", True), _verdict("A", "x", "3", False)]]
    )
    assert [(spread.scenario, spread.measured) for spread in found] == [("A", ["1", "3"]), ("B", [None, "2"])]
