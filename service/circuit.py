"""A circuit breaker in front of Amili, which also holds calls back while Amili refuses the
credentials or the service calls it at the wrong place.

- Closed: calls go out. ``failure_threshold`` transient failures in a row (across invoices) open it.
- Open: no call goes out for ``open_seconds``; then it is half-open.
- Half-open: the next call goes out as the probe (the circuit counts as open again while it is
  out); success closes the circuit, failure opens it again.
- Refused credentials (401/403) hold every call back the same way, probing every
  ``unauthorized_retry_seconds`` until Amili accepts them again; so does a configuration error
  (``AmiliMisconfigured``: the endpoint answers 404/405/400, AMILI_BASE_URL is wrong), probing
  every ``misconfigured_retry_seconds`` until the endpoint answers as it should.

Every change of what it reports (``state``, ``authorized``, ``config_error``) calls ``on_change``
and is logged, the lazy one included: an open period ending is noticed by a timer of the running
loop (and by any read of ``state``), not only when the next call is made. The log says each change
once: opening, closing, a refusal or a configuration error and its end always; the open/half-open
cycle of probes only its first time in an outage (then at DEBUG).

No I/O: callers wait on it; the consumption engine reads ``accepting`` to pause fetching.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from enum import IntEnum

from service.ports import (
    AmiliDuplicate,
    AmiliMisconfigured,
    AmiliRateLimited,
    AmiliRejected,
    AmiliUnauthorized,
    AmiliUnavailable,
)

log = logging.getLogger(__name__)


class CircuitState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


# What the circuit reports: state, whether the credentials are accepted, the configuration error.
_View = tuple[CircuitState, bool, str | None]


class AmiliCircuit:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        open_seconds: float = 5.0,
        unauthorized_retry_seconds: float = 30.0,
        misconfigured_retry_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[AmiliCircuit], None] | None = None,
    ) -> None:
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._unauthorized_retry = unauthorized_retry_seconds
        self._misconfigured_retry = (
            unauthorized_retry_seconds if misconfigured_retry_seconds is None else misconfigured_retry_seconds
        )
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
        self._opened = False
        self._authorized = True
        self._config_error: str | None = None
        self._retry_at = 0.0
        self._probe_out = False
        self._changed = asyncio.Condition()
        self._reported: _View = (CircuitState.CLOSED, True, None)
        self._wake: asyncio.TimerHandle | None = None
        # For the log: why it opened, since when, how many probes failed, and whether the
        # open/half-open cycle of this outage was told already.
        self._last_failure = ""
        self._opened_at = 0.0
        self._probes_failed = 0
        self._cycle_told = False

    @property
    def state(self) -> CircuitState:
        current = self._state()
        if current is not self._reported[0]:
            self._sync()  # an open period ended since the last look: report it now
        return current

    def _state(self) -> CircuitState:
        if not self._opened and self._authorized and self._config_error is None:
            return CircuitState.CLOSED
        if self._clock() >= self._retry_at and not self._probe_out:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    @property
    def authorized(self) -> bool:
        return self._authorized

    @property
    def config_error(self) -> str | None:
        """What shows that Amili is called at the wrong place (``None`` while it is not known to be)."""
        return self._config_error

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
        except AmiliUnauthorized as error:
            await self._record(success=False, probe=probe, refused=error)
            raise
        except AmiliMisconfigured as error:
            await self._record(success=False, probe=probe, misconfigured=error)
            raise
        except AmiliRateLimited:
            # Amili is up and asks for less: the rate budget and the limit slow down, the circuit
            # stays as it is (a probe refused so does not close it either).
            await self._record(success=None, probe=probe)
            raise
        except AmiliUnavailable as error:
            await self._record(success=False, probe=probe, failure=error)
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
                    self._sync()  # open again while the probe is out
                    return True
                # Poll at least twice a second, so that the open period ends on time whatever the clock.
                wait = 0.5 if self._probe_out else min(0.5, max(0.01, self._retry_at - self._clock()))
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=wait)

    async def _record(
        self,
        *,
        success: bool | None,
        probe: bool,
        refused: AmiliUnauthorized | None = None,
        misconfigured: AmiliMisconfigured | None = None,
        failure: AmiliUnavailable | None = None,
    ) -> None:
        async with self._changed:
            if probe:
                self._probe_out = False
            if success is True:
                self._failures = 0
                self._opened = False
                self._authorized = True
                self._config_error = None
            elif refused is not None:
                self._last_failure = _describe(refused)
                self._authorized = False
                self._retry_at = self._clock() + self._unauthorized_retry
            elif misconfigured is not None:
                self._last_failure = str(misconfigured)
                self._config_error = str(misconfigured)
                self._retry_at = self._clock() + self._misconfigured_retry
            elif success is False:
                self._last_failure = _describe(failure)
                self._failures += 1
                if probe or self._failures >= self._threshold:
                    if not self._opened or probe:
                        self._retry_at = self._clock() + self._open_seconds
                    self._opened = True
            if probe and success is False:
                self._probe_failed()
            self._changed.notify_all()
            self._sync()

    # reporting ----------------------------------------------------------------------------------

    def _sync(self) -> None:
        """Report what changed since the last report (log line, ``on_change``), and keep a timer
        for the end of the open period so that it is reported when it comes."""
        view: _View = (self._state(), self._authorized, self._config_error)
        before, self._reported = self._reported, view
        self._keep_timer(view[0])
        if view == before:
            return
        self._log_change(before, view)
        if self._on_change is not None:
            self._on_change(self)

    def _keep_timer(self, state: CircuitState) -> None:
        due = state is CircuitState.OPEN and not self._probe_out
        if not due:
            if self._wake is not None:
                self._wake.cancel()
                self._wake = None
            return
        if self._wake is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a read outside one): the next read reports it
            return
        delay = max(0.01, self._retry_at - self._clock())
        self._wake = loop.call_later(delay, self._woken)

    def _woken(self) -> None:
        self._wake = None
        self._sync()

    def _held(self) -> bool:
        return not self._authorized or self._config_error is not None

    def _probe_failed(self) -> None:
        self._probes_failed += 1
        if self._held():
            return  # said once, by the refusal or the configuration error
        level = logging.DEBUG if self._cycle_told else logging.INFO
        self._cycle_told = True
        log.log(
            level,
            "amili circuit open again: the probe failed",
            extra={"reason": self._last_failure, "retry_in_seconds": self._open_seconds},
        )

    def _log_change(self, before: _View, after: _View) -> None:
        state_before, authorized_before, config_before = before
        state, authorized, config_error = after
        held = not authorized or config_error is not None
        if authorized_before and not authorized:
            log.error(
                "amili refused the credentials: calls held back, consumption paused",
                extra={"reason": self._last_failure, "retry_every_seconds": self._unauthorized_retry},
            )
        elif authorized and not authorized_before:
            log.warning("amili accepts the credentials again")
        if config_error is not None and config_error != config_before:
            log.error(
                "amili configuration error: calls held back, consumption paused",
                extra={"detail": config_error, "retry_every_seconds": self._misconfigured_retry},
            )
        elif config_error is None and config_before is not None:
            log.warning("amili configuration error resolved", extra={"was": config_before})
        if state_before is CircuitState.CLOSED and state is not CircuitState.CLOSED:
            self._opened_at = self._clock()
            self._probes_failed = 0
            self._cycle_told = False
            if not held:
                log.warning(
                    "amili circuit open: calls held back, consumption paused",
                    extra={
                        "reason": f"{self._failures} failures in a row, the last: {self._last_failure}",
                        "retry_in_seconds": self._open_seconds,
                    },
                )
        elif state is CircuitState.CLOSED and state_before is not CircuitState.CLOSED:
            log.warning(
                "amili circuit closed: calls go out, consumption resumes",
                extra={
                    "open_seconds": round(self._clock() - self._opened_at, 1),
                    "probes_failed": self._probes_failed,
                },
            )
        elif state is CircuitState.HALF_OPEN and state_before is CircuitState.OPEN:
            level = logging.DEBUG if self._cycle_told or held else logging.INFO
            log.log(level, "amili circuit half-open: the next call probes Amili")
        elif state is CircuitState.OPEN and state_before is CircuitState.HALF_OPEN and self._probe_out:
            log.debug("amili circuit: the probe is out")


def _describe(error: BaseException | None) -> str:
    return "" if error is None else f"{error.__class__.__name__}: {error}"
