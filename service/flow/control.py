"""The flow towards Amili of one instance: the limit of invoices at Amili at once (adaptive or
fixed), the rate budget every call waits on, and the fair gate invoices take their place through.

The Amili client opens a ``call()`` around each request and reports how it ended; the
registration takes a ``place(creditor)`` around each attempt. Both are wired by the composition
root, one ``AmiliFlow`` per instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from service.flow.budget import RateBudget, RateLimitAnswer
from service.flow.fair import FairGate

Sleep = Callable[[float], Awaitable[None]]
SHARED_CHECK_SECONDS = 0.05
"""How often a call's end asks the gate whether a light creditor meets a backlog there (a look at
every creditor asking)."""


class Limit(Protocol):
    @property
    def limit(self) -> int: ...

    @property
    def min_latency(self) -> float | None: ...

    def sample(
        self, seconds: float, *, in_flight: int, dropped: bool = False, waited: float = 0.0
    ) -> None: ...

    def creditors_share(self) -> None:
        """A light creditor meets one that waits at the fair gate now."""

    @property
    def shared(self) -> bool: ...


class FlowObserver:
    """Hooks for metrics; the default does nothing."""

    def rate_limited(self) -> None: ...

    def budget_waited(self, seconds: float) -> None: ...


class Call:
    """One request's report: how it ended."""

    __slots__ = ("answered_status", "rate", "timed_out")

    def __init__(self) -> None:
        self.answered_status: int | None = None
        self.rate = RateLimitAnswer()
        self.timed_out = False

    def answered(self, status: int, rate: RateLimitAnswer) -> None:
        self.answered_status = status
        self.rate = rate

    def timeout(self) -> None:
        self.timed_out = True


class AmiliFlow:
    def __init__(
        self,
        limit: Limit,
        *,
        budget: RateBudget | None = None,
        observer: FlowObserver | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._budget = budget  # None: no budget, only 429s slow calls down
        self._observer = observer or FlowObserver()
        self._sleep = sleep
        self._clock = clock
        self._calls = 0
        # One caller at a time waits for the budget, the others queue behind it in order: paced
        # calls would otherwise wake every waiter at every call's turn.
        self._budget_turn = asyncio.Lock()
        self.gate = FairGate(lambda: self._limit.limit)
        self._shared_checked = -SHARED_CHECK_SECONDS

    @property
    def limit(self) -> int:
        return self._limit.limit

    @property
    def min_latency(self) -> float | None:
        return self._limit.min_latency

    @property
    def shared(self) -> bool:
        """Whether the limit keeps no queue at Amili now, for a light creditor beside a backlog."""
        return self._limit.shared

    @property
    def keeps_rate_budget(self) -> bool:
        """Whether every call waits for the rate budget (after a 429 too, until Amili's window
        ends)."""
        return self._budget is not None

    @property
    def calls_in_flight(self) -> int:
        return self._calls

    def place(self, creditor: str) -> contextlib.AbstractAsyncContextManager[None]:
        """A place among the invoices at Amili, taken in turn of its creditor."""
        return self.gate.place(creditor)

    @contextlib.asynccontextmanager
    async def call(self) -> AsyncIterator[Call]:
        """Wait for the rate budget, then time the request made inside the block."""
        started = self._clock()
        budget = self._budget
        ticket = 0
        waited = 0.0
        if budget is not None:
            if budget.wait_seconds() > 0 or self._budget_turn.locked():
                async with self._budget_turn:
                    while (wait := budget.wait_seconds()) > 0:
                        await self._sleep(wait)
                    ticket = budget.take()
                waited = self._clock() - started
                self._observer.budget_waited(waited)
            else:
                ticket = budget.take()
        self._calls += 1
        call = Call()
        try:
            yield call
        finally:
            self._calls -= 1
            ended = self._clock()
            if ended - self._shared_checked >= SHARED_CHECK_SECONDS:
                self._shared_checked = ended
                if self.gate.shared:
                    self._limit.creditors_share()
            self._ended(call, ticket, ended - started, waited)

    def _ended(self, call: Call, ticket: int, seconds: float, waited: float) -> None:
        status = call.answered_status
        in_flight = self._calls + 1
        if call.timed_out:
            self._limit.sample(seconds, in_flight=in_flight, dropped=True)
            return
        if status is None:
            return  # no answer (no connection, say): the circuit's concern, not a measure of load
        refused = status == 429
        if self._budget is not None:
            self._budget.learn(call.rate, ticket=ticket, refused=refused)
        if refused:
            self._observer.rate_limited()
            self._limit.sample(seconds, in_flight=in_flight, dropped=True)
        elif status < 500:
            self._limit.sample(seconds, in_flight=in_flight, waited=waited)
