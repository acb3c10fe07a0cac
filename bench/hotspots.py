"""Where the service's event loop spends its CPU: a summary of a pyinstrument session.

``python -m bench.throughput --contenders service --profiler pyinstrument`` leaves a ``.pyisession``
file in its work dir (the main thread only: the event loop; the ledger's SQLite thread is not
sampled). This prints, leaving out the time the loop sat idle in ``select``/``epoll`` and the
time coroutines spent awaiting:

- self time per package (the service's modules, FastStream, aiokafka, httpx, aiohttp, pydantic...);
- the functions with the most self time;
- the inclusive time of the steps of one event (decode, register, publish, ledger, commit...).

    .venv/bin/python -m bench.hotspots SESSION.pyisession [--registrations N] [--top 25]

With ``--registrations`` the figures are also given in milliseconds per registration.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from pyinstrument.frame import (
    AWAIT_FRAME_IDENTIFIER,
    OUT_OF_CONTEXT_FRAME_IDENTIFIER,
    SELF_TIME_FRAME_IDENTIFIER,
    Frame,
)
from pyinstrument.session import Session

IDLE_FUNCTIONS = {"select", "poll", "epoll.poll", "_run_once"}
# Steps of one event, by function name (inclusive time; a step nested in another counts in both).
STEPS = {
    "ConsumptionEngine._fetch_once": "engine: fetch (getmany) and admit",
    "InvoiceProcessor.prepare": "decode + transform (pydantic)",
    "InvoiceRegistration.register": "registration protocol (ledger + Amili)",
    "AmiliClient.register": "Amili POST (aiohttp)",
    "SqliteLedger._transaction": "ledger writes (queued for the next group commit)",
    "SqliteLedger._commit_done": "ledger group commits (the next one handed to the SQLite thread)",
    "_answer": "ledger answers (writers settled from a group commit's outcomes)",
    "fingerprint": "fingerprint (json + sha256)",
    "InvoiceProcessor._publish": "result event and publish (aiokafka producer)",
    "InvoiceProcessor._mark_published": "ledger mark_published",
    "ConsumptionEngine._commit": "offset commits",
    "MetricsObserver": "metrics",
    "Fetcher._fetch_requests_routine": "aiokafka fetcher (background: fetch requests, record parsing)",
    "Sender._sender_routine": "aiokafka producer sender (background)",
    "Fetcher.fetched_records": "aiokafka getmany (records handed to the engine)",
}
CALLERS_OF = 3  # the callers of this many top functions are listed


def _name(frame: Frame) -> str:
    return f"{frame.class_name}.{frame.function}" if frame.class_name else frame.function


def package(path: str | None) -> str:
    if not path or path.startswith("<"):
        return "built-ins (C calls: sockets, hashing, ...)"
    match = re.search(r"site-packages/([^/]+)", path)
    if match:
        return match.group(1).removesuffix(".py")
    match = re.search(r"/(service|bench)/(.+?)\.py$", path)
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    match = re.search(r"/lib/python3\.\d+/([^/]+)", path)
    if match:
        return f"stdlib {match.group(1).removesuffix('.py')}"
    return "other"


def _walk(frame: Frame) -> Iterator[Frame]:
    yield frame
    for child in frame.children:
        yield from _walk(child)


def self_times(root: Frame) -> dict[Frame, float]:
    """CPU self time per real frame: its ``[self]`` children and time not covered by children;
    ``[await]`` and idle polling are left out."""
    result: dict[Frame, float] = defaultdict(float)
    for frame in _walk(root):
        if frame.identifier in (AWAIT_FRAME_IDENTIFIER, OUT_OF_CONTEXT_FRAME_IDENTIFIER):
            continue
        if frame.identifier == SELF_TIME_FRAME_IDENTIFIER:
            if frame.parent is not None:
                result[frame.parent] += frame.time
            continue
        if frame.is_synthetic:
            continue
        uncovered = frame.time - sum(child.time for child in frame.children)
        if uncovered > 0:
            result[frame] += uncovered
    return {frame: t for frame, t in result.items() if _name(frame) not in IDLE_FUNCTIONS}


def inclusive(frame: Frame) -> float:
    """Time under ``frame`` without awaits and idle polling."""
    if frame.identifier in (AWAIT_FRAME_IDENTIFIER, OUT_OF_CONTEXT_FRAME_IDENTIFIER):
        return 0.0
    if not frame.is_synthetic and _name(frame) in IDLE_FUNCTIONS:
        return 0.0
    children = frame.children
    if not children:
        return frame.time
    return sum(inclusive(child) for child in children) + max(
        0.0, frame.time - sum(child.time for child in children)
    )


def _outermost(root: Frame, wanted: str) -> Iterator[Frame]:
    """Frames whose name contains ``wanted`` that have no such frame above them."""

    def visit(frame: Frame) -> Iterator[Frame]:
        if not frame.is_synthetic and wanted in _name(frame):
            yield frame
            return
        for child in frame.children:
            yield from visit(child)

    yield from visit(root)


def summarise(path: Path, registrations: int | None, top: int) -> str:
    session = Session.load(str(path))
    root = session.root_frame()
    if root is None:
        return "empty session"
    selfs = self_times(root)
    busy = sum(selfs.values())
    lines = [
        f"{path.name}: {session.duration:.1f} s recorded, {session.cpu_time:.1f} s CPU (process), "
        f"event loop busy {busy:.1f} s" + (f", {registrations:,} registrations" if registrations else ""),
    ]

    def figure(seconds: float) -> str:
        share = f"{seconds / busy:6.1%}" if busy else "     -"
        if registrations:
            return f"{share} {seconds / registrations * 1000:7.3f} ms/reg"
        return f"{share} {seconds:8.2f} s"

    by_package: dict[str, float] = defaultdict(float)
    by_function: dict[str, float] = defaultdict(float)
    for frame, seconds in selfs.items():
        by_package[package(frame.file_path)] += seconds
        by_function[f"{_name(frame)}  ({frame.file_path_short}:{frame.line_no})"] += seconds
    lines.append("\nself time by package:")
    for name, seconds in sorted(by_package.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {figure(seconds)}  {name}")
    lines.append(f"\ntop {top} functions by self time:")
    for name, seconds in sorted(by_function.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {figure(seconds)}  {name}")
    for name, _ in sorted(by_function.items(), key=lambda item: -item[1])[:CALLERS_OF]:
        callers: dict[str, float] = defaultdict(float)
        for frame, seconds in selfs.items():
            if f"{_name(frame)}  ({frame.file_path_short}:{frame.line_no})" != name:
                continue
            parent = frame.parent
            while parent is not None and parent.is_synthetic:
                parent = parent.parent
            caller = parent
            # the first caller outside the standard library and the built-ins says who it is for
            while caller is not None and (
                caller.is_synthetic or package(caller.file_path).startswith(("stdlib", "built-ins"))
            ):
                caller = caller.parent
            label = "?" if caller is None else f"{_name(caller)} ({package(caller.file_path)})"
            callers[label] += seconds
        lines.append(f"\n  callers of {name.split('  ')[0]}:")
        for label, seconds in sorted(callers.items(), key=lambda item: -item[1])[:6]:
            lines.append(f"    {figure(seconds)}  {label}")
    lines.append("\nsteps of one event (inclusive, outermost occurrence):")
    for wanted, label in STEPS.items():
        seconds = sum(inclusive(frame) for frame in _outermost(root, wanted))
        lines.append(f"  {figure(seconds)}  {label}  [{wanted}]")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("session", type=Path)
    parser.add_argument("--registrations", type=int, help="events processed while profiled")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarise(args.session, args.registrations, args.top))


if __name__ == "__main__":
    main()
