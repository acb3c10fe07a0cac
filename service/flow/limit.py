"""The adaptive limit of calls at Amili at once, learnt from latency and refusals.

Little's law: the calls Amili can work on at once are its throughput times its latency. A call
beyond that only waits, in Amili's queue (latency grows, throughput does not) or for a refusal
(429). So the limit is found from what the calls measure, a window of samples at a time:

- the **minimum latency** is the lowest window median: what a call costs when nothing queues.
  It is measured afresh by a **probe** (as TCP BBR's ProbeRTT does): the limit halves until the
  calls under way have drained, and the next window's median is the minimum. The first probe comes
  5 s after the start, whatever the windows before said: a start above Amili's capacity queues
  from the first call, and a queue that stays as long confirms itself. A probe that finds the
  minimum more than 10% lower than it was is followed by another 2 s later (the limit has fallen
  meanwhile, so the next half is nearer an empty queue); after that, a window near the minimum
  (within 10%) confirms it, and only when none has for ``min_latency_seconds`` (Amili has been
  saturated all along, or became slower for good) is there another probe. A probe lasts two
  windows or so;
- **gradient** (the default): ``limit * clamp(tolerance * minimum / latency, ½, 1) + allowance``,
  smoothed, where the allowance is √limit up to ``QUEUE_ALLOWANCE`` calls. While latency stays
  within ``tolerance`` times the minimum the limit grows by √limit a window; past it, it shrinks
  in proportion to the excess, and settles where the two balance: at Amili's capacity times the
  tolerance, plus the allowance. Netflix's concurrency-limits (Gradient, Gradient2's queue size)
  and Envoy's adaptive concurrency filter work this way;
- **aimd**: one more a window while latency stays within ``tolerance`` times the minimum, else
  times ``backoff`` (TCP's congestion avoidance, Netflix's AIMD limit). Measured against the
  gradient in ``bench/adaptive.py`` (docs/performance.md): both keep goodput within 2-3% of the
  bound, but AIMD backs off at every noisy window and settles below Amili's capacity (a limit of
  20-24 against 32), where a probe's half no longer carries the load: p99 at 80% load 4-5 times
  the unloaded one, against 1.3-1.8 times with the gradient, which settles a little above the
  capacity. Hence the gradient by default;
- either way, a window with a refusal (429) or a timeout multiplies the limit by ``backoff``;
- **shared**: while a light creditor (nothing waiting for a place, at most half its share of
  places) meets one that waits at the fair gate, and for ``SHARED_SECONDS`` after, the limit is
  at most goodput times the minimum latency (what Amili works on at once, by Little's law) and a
  tenth more to find out whether Amili can take more, as TCP BBR keeps in flight. The gate orders
  calls before Amili, but Amili's own queue is first in, first out: the calls the gradient keeps
  queued there would be in front of the light creditor's every call. A backlog alone, or
  backlogs side by side, only wait behind their own; for them the gradient's allowance buys
  throughput where Amili's latency grows with load short of a queue (``bench/adaptive.py``'s
  scenario B on a host whose cores Amili shares);
- the limit grows only while it is used (at least half of it in flight), so that an instance with
  little to do never claims a limit it has not tried; ``minimum ≤ limit ≤ maximum`` always.

A sample's latency is the whole wait of a call, the wait for the rate budget included: when
Amili's rate limit is what bounds throughput, that wait grows and the limit shrinks towards rate
times latency, so that invoices wait for a place in the fair order instead of behind the budget.
The minimum, though, is Amili's part alone (the wait for the budget left out): a probe while the
budget holds calls back would otherwise take that wait for Amili's latency, and the limit would
grow again towards ``MAX_IN_FLIGHT`` with the calls queueing at the budget, in arrival order.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Algorithm = Literal["gradient", "aimd"]
CONFIRMS_MINIMUM = 1.1
"""A window whose median latency is within this factor of the minimum shows it still holds."""
PROBE_GIVE_UP_SECONDS = 5.0
FIRST_PROBE_SECONDS = 5.0
NEXT_PROBE_SECONDS = 2.0
"""After a probe that found the minimum lower: time for the limit to settle on it, then the next."""
PROBE_SHARE = 2
"""A probe halves the limit: the gradient settles within about 1.5 times Amili's capacity, so half
of it drains Amili's queue, while throughput keeps half or more for the two windows or so it lasts
(at a quarter, the events arriving meanwhile queued long enough to set the p99 of
``bench/adaptive.py``; a first minimum far off is corrected by the probes that follow)."""
QUEUE_ALLOWANCE = 4.0
"""The most calls the gradient lets queue at Amili beyond the tolerance, to find out whether
Amili can take more (Netflix's Gradient2 queues 4 too). √limit alone, as Envoy allows, settled at 47-51
calls against a capacity of 32 in ``bench/adaptive.py``'s scenario C: every call, a small creditor's
too, waited about 30 ms in Amili's queue, the largest part of its p99 beyond the 2 times alone that
fairness allows."""
SHARED_SECONDS = 1.0
"""Creditors count as sharing Amili for this long after the gate last showed a light creditor
beside a waiting one (a small creditor's invoices come one at a time, with gaps between them)."""
SHARED_GAIN = 1.1
"""While creditors share Amili, the calls it works on at once and this share more: below Amili's
capacity the limit grows by a tenth a window until it reaches it; at it, about 3 calls of 32 queue
(``bench/adaptive.py``'s scenario C: 0-4 while the small creditor sent)."""
ALGORITHMS: tuple[Algorithm, ...] = ("gradient", "aimd")


@dataclass(frozen=True, slots=True)
class LimitSettings:
    initial: int = 32
    minimum: int = 2
    maximum: int = 128
    algorithm: Algorithm = "gradient"
    tolerance: float = 1.25
    """Latency up to this many times the minimum is not taken for congestion."""
    backoff: float = 0.9
    """What the limit is multiplied by after a refusal or a timeout (and by aimd on congestion)."""
    smoothing: float = 0.2
    """How much of the gradient's new value is taken at each window."""
    window_seconds: float = 0.1
    """A window lasts at least this long, and at least twice the minimum latency."""
    window_samples: int = 10
    """...and holds at least this many samples (a refusal closes it at once)."""
    min_latency_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.initial <= self.maximum:
            raise ValueError(
                f"the limits must satisfy 1 <= minimum ({self.minimum}) <= initial ({self.initial}) "
                f"<= maximum ({self.maximum})"
            )
        if self.tolerance < 1:
            raise ValueError("tolerance must be at least 1")
        if not 0 < self.backoff < 1:
            raise ValueError("backoff must be between 0 and 1")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}")


class FixedLimit:
    """The limit that never moves (``AMILI_CONCURRENCY=fixed``): ``MAX_IN_FLIGHT``, as before."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def min_latency(self) -> float | None:
        return None

    def sample(self, seconds: float, *, in_flight: int, dropped: bool = False, waited: float = 0.0) -> None:
        return None

    def creditors_share(self) -> None:
        return None

    @property
    def shared(self) -> bool:
        return False


class AdaptiveLimit:
    def __init__(self, settings: LimitSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._limit = float(settings.initial)
        self._started = clock()
        self._latencies: list[float] = []
        self._at_amili: list[float] = []  # the same less the wait for the rate budget
        self._dropped = False
        self._most_in_flight = 0
        self._min_latency: float | None = None
        self._min_seen_at = 0.0
        self._probe_due: float | None = None  # a probe comes then, whatever the windows say
        self._probe_started: float | None = None
        self._limit_before_probe = self._limit
        self._probe_limit = settings.minimum
        self._shared_cap: int | None = None
        self._shared_until = -math.inf
        self.windows = 0
        self.probes = 0

    @property
    def limit(self) -> int:
        if self._probe_started is not None:
            return self._probe_limit
        settings = self._settings
        limit = min(settings.maximum, int(self._limit))
        cap = self._cap_in_force()
        return max(settings.minimum, limit if cap is None else min(limit, cap))

    @property
    def shared(self) -> bool:
        """Whether creditors share Amili, so that the limit keeps no queue there."""
        return self._clock() < self._shared_until

    @property
    def min_latency(self) -> float | None:
        return self._min_latency

    def creditors_share(self) -> None:
        """A light creditor meets one that waits at the fair gate now: keep no queue at Amili for
        ``SHARED_SECONDS``."""
        self._shared_until = self._clock() + SHARED_SECONDS

    def sample(self, seconds: float, *, in_flight: int, dropped: bool = False, waited: float = 0.0) -> None:
        """One call ended after ``seconds``, with ``in_flight`` calls under way (itself included);
        ``dropped``: it was refused (429) or timed out; ``waited``: of those seconds, spent waiting
        for the rate budget (here, not at Amili)."""
        now = self._clock()
        if dropped:
            self._dropped = True
        else:
            self._latencies.append(seconds)
            self._at_amili.append(seconds - waited)
        self._most_in_flight = max(self._most_in_flight, in_flight)
        if not self._dropped and (
            now - self._started < self._window_length()
            or len(self._latencies) < self._settings.window_samples
        ):
            return
        self._close_window(now)

    def _window_length(self) -> float:
        minimum = self.min_latency
        return max(self._settings.window_seconds, 2 * minimum if minimum is not None else 0.0)

    def _close_window(self, now: float) -> None:
        # The median, not the mean: one slow call in a heavy tail (Amili's p99 can be ten times its
        # median) must not read as congestion, nor a window of few calls set the minimum.
        # The minimum is Amili's alone; the limit follows the whole wait (see the module's docstring).
        latency = statistics.median(self._latencies) if self._latencies else None
        at_amili = statistics.median(self._at_amili) if self._at_amili else None
        if self._probe_started is not None:
            self._probing(now, at_amili)
        else:
            self._shared_cap = self._cap_for_sharing(latency)
            self._adapt(now, latency, at_amili)
        self._started = now
        self._latencies, self._at_amili, self._dropped, self._most_in_flight = [], [], False, 0
        self.windows += 1

    def _adapt(self, now: float, latency: float | None, at_amili: float | None) -> None:
        settings = self._settings
        minimum = self._min_latency
        if latency is not None and at_amili is not None:
            if minimum is None:
                self._min_latency, self._min_seen_at = at_amili, now
                self._probe_due = now + FIRST_PROBE_SECONDS
            else:
                self._min_latency = min(minimum, at_amili)
                if at_amili <= CONFIRMS_MINIMUM * self._min_latency:
                    self._min_seen_at = now  # still reachable: the minimum holds
            due = self._probe_due is not None and now >= self._probe_due
            if due or now - self._min_seen_at > settings.min_latency_seconds:
                self._start_probe(now)
                return
            minimum = self._min_latency
        limit = self._limit
        if self._dropped:
            limit *= settings.backoff
        elif latency is not None and minimum is not None:
            used = self._most_in_flight * 2 >= self.limit
            congested = latency > settings.tolerance * minimum
            if settings.algorithm == "aimd":
                if congested:
                    limit *= settings.backoff
                elif used:
                    limit += 1
            else:
                gradient = max(0.5, min(1.0, settings.tolerance * minimum / latency))
                if gradient < 1.0:
                    target = limit * gradient + min(math.sqrt(limit), QUEUE_ALLOWANCE)
                    limit = (1 - settings.smoothing) * limit + settings.smoothing * target
                elif used:
                    limit += math.sqrt(limit)  # unsmoothed: from 32 to 128 in about 11 windows
        cap = self._cap_in_force()
        if cap is not None:
            limit = min(limit, float(cap))
        self._limit = max(float(settings.minimum), min(float(settings.maximum), limit))

    def _cap_in_force(self) -> int | None:
        return self._shared_cap if self._shared_cap is not None and self.shared else None

    def _cap_for_sharing(self, latency: float | None) -> int | None:
        """What Amili works on at once, and a tenth more (at least one) to find out whether it can
        take more. By Little's law that is goodput times the minimum latency: the calls in flight
        times the minimum over the window's latency (the calls beyond it queue)."""
        if latency is None or self._min_latency is None:
            return self._shared_cap
        in_flight = min(self.limit, self._most_in_flight)
        at_once = in_flight * min(1.0, self._min_latency / latency)
        return max(self._settings.minimum, round(at_once) + max(1, int((SHARED_GAIN - 1) * at_once)))

    def _start_probe(self, now: float) -> None:
        """The minimum is due to be measured again: Amili may have become slower for good, or the
        minimum was measured while Amili was already queueing. Measure it with half the calls in
        flight, for as long as the calls under way take to drain and one window more."""
        self._probe_limit = max(self._settings.minimum, self.limit // PROBE_SHARE)  # before probing
        self._probe_started = now
        self._limit_before_probe = self._limit
        self.probes += 1

    def _probing(self, now: float, latency: float | None) -> None:
        assert self._probe_started is not None
        drained = self._most_in_flight <= self._probe_limit
        if latency is not None and drained:
            previous = self._min_latency
            lowered = previous is not None and latency * CONFIRMS_MINIMUM < previous
            self._min_latency, self._min_seen_at = latency, now
            self._probe_due = now + NEXT_PROBE_SECONDS if lowered else None
        elif now - self._probe_started < PROBE_GIVE_UP_SECONDS:
            return  # the calls from before the probe are still under way
        else:
            self._min_seen_at = now  # never drained (Amili hangs?): try again a horizon later
            self._probe_due = None
        self._probe_started = None
        self._limit = self._limit_before_probe
