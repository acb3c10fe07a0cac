"""Diagnostic: ``python -m service run`` with the steps of each event timed. (Not for production.)

The service's code is unchanged: a few of its methods are wrapped at start-up, here, to add up how
long each call takes as the event sees it (waiting included), plus how long each SQLite group
commit (one transaction for the writes that waited for it) runs on the ledger's thread, how late
the event loop wakes up from a 10 ms sleep (its lag) and how long each garbage collection takes.
At exit the totals go to ``$BENCH_TRACE_FILE`` as JSON: ``{step: [calls, seconds]}``.

    BENCH_TRACE_FILE=trace.json .venv/bin/python -m bench.trace_service   # env as for `service run`

``python -m bench.throughput --trace-service`` runs the service this way and reports the figures.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import gc
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from service.amili.client import AmiliClient
from service.cli import main
from service.kafka.engine import ConsumptionEngine
from service.kafka.publishing import KafkaResultPublisher
from service.kafka.transactions import PartitionTransactions
from service.ledger.sqlite import SqliteLedger
from service.processing import InvoiceProcessor
from service.registration import InvoiceRegistration

STEPS: dict[str, list[float]] = {}
_LOCK = threading.Lock()


def _add(step: str, seconds: float) -> None:
    with _LOCK:
        entry = STEPS.setdefault(step, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds


def _creditor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The creditor a call is for, where it is plain to see (so one creditor's steps can be told
    from another's, as in bench/adaptive's fairness scenario)."""
    if "creditor" in kwargs:
        return str(kwargs["creditor"])
    for arg in args[1:]:
        creditor = getattr(arg, "creditor", None) or getattr(getattr(arg, "route", None), "creditor", None)
        if isinstance(creditor, str):
            return creditor
    return None


def _timed_async(owner: type, name: str, step: str) -> None:
    original: Callable[..., Awaitable[Any]] = getattr(owner, name)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - started
            _add(step, seconds)
            creditor = _creditor(args, kwargs)
            if creditor is not None:
                _add(f"{step} [creditor {creditor}]", seconds)

    setattr(owner, name, wrapper)


def _timed_sync(owner: type, name: str, step: str, *, static: bool = False) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _add(step, time.perf_counter() - started)

    setattr(owner, name, staticmethod(wrapper) if static else wrapper)


async def _loop_lag() -> None:
    while True:
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        _add("event loop lag (beyond a 10 ms sleep)", max(0.0, time.perf_counter() - started - 0.01))


_COLLECTION_STARTED = [0.0]


def _time_collections(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _COLLECTION_STARTED[0] = time.perf_counter()
    else:
        _add(
            f"garbage collection, generation {info['generation']}",
            time.perf_counter() - _COLLECTION_STARTED[0],
        )


def instrument() -> None:
    gc.callbacks.append(_time_collections)
    _timed_async(ConsumptionEngine, "_handle", "event in flight (engine, admitted → finished)")
    _timed_sync(InvoiceProcessor, "prepare", "decode + transform")
    _timed_async(InvoiceRegistration, "register", "registration protocol (ledger + Amili)")
    _timed_async(InvoiceRegistration, "_attempt", "at Amili (a place held: calls and retries)")
    _timed_async(AmiliClient, "register", "Amili POST")
    _timed_async(KafkaResultPublisher, "publish_result", "result publish (acks=all)")
    for method in ("claim", "finish", "mark_published"):
        _timed_async(SqliteLedger, method, f"ledger {method} (group commit wait + thread)")
    _timed_sync(SqliteLedger, "_group", "ledger group commit (on its thread)", static=True)
    _timed_async(PartitionTransactions, "commit", "transaction: commit (lock wait + transaction)")
    _timed_async(PartitionTransactions, "_transaction", "transaction: begin → committed")
    for method in ("begin_transaction", "send_offsets_to_transaction", "commit_transaction"):
        _timed_async(AIOKafkaProducer, method, f"transaction: producer.{method}")

    original_start = ConsumptionEngine.start
    tasks: list[asyncio.Task[None]] = []

    async def start(self: ConsumptionEngine) -> None:
        await original_start(self)
        tasks.append(asyncio.create_task(_loop_lag()))

    ConsumptionEngine.start = start  # type: ignore[method-assign]


def _dump() -> None:
    target = os.environ.get("BENCH_TRACE_FILE")
    if target:
        with _LOCK:
            Path(target).write_text(json.dumps(STEPS, indent=2) + "\n")


def _exit_on_sigterm(signum: int, _: object) -> None:
    # uvicorn re-raises the SIGTERM it captured once it has shut down; exit normally, so atexit runs.
    sys.exit(128 + signum)


if __name__ == "__main__":
    if os.environ.get("BENCH_SWITCH_INTERVAL"):  # an experiment: how often threads take the GIL
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
    instrument()
    atexit.register(_dump)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main(["run"]))
