"""A circuit breaker in front of Amili, which also holds calls back while the credentials are refused.

- Closed: calls go out. ``failure_threshold`` transient failures in a row (across invoices) open it.
- Open: no call goes out for ``open_seconds``; then it is half-open.
- Half-open: one call (the probe) goes out; success closes the circuit, failure opens it again.
- Refused credentials (401/403) hold every call back the same way, probing every
  ``unauthorized_retry_seconds`` until Amili accepts them again.

No I/O: callers wait on it; the consumption engine reads ``accepting`` to pause fetching.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from enum import IntEnum

from service.ports import AmiliDuplicate, AmiliRejected, AmiliUnauthorized, AmiliUnavailable


class CircuitState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class AmiliCircuit:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        open_seconds: float = 5.0,
        unauthorized_retry_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[AmiliCircuit], None] | None = None,
    ) -> None:
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._unauthorized_retry = unauthorized_retry_seconds
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
        self._opened = False
        self._authorized = True
        self._retry_at = 0.0
        self._probe_out = False
        self._changed = asyncio.Condition()

    @property
    def state(self) -> CircuitState:
        if not self._opened and self._authorized:
            return CircuitState.CLOSED
        if self._clock() >= self._retry_at and not self._probe_out:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    @property
    def authorized(self) -> bool:
        return self._authorized

    @property
    def accepting(self) -> bool:
        """Whether new work should be fetched: not while Amili is known to be unusable."""
        return self.state is not CircuitState.OPEN

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        """Wait until a call may go out, then judge the call by how the block ends."""
        probe = await self._admit()
        try:
            yield
        except (AmiliRejected, AmiliDuplicate):
            await self._record(success=True, probe=probe)  # Amili answered: it is up
            raise
        except AmiliUnauthorized:
            await self._record(success=False, probe=probe, unauthorized=True)
            raise
        except AmiliUnavailable:
            await self._record(success=False, probe=probe)
            raise
        except BaseException:
            await self._record(success=None, probe=probe)
            raise
        else:
            await self._record(success=True, probe=probe)

    async def _admit(self) -> bool:
        async with self._changed:
            while True:
                state = self.state
                if state is CircuitState.CLOSED:
                    return False
                if state is CircuitState.HALF_OPEN:
                    self._probe_out = True
                    return True
                # Poll at least twice a second, so that the open period ends on time whatever the clock.
                wait = 0.5 if self._probe_out else min(0.5, max(0.01, self._retry_at - self._clock()))
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=wait)

    async def _record(self, *, success: bool | None, probe: bool, unauthorized: bool = False) -> None:
        async with self._changed:
            before = (self.state, self._authorized)
            if probe:
                self._probe_out = False
            if success is True:
                self._failures = 0
                self._opened = False
                self._authorized = True
            elif success is False and unauthorized:
                self._authorized = False
                self._retry_at = self._clock() + self._unauthorized_retry
            elif success is False:
                self._failures += 1
                if probe or self._failures >= self._threshold:
                    if not self._opened or probe:
                        self._retry_at = self._clock() + self._open_seconds
                    self._opened = True
            self._changed.notify_all()
            if self._on_change is not None and (self.state, self._authorized) != before:
                self._on_change(self)
