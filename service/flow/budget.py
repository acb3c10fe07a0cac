"""Amili's rate limit, learnt from its answers: one budget of calls for every call of an instance,
so that it stops sending before it is refused.

When Amili limits the rate, each answer says how many calls its window allows
(``X-RateLimit-Limit``), how many are left in it (``-Remaining``) and when it ends (``-Reset``); a
429 may add ``Retry-After``. The budget

- holds the calls left in the current window: what Amili last said, less the calls sent since
  that answer's call (Amili had not counted them yet);
- spreads them across the time left in the window: a call may run ahead of an even pace by a
  tenth of that time, no more;
- gives the full allowance again when the window ends, for a window as long as the last one
  (the shortest seen between two resets), until an answer says otherwise;
- lets nothing go after a 429 until the window's end, or until ``Retry-After`` has passed when
  that is later than the window's end rounded up to whole seconds (a penalty, not the window);
- never holds anything back while Amili sends none of those headers.

Replicas sharing one API key read the same ``Remaining``: each stops when the shared allowance is
spent, and none needs to know of the others. The pace is what makes that work without refusals:
spent at once when a window opens, each replica would count only its own calls in flight against
the shared ``Remaining`` and the others' would be refused; paced, ``n`` replicas each spend
``Remaining / time left``, so ``Remaining`` falls as ``(time left / window)^n``: what is left runs
out as the window does, and the calls in flight near its end are few. One replica paces evenly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

CLOSED_WITHOUT_RESET_SECONDS = 1.0
"""How long a 429 that names no moment to come back holds calls back."""
DEFAULT_WINDOW_SECONDS = 1.0
"""How long Amili's window is taken to be until two answers of consecutive windows tell."""
LONGEST_WINDOW_SECONDS = 3600.0
PACE_AHEAD_SHARE = 0.1
"""How far calls may run ahead of an even pace, as a share of the time left in the window: a
burst of a tenth of what is left goes at once."""


@dataclass(frozen=True, slots=True)
class RateLimitAnswer:
    """What one answer said of the rate limit (each part ``None`` when it did not say)."""

    limit: int | None = None
    remaining: int | None = None
    resets_at: float | None = None
    """When the window ends, on the budget's clock (seconds since the epoch)."""
    retry_after: float | None = None
    """Seconds to wait, from a 429's ``Retry-After``."""

    @property
    def says_anything(self) -> bool:
        return not (self.limit is None and self.remaining is None and self.resets_at is None)


class RateBudget:
    def __init__(
        self, clock: Callable[[], float] = time.time, *, pace_ahead: float | None = PACE_AHEAD_SHARE
    ) -> None:
        """``pace_ahead``: how far calls may run ahead of an even pace, as a share of the time
        left in the window (``None``: no pace, what is left goes at once)."""
        if pace_ahead is not None and not 0 <= pace_ahead < 1:
            raise ValueError("pace_ahead must be at least 0 and below 1")
        self._clock = clock
        self._pace_ahead = pace_ahead
        self._allowance: int | None = None
        self._left: int | None = None
        self._resets_at: float | None = None
        self._closed_until = 0.0
        self._sent = 0
        self._window: float | None = None  # learnt: the shortest time seen between two resets
        self._paced_until = 0.0  # when the calls sent so far would have gone at an even pace

    @property
    def left(self) -> int | None:
        """Calls left in the current window (``None``: no limit known)."""
        return self._left

    def wait_seconds(self) -> float:
        """How long the next call must wait (0: it may go now)."""
        now = self._clock()
        if now < self._closed_until:
            return self._closed_until - now
        self._roll(now)
        if self._left is None or self._resets_at is None:
            return 0.0
        if self._left <= 0:
            return self._resets_at - now
        share = self._pace_ahead
        if share is None:
            return 0.0
        # The moment t the pace catches up: paced_until - t = share * (resets_at - t).
        return max(0.0, (self._paced_until - share * self._resets_at) / (1 - share) - now)

    def take(self) -> int:
        """A call goes now: counted against the window. Returns its ticket, for ``learn``."""
        now = self._clock()
        self._roll(now)
        if self._left is not None:
            if self._resets_at is not None:
                pace = max(0.0, self._resets_at - now) / max(1, self._left)
                self._paced_until = max(self._paced_until, now) + pace
            self._left = max(0, self._left - 1)
        self._sent += 1
        return self._sent

    def learn(self, answer: RateLimitAnswer, *, ticket: int, refused: bool) -> None:
        """What the answer to the call with ``ticket`` said; ``refused``: it was a 429."""
        now = self._clock()
        if refused:
            resets_at, retry_after = answer.resets_at, answer.retry_after
            if (
                resets_at is not None
                and resets_at > now
                and (retry_after is None or retry_after < resets_at - now + 1)
            ):
                # Retry-After counts whole seconds: 1 when the window ends in 50 ms. Waiting for
                # it would skip most of the next window (with several replicas all of them, now
                # and then, and a window's worth of the allowance with them).
                reopens = resets_at
            elif retry_after is not None:
                reopens = now + retry_after
            else:
                reopens = now + CLOSED_WITHOUT_RESET_SECONDS
            self._closed_until = max(self._closed_until, reopens)
        if not answer.says_anything:
            return
        if answer.limit is not None:
            self._allowance = answer.limit
        if answer.resets_at is not None and answer.resets_at <= now:
            return  # about a window already over
        if answer.remaining is None:
            return
        sent_since = self._sent - ticket
        told = max(0, answer.remaining - sent_since)
        same_window = answer.resets_at is None or answer.resets_at == self._resets_at
        self._left = min(self._left, told) if same_window and self._left is not None else told
        if answer.resets_at is not None:
            if (
                self._resets_at is not None
                and 0 < answer.resets_at - self._resets_at <= LONGEST_WINDOW_SECONDS
            ):
                between = answer.resets_at - self._resets_at
                self._window = between if self._window is None else min(self._window, between)
            self._resets_at = answer.resets_at

    def _roll(self, now: float) -> None:
        """A window that has ended gives way to the next, with the full allowance and the same
        length (until an answer tells otherwise): when more calls wait than the window allows, only
        the allowance goes, the others wait for the next reset instead of being refused."""
        if self._resets_at is not None and now >= self._resets_at:
            window = self._window or DEFAULT_WINDOW_SECONDS
            self._resets_at += window * (1 + int((now - self._resets_at) // window))
            self._left = self._allowance
