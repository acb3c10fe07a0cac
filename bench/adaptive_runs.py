"""``bench.adaptive`` several times in a row, each verdict's runs side by side. (A benchmark, not a
test.)

On a machine whose speed varies by the hour, one run of a scenario does not settle its verdict: the
p99 of a 20 s phase, or the first of two rounds, moves with the host (``docs/performance.md``).
This runs ``python -m bench.adaptive`` ``--runs`` times with the arguments given after ``--``, each
in a folder of its own (its plot there too, not in ``docs/``), and prints every verdict's measured
figure in each run and how many runs passed it.

    .venv/bin/python -m bench.adaptive_runs --runs 3 -- --scenarios c     # about 5 minutes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True, slots=True)
class Spread:
    scenario: str
    target: str
    subject: str
    measured: list[str | None]
    """Each run's figure, ``None`` where the run gave no such verdict (it failed before)."""
    passed: list[bool | None]

    @property
    def passes(self) -> int:
        return sum(1 for passed in self.passed if passed)


def spreads(runs: Sequence[Sequence[dict[str, object]]]) -> list[Spread]:
    """The verdicts of several runs, grouped by scenario, target and subject, in first-seen order."""
    keys: list[tuple[str, str, str]] = []
    found: list[dict[tuple[str, str, str], dict[str, object]]] = []
    for verdicts in runs:
        by_key: dict[tuple[str, str, str], dict[str, object]] = {}
        for verdict in verdicts:
            key = (str(verdict["scenario"]), str(verdict["target"]), str(verdict["subject"]))
            by_key[key] = verdict
            if key not in keys:
                keys.append(key)
        found.append(by_key)
    result = []
    for key in keys:
        each = [run.get(key) for run in found]
        result.append(
            Spread(
                *key,
                measured=[str(verdict["measured"]) if verdict else None for verdict in each],
                passed=[bool(verdict["passed"]) if verdict else None for verdict in each],
            )
        )
    return result


def print_spreads(console: Console, found: list[Spread], runs: int) -> None:
    table = Table(title=f"bench.adaptive, {runs} runs")
    for header in ("scenario", "target", "subject", *(f"run {n + 1}" for n in range(runs)), "passed"):
        table.add_column(header)
    for spread in found:
        cells = [
            "-" if measured is None else f"{measured} {'PASS' if passed else 'FAIL'}"
            for measured, passed in zip(spread.measured, spread.passed, strict=True)
        ]
        table.add_row(spread.scenario, spread.target, spread.subject, *cells, f"{spread.passes} of {runs}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.adaptive_runs", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="a folder per run here (default: a temp dir)")
    parser.add_argument("adaptive", nargs=argparse.REMAINDER, help="-- then bench.adaptive's arguments")
    args = parser.parse_args(argv)
    passed_on = [argument for argument in args.adaptive if argument != "--"]
    if args.runs < 1:
        parser.error("--runs: at least 1")
    if any(argument in {"--json", "--plot", "--workdir"} for argument in passed_on):
        parser.error("--json, --plot and --workdir are set per run here")
    console = Console() if sys.stdout.isatty() else Console(width=200)  # piped: room for the runs
    base = args.workdir or Path(tempfile.mkdtemp(prefix="bench-adaptive-runs-"))
    found: list[list[dict[str, object]]] = []
    for run in range(args.runs):
        folder = base / f"run-{run + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "bench.adaptive", *passed_on, "--workdir", str(folder)]
        command += ["--json", str(folder / "adaptive.json"), "--plot", str(folder / "adaptive.png")]
        figures = folder / "adaptive.json"
        figures.unlink(missing_ok=True)  # a folder used before: its figures are not this run's
        console.print(f"run {run + 1} of {args.runs}: {' '.join(command[1:])}")
        with (folder / "output.txt").open("w") as output:
            done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            console.print(f"run {run + 1} exited {done.returncode}: see {folder / 'output.txt'}")
        found.append(json.loads(figures.read_text())["verdicts"] if figures.exists() else [])
    print_spreads(console, spreads(found), args.runs)
    console.print(f"each run's output and figures: {base}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
