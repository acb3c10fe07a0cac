"""Flow control towards Amili on a simulated clock: the adaptive limit, the rate budget, the fair
queue and gate, and how the flow reads each call."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import statistics
from typing import Any

import pytest

from service.amili.client import rate_limit_answer
from service.flow.budget import RateBudget, RateLimitAnswer
from service.flow.control import AmiliFlow, FlowObserver
from service.flow.fair import FairGate, FairQueue
from service.flow.limit import AdaptiveLimit, FixedLimit, LimitSettings


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run_windows(
    limit: AdaptiveLimit,
    clock: Clock,
    latency: float,
    *,
    windows: int,
    in_flight: int | None = None,
    dropped_every: int = 0,
) -> list[int]:
    """Feed ``windows`` windows of 20 samples of ``latency``; the limit after each."""
    seen = []
    for window in range(windows):
        for sample in range(20):
            clock.advance(0.1 / 20 + 0.0001)
            dropped = bool(dropped_every) and sample == 0 and window % dropped_every == 0
            limit.sample(latency, in_flight=limit.limit if in_flight is None else in_flight, dropped=dropped)
        seen.append(limit.limit)
    return seen


SETTINGS = LimitSettings(initial=20, minimum=2, maximum=128, window_seconds=0.1, window_samples=10)


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_the_limit_rises_while_latency_stays_at_its_minimum(algorithm: str) -> None:
    clock = Clock()
    limit = AdaptiveLimit(_with(SETTINGS, algorithm=algorithm), clock)
    seen = run_windows(limit, clock, 0.05, windows=30)
    assert seen == sorted(seen)
    assert seen[-1] > 20
    assert limit.min_latency == pytest.approx(0.05)
    if algorithm == "gradient":
        assert seen[15] == 128  # √limit a window: to the top within about a dozen windows


def test_the_gradient_limit_reaches_the_maximum_and_stays_within_it() -> None:
    clock = Clock()
    limit = AdaptiveLimit(SETTINGS, clock)
    assert max(run_windows(limit, clock, 0.05, windows=60)) == 128


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_rising_latency_lowers_the_limit_to_its_minimum_at_most(algorithm: str) -> None:
    clock = Clock()
    limit = AdaptiveLimit(_with(SETTINGS, algorithm=algorithm, initial=64), clock)
    run_windows(limit, clock, 0.05, windows=60)  # the first probe (at 5 s) confirms the minimum
    assert limit.probes == 1
    before = limit.limit
    seen = run_windows(limit, clock, 0.5, windows=200)  # ten times the minimum: congested
    assert seen[0] < before
    # aimd ends at the minimum; the gradient where halving and √limit balance (4), never below
    assert seen[-1] == (2 if algorithm == "aimd" else 4)
    assert min(seen) >= 2


def test_the_gradient_settles_where_latency_is_near_its_tolerance() -> None:
    """A server of capacity 32 at 50 ms: a call waits in its queue beyond 32 in flight."""
    clock = Clock()
    limit = AdaptiveLimit(SETTINGS, clock)
    seen = []
    for _ in range(300):
        in_flight = limit.limit
        latency = 0.05 * max(1.0, in_flight / 32)  # Little's law past the capacity
        for _ in range(20):
            clock.advance(0.1 / 20 + 0.0001)
            limit.sample(latency, in_flight=in_flight)
        seen.append(limit.limit)
    assert limit.probes == 1  # the minimum unconfirmed for 30 s: measured again at the lowest limit
    assert limit.min_latency == pytest.approx(0.05)
    settled = [value for value in seen[100:] if value != SETTINGS.minimum]  # the probe's windows aside
    assert len(settled) >= len(seen[100:]) - 3
    # Full use, and latency below twice the minimum (tolerance 1.5 plus the √limit allowance).
    assert min(settled) >= 32
    assert max(settled) <= 2 * 32


def test_the_gradient_queues_at_most_its_allowance_beyond_the_tolerance() -> None:
    """Near Amili's capacity the limit settles at capacity times tolerance plus the queue allowance
    (4), not √limit: every call, a small creditor's too, waits in Amili's queue for the excess."""
    clock = Clock()
    settings = _with(SETTINGS, tolerance=1.25)
    limit = AdaptiveLimit(settings, clock)
    seen = []
    for _ in range(300):
        in_flight = limit.limit
        latency = 0.05 * max(1.0, in_flight / 32)
        for _ in range(20):
            clock.advance(0.1 / 20 + 0.0001)
            limit.sample(latency, in_flight=in_flight)
        seen.append(limit.limit)
    settled = [value for value in seen[100:] if value != settings.minimum]
    # 32 * 1.25 + 4 = 44 (√limit would settle near 47); never below the capacity
    assert min(settled) >= 40
    assert max(settled) <= 44 + 1


def test_a_refusal_lowers_the_limit_at_once_by_the_backoff() -> None:
    clock = Clock()
    limit = AdaptiveLimit(LimitSettings(initial=50, minimum=2, maximum=128, backoff=0.5), clock)
    limit.sample(0.05, in_flight=50, dropped=True)  # a refusal closes the window at once
    assert limit.limit == 25
    limit.sample(0.05, in_flight=25, dropped=True)
    assert limit.limit == 12


def test_timeouts_and_429s_lower_the_limit_even_at_minimum_latency() -> None:
    clock = Clock()
    limit = AdaptiveLimit(SETTINGS, clock)
    run_windows(limit, clock, 0.05, windows=20)
    high = limit.limit
    seen = run_windows(limit, clock, 0.05, windows=20, dropped_every=1)
    assert seen[-1] < high / 4


def test_an_unused_limit_does_not_grow() -> None:
    clock = Clock()
    limit = AdaptiveLimit(SETTINGS, clock)
    seen = run_windows(limit, clock, 0.05, windows=30, in_flight=3)  # far below half the limit
    assert set(seen) == {20}


def test_the_minimum_latency_is_forgotten_after_its_horizon() -> None:
    clock = Clock()
    limit = AdaptiveLimit(LimitSettings(initial=20, min_latency_seconds=5.0), clock)
    run_windows(limit, clock, 0.05, windows=5)
    assert limit.min_latency == pytest.approx(0.05)
    run_windows(limit, clock, 0.2, windows=80)  # Amili became slower for good: 8 s of it
    assert limit.min_latency == pytest.approx(0.2)


def test_a_minimum_measured_while_amili_queued_is_corrected_by_a_probe() -> None:
    """Started above Amili's capacity of 16: every call queues, the minimum is taken too high."""
    clock = Clock()
    limit = AdaptiveLimit(_with(SETTINGS, initial=32, min_latency_seconds=5.0), clock)
    for _ in range(200):  # 20 s
        in_flight = limit.limit
        for _ in range(20):
            clock.advance(0.1 / 20 + 0.0001)
            limit.sample(0.05 * max(1.0, in_flight / 16), in_flight=in_flight)
    assert limit.probes >= 1
    assert limit.min_latency == pytest.approx(0.05)
    assert limit.limit <= 2 * 16


def test_a_queued_start_is_found_out_within_seconds_though_it_confirms_itself() -> None:
    """Started at 32 against a capacity of 16, every window says 0.1 s: a steady queue that
    confirms the minimum it set. The first probe comes at 5 s anyway (32 → 16: the minimum falls
    towards 0.05 s); having found it lower, another follows 2 s later, and so on until a probe
    finds the minimum where it was."""
    clock = Clock()
    limit = AdaptiveLimit(_with(SETTINGS, initial=32), clock)  # the default horizon of 30 s
    for _ in range(150):  # 15 s
        in_flight = limit.limit
        for _ in range(20):
            clock.advance(0.1 / 20 + 0.0001)
            limit.sample(0.05 * max(1.0, in_flight / 16), in_flight=in_flight)
    assert limit.min_latency == pytest.approx(0.05)
    assert 2 <= limit.probes <= 4
    assert limit.limit <= 2 * 16
    probes = limit.probes
    run_windows(limit, clock, 0.052, windows=250)  # 25 s that confirm the minimum: no probe
    assert limit.probes == probes


def serve(limit: AdaptiveLimit, clock: Clock, *, capacity: int, seconds: float, shared: bool) -> list[int]:
    """A first-in-first-out server that works on ``capacity`` calls at once, 50 ms each, kept
    busy with the limit's calls for ``seconds``; the limit after each window of 20 calls."""
    seen = []
    end = clock.now + seconds
    while clock.now < end:
        in_flight = limit.limit
        latency = 0.05 * max(1.0, in_flight / capacity)
        for _ in range(20):
            clock.advance(latency / in_flight)  # throughput: in flight ÷ latency (Little's law)
            if shared:
                limit.creditors_share()
            limit.sample(latency, in_flight=in_flight)
        seen.append(limit.limit)
    return seen


def test_creditors_sharing_amili_keep_no_queue_there_while_one_alone_may() -> None:
    """A creditor alone: the gradient settles above the capacity of 16, at about its tolerance
    times it plus the allowance. Creditors sharing: at goodput times the minimum latency and a
    tenth, whatever the gradient says; when one is left the gradient takes over again."""
    clock = Clock()
    limit = AdaptiveLimit(_with(SETTINGS, initial=16), clock)
    alone = serve(limit, clock, capacity=16, seconds=20, shared=False)
    assert limit.min_latency == pytest.approx(0.05)
    assert statistics.median(alone[-50:]) >= 20
    assert not limit.shared
    together = serve(limit, clock, capacity=16, seconds=10, shared=True)
    assert limit.shared
    settled = together[-50:]
    assert min(settled) >= 16
    assert max(settled) <= 18  # 16 + a tenth + 1
    assert together[0] <= 18  # at once: the cap comes with the first window shared
    again = serve(limit, clock, capacity=16, seconds=10, shared=False)
    assert not limit.shared
    assert statistics.median(again[-50:]) >= 20


def test_creditors_sharing_from_a_low_limit_still_find_amilis_capacity() -> None:
    """Goodput times the minimum is what the calls in flight do now; the tenth more is how the
    limit finds the capacity from below."""
    clock = Clock()
    limit = AdaptiveLimit(_with(SETTINGS, initial=4, minimum=2), clock)
    seen = serve(limit, clock, capacity=40, seconds=15, shared=True)
    assert seen[0] <= 6
    assert 40 <= statistics.median(seen[-30:]) <= 45


def test_a_wait_for_the_rate_budget_lowers_the_limit_but_is_not_taken_for_amili_latency() -> None:
    """Amili answers in 0.05 s, but the rate budget holds each call back 0.25 s: the limit shrinks
    (invoices wait in the fair order, not behind the budget) while the minimum stays Amili's own,
    through the probes too."""
    clock = Clock()
    limit = AdaptiveLimit(_with(SETTINGS, initial=64), clock)
    for _ in range(150):  # 15 s: the first probe and those after it
        in_flight = limit.limit
        for _ in range(20):
            clock.advance(0.1 / 20 + 0.0001)
            limit.sample(0.3, in_flight=in_flight, waited=0.25)
    assert limit.probes >= 1
    assert limit.min_latency == pytest.approx(0.05)
    assert limit.limit <= 8


def test_a_probe_that_never_drains_gives_up_and_restores_the_limit() -> None:
    clock = Clock()
    limit = AdaptiveLimit(_with(SETTINGS, initial=40, min_latency_seconds=1.0), clock)
    run_windows(limit, clock, 0.05, windows=2, in_flight=40)
    while limit.probes == 0:  # congested: the limit falls, then the minimum is a second old
        before = limit.limit
        run_windows(limit, clock, 0.5, windows=1, in_flight=40)
    assert limit.limit == before // 2  # a probe halves the limit
    run_windows(limit, clock, 0.5, windows=48, in_flight=40)  # the calls never drain...
    assert limit.limit == before // 2
    run_windows(limit, clock, 0.5, windows=4, in_flight=40)  # ...and after 5 s the probe gives up
    assert limit.probes == 1
    assert before // 2 < limit.limit <= before  # back where it was, and adapting again


def test_no_samples_no_window() -> None:
    clock = Clock()
    limit = AdaptiveLimit(SETTINGS, clock)
    for _ in range(5):  # fewer than window_samples however long it takes
        clock.advance(10)
        limit.sample(0.05, in_flight=20)
    assert limit.windows == 0
    assert limit.limit == 20


def test_settings_refuse_inconsistent_bounds() -> None:
    with pytest.raises(ValueError, match="minimum"):
        LimitSettings(initial=200, maximum=128)
    with pytest.raises(ValueError, match="tolerance"):
        LimitSettings(tolerance=0.5)


def test_the_fixed_limit_never_moves() -> None:
    fixed = FixedLimit(128)
    fixed.sample(10.0, in_flight=128, dropped=True)
    assert fixed.limit == 128
    assert fixed.min_latency is None


# the rate budget ----------------------------------------------------------------------------------


def test_without_rate_headers_the_budget_holds_nothing_back() -> None:
    budget = RateBudget(Clock())
    for _ in range(1000):
        assert budget.wait_seconds() == 0
        budget.learn(RateLimitAnswer(), ticket=budget.take(), refused=False)
    assert budget.left is None


def spend(budget: RateBudget, clock: Clock, until: float) -> list[float]:
    """Send as soon as the budget lets a call go, until ``until``: when each call went."""
    sent = []
    while (at := clock.now + budget.wait_seconds()) < until:
        clock.now = at
        budget.take()
        sent.append(round(at - 1_000.0, 3))
    return sent


def test_the_budget_spreads_what_is_left_across_the_window_and_opens_again_at_the_reset() -> None:
    clock = Clock(1_000.0)
    budget = RateBudget(clock)
    ticket = budget.take()
    budget.learn(RateLimitAnswer(limit=5, remaining=4, resets_at=1_001.0), ticket=ticket, refused=False)
    sent = spend(budget, clock, until=1_001.0)
    # Four calls left for the second left: one at once, the others about a quarter second apart
    # (each may run a tenth of the time left ahead of the pace).
    assert sent == [0.0, 0.167, 0.475, 0.767]
    assert budget.wait_seconds() == pytest.approx(1.0 - 0.767, abs=1e-3)  # a fifth would be refused
    clock.now = 1_001.0
    assert budget.wait_seconds() == 0
    assert budget.left == 5  # the full allowance of the new window


def test_without_a_pace_what_is_left_goes_at_once() -> None:
    clock = Clock(1_000.0)
    budget = RateBudget(clock, pace_ahead=None)
    ticket = budget.take()
    budget.learn(RateLimitAnswer(limit=5, remaining=4, resets_at=1_001.0), ticket=ticket, refused=False)
    assert spend(budget, clock, until=1_001.0) == [0.0] * 4
    with pytest.raises(ValueError, match="pace_ahead"):
        RateBudget(clock, pace_ahead=1.0)


def test_calls_sent_after_an_answered_one_count_against_what_it_said() -> None:
    clock = Clock(1_000.0)
    budget = RateBudget(clock)
    first = budget.take()
    for _ in range(3):
        budget.take()  # sent before the first answer came
    budget.learn(RateLimitAnswer(limit=10, remaining=5, resets_at=1_001.0), ticket=first, refused=False)
    assert budget.left == 2


def test_other_replicas_spending_the_allowance_show_in_remaining() -> None:
    clock = Clock(1_000.0)
    budget = RateBudget(clock)
    budget.learn(
        RateLimitAnswer(limit=100, remaining=90, resets_at=1_001.0), ticket=budget.take(), refused=False
    )
    budget.learn(
        RateLimitAnswer(limit=100, remaining=0, resets_at=1_001.0), ticket=budget.take(), refused=False
    )
    assert budget.wait_seconds() == pytest.approx(1.0)


def test_more_callers_than_the_allowance_wait_for_the_next_windows() -> None:
    clock = Clock(1_000.0)
    budget = RateBudget(clock)
    budget.learn(
        RateLimitAnswer(limit=3, remaining=2, resets_at=1_000.5), ticket=budget.take(), refused=False
    )
    budget.learn(RateLimitAnswer(limit=3, remaining=2, resets_at=1_001.5), ticket=0, refused=False)
    clock.now = 1_001.5  # the window of 1 s (learnt from two resets) ends: 3 calls may go in it
    assert len(spend(budget, clock, until=1_002.5)) == 3
    assert budget.left == 0
    assert budget.wait_seconds() == pytest.approx(1_002.5 - clock.now)  # the others wait for the reset
    clock.advance(10.3)  # idle windows pass
    assert budget.wait_seconds() == 0
    assert budget.left == 3


def shared_allowance(
    replicas: int, *, pace_ahead: float | None, latency: float = 0.05, windows: int = 20
) -> tuple[float, float]:
    """Replicas sending as fast as their budgets let them (at most 16 calls in flight each) to an
    Amili that allows 300 calls a second to them all, counted when a call arrives and told in its
    answer ``latency`` later: the share of the allowance used, and the share of calls refused."""
    allowance, in_flight_limit, start = 300, 16, 1_000.3
    clock = Clock(start)
    budgets = [RateBudget(clock, pace_ahead=pace_ahead) for _ in range(replicas)]
    in_flight = [0] * replicas
    counted: dict[int, int] = {}
    admitted = refused = 0
    # (when, order, replica, answer): answer None is a replica trying to send
    events: list[tuple[float, int, int, tuple[int, RateLimitAnswer, bool] | None]] = []
    order = 0

    def at(when: float, replica: int, answer: tuple[int, RateLimitAnswer, bool] | None) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (when, order, replica, answer))

    for replica in range(replicas):
        at(start, replica, None)
    waiting = [True] * replicas
    while events and events[0][0] < start + windows:
        clock.now, _, replica, answer = heapq.heappop(events)
        budget = budgets[replica]
        if answer is not None:
            in_flight[replica] -= 1
            ticket, told, was_refused = answer
            budget.learn(told, ticket=ticket, refused=was_refused)
            if waiting[replica]:
                continue
        waiting[replica] = False
        while in_flight[replica] < in_flight_limit:
            if (wait := budget.wait_seconds()) > 0:
                at(clock.now + max(wait, 1e-6), replica, None)
                waiting[replica] = True
                break
            ticket = budget.take()
            window = int(clock.now)
            counted[window] = counted.get(window, 0) + 1
            ok = counted[window] <= allowance
            admitted, refused = admitted + ok, refused + (not ok)
            told = RateLimitAnswer(allowance, max(0, allowance - counted[window]), float(window + 1))
            in_flight[replica] += 1
            at(clock.now + latency, replica, (ticket, told, not ok))
    return admitted / (allowance * windows), refused / (admitted + refused)


def test_replicas_sharing_an_allowance_spend_it_without_refusals_when_paced() -> None:
    used, refused = shared_allowance(1, pace_ahead=0.1)
    assert used >= 0.97
    assert refused == 0
    used, refused = shared_allowance(3, pace_ahead=0.1)
    assert used >= 0.97
    assert refused < 0.01
    # Spent at once when each window opens, each replica counts only its own calls in flight
    # against the shared Remaining: the others' are refused.
    used, refused_at_once = shared_allowance(3, pace_ahead=None)
    assert refused_at_once > 5 * refused


def test_a_429_closes_the_budget_for_retry_after() -> None:
    clock = Clock(1_000.0)
    budget = RateBudget(clock)
    answer = RateLimitAnswer(limit=10, remaining=0, resets_at=1_001.0, retry_after=3.0)
    budget.learn(answer, ticket=budget.take(), refused=True)
    assert budget.wait_seconds() == pytest.approx(3.0)
    clock.advance(3.0)
    assert budget.wait_seconds() == 0


def test_a_429_whose_retry_after_is_the_reset_rounded_up_waits_for_the_reset() -> None:
    clock = Clock(1_000.0)
    budget = RateBudget(clock)
    answer = RateLimitAnswer(limit=10, remaining=0, resets_at=1_000.05, retry_after=1.0)
    budget.learn(answer, ticket=budget.take(), refused=True)
    assert budget.wait_seconds() == pytest.approx(0.05)  # not a whole second: the window ends then


def test_a_429_without_retry_after_waits_for_the_reset_or_a_second() -> None:
    clock = Clock(1_000.0)
    budget = RateBudget(clock)
    budget.learn(
        RateLimitAnswer(limit=10, remaining=0, resets_at=1_000.4), ticket=budget.take(), refused=True
    )
    assert budget.wait_seconds() == pytest.approx(0.4)
    clock.advance(1.0)
    budget.learn(RateLimitAnswer(), ticket=budget.take(), refused=True)
    assert budget.wait_seconds() == pytest.approx(1.0)


def test_an_answer_about_a_window_already_over_changes_nothing() -> None:
    clock = Clock(1_000.0)
    budget = RateBudget(clock)
    budget.learn(RateLimitAnswer(limit=10, remaining=0, resets_at=999.0), ticket=budget.take(), refused=False)
    assert budget.wait_seconds() == 0


def test_rate_headers_are_read_as_epoch_or_delta_and_garbage_is_ignored() -> None:
    epoch = rate_limit_answer(
        {"x-ratelimit-limit": "300", "x-ratelimit-remaining": "7", "x-ratelimit-reset": "2000000000"}, 200
    )
    assert epoch == RateLimitAnswer(limit=300, remaining=7, resets_at=2_000_000_000.0)
    delta = rate_limit_answer({"x-ratelimit-reset": "2", "retry-after": "5"}, 429)
    assert delta.resets_at is not None
    assert delta.resets_at > 1_000_000_000
    assert delta.retry_after == 5.0
    assert rate_limit_answer({"x-ratelimit-limit": "many", "retry-after": "5"}, 200) == RateLimitAnswer()
    assert rate_limit_answer({}, 200) == RateLimitAnswer()


# the fair queue and gate --------------------------------------------------------------------------


def test_the_fair_queue_takes_creditors_in_turn_and_each_in_order() -> None:
    queue: FairQueue[str] = FairQueue()
    for number in range(5):
        queue.push("big", f"big-{number}")
    queue.push("small", "small-0")
    queue.push("small", "small-1")
    queue.push("other", "other-0")
    taken = [queue.pop() for _ in range(len(queue))]
    assert taken == ["big-0", "small-0", "other-0", "big-1", "small-1", "big-2", "big-3", "big-4"]
    assert len(queue) == 0
    assert queue.keys == 0


def test_a_creditor_arriving_late_waits_one_turn_at_most() -> None:
    queue: FairQueue[int] = FairQueue()
    for number in range(10_000):
        queue.push("backlog", number)
    queue.pop()
    queue.push("late", -1)
    assert [queue.pop(), queue.pop()] == [1, -1]


def test_removing_items_keeps_the_rest_in_order() -> None:
    queue: FairQueue[tuple[str, int]] = FairQueue()
    for creditor in ("a", "b"):
        for number in range(3):
            queue.push(creditor, (creditor, number))
    removed = queue.remove(lambda item: item[0] == "a" or item[1] == 1)
    assert sorted(removed) == [("a", 0), ("a", 1), ("a", 2), ("b", 1)]
    assert [queue.pop() for _ in range(len(queue))] == [("b", 0), ("b", 2)]


async def test_the_gate_hands_freed_places_round_robin() -> None:
    gate = FairGate(lambda: 1)
    order: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.place("first"):
            await release.wait()

    async def waiter(creditor: str, number: int) -> None:
        async with gate.place(creditor):
            order.append(f"{creditor}-{number}")
            await asyncio.sleep(0)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(waiter("big", n)) for n in range(4)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(waiter("small", 0)))
    await asyncio.sleep(0)
    assert gate.waiting == 5
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == ["big-0", "small-0", "big-1", "big-2", "big-3"]
    assert gate.taken == 0


async def test_the_gate_follows_a_changing_limit_and_survives_cancelled_waiters() -> None:
    limit = [2]
    gate = FairGate(lambda: limit[0])
    inside = 0
    most = 0
    release = asyncio.Event()

    async def worker(creditor: str) -> None:
        nonlocal inside, most
        async with gate.place(creditor):
            inside += 1
            most = max(most, inside)
            await release.wait()
            inside -= 1

    tasks = [asyncio.create_task(worker(f"c{n % 3}")) for n in range(10)]
    await asyncio.sleep(0.01)
    assert inside == 2
    assert gate.waiting == 8
    tasks[5].cancel()  # a waiter abandoned (a rebalance)
    await asyncio.sleep(0.01)
    limit[0] = 6  # the limit grew: waiters come in at the next change of places
    async with gate.place("c9"):
        pass
    await asyncio.sleep(0.01)
    assert inside == 6
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert most == 6
    assert gate.taken == 0
    assert gate.waiting == 0


async def test_the_gate_tells_when_a_light_creditor_meets_a_backlog() -> None:
    async def holding(gate: FairGate, creditors: list[str]) -> tuple[bool, bool]:
        """Whether the gate is shared with each creditor's place asked for, and at the end."""
        release = asyncio.Event()

        async def worker(creditor: str) -> None:
            async with gate.place(creditor):
                await release.wait()

        tasks = [asyncio.create_task(worker(creditor)) for creditor in creditors]
        await asyncio.sleep(0)
        shared = gate.shared
        release.set()
        await asyncio.gather(*tasks)
        return shared, gate.shared

    one, two, four = FairGate(lambda: 1), FairGate(lambda: 2), FairGate(lambda: 4)
    assert not one.shared
    assert await holding(one, ["big"]) == (False, False)
    assert await holding(one, ["big", "big", "big"]) == (False, False)  # one creditor waiting
    assert await holding(two, ["big", "small"]) == (False, False)  # nobody waits
    assert await holding(one, ["small", "big", "big"]) == (True, False)  # a light one holds
    assert await holding(two, ["big", "small", "big"]) == (True, False)
    # Backlogs side by side, each waiting, take places in turn and wait behind each other alike;
    # a light creditor beside them (nothing waiting) is what counts.
    assert await holding(four, ["big", "other"] * 4) == (False, False)
    assert await holding(four, ["small"] + ["big", "other"] * 4) == (True, False)
    # A backlog holding its share with nothing waiting for a moment is no light creditor.
    eight = FairGate(lambda: 8)
    assert await holding(eight, ["big"] * 4 + ["other"] * 6) == (False, False)
    assert await holding(eight, ["big"] * 2 + ["other"] * 8) == (True, False)  # 2 ≤ 8 ÷ 2 ÷ 2


async def test_a_cancelled_waiter_still_queued_does_not_hide_a_light_creditor() -> None:
    """A cancelled waiter's future stays in the queue until its turn; its creditor no longer asks."""
    gate = FairGate(lambda: 2)
    release = asyncio.Event()

    async def worker(creditor: str) -> None:
        async with gate.place(creditor):
            await release.wait()

    tasks = [asyncio.create_task(worker(creditor)) for creditor in ("big", "small", "big")]
    gone = asyncio.create_task(worker("gone"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert gate.waiting == 2  # big's and the cancelled one
    assert gate.shared  # small holds one place and waits for none, beside big waiting
    release.set()
    await asyncio.gather(*tasks)
    assert not gate.shared


# the flow as the client reports to it ---------------------------------------------------------------


class Recorder(FlowObserver):
    def __init__(self) -> None:
        self.refusals = 0
        self.waited = 0.0

    def rate_limited(self) -> None:
        self.refusals += 1

    def budget_waited(self, seconds: float) -> None:
        self.waited += seconds


class SpyLimit:
    def __init__(self) -> None:
        self.samples: list[tuple[bool, int]] = []
        self.waits: list[float] = []
        self.told_shared: list[int] = []  # the samples before each time the creditors shared

    @property
    def limit(self) -> int:
        return 10

    @property
    def min_latency(self) -> float | None:
        return None

    def sample(self, seconds: float, *, in_flight: int, dropped: bool = False, waited: float = 0.0) -> None:
        self.samples.append((dropped, in_flight))
        self.waits.append(waited)

    def creditors_share(self) -> None:
        self.told_shared.append(len(self.samples))

    @property
    def shared(self) -> bool:
        return bool(self.told_shared)


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000.0)


async def test_the_flow_samples_answers_and_refusals_and_waits_for_the_budget(clock: Clock) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)

    spy, recorder = SpyLimit(), Recorder()
    flow = AmiliFlow(spy, budget=RateBudget(clock), observer=recorder, sleep=sleep, clock=clock)
    async with flow.call() as call:
        assert flow.calls_in_flight == 1
        call.answered(201, RateLimitAnswer(limit=2, remaining=0, resets_at=clock.now + 0.5))
    async with flow.call() as call:  # waits half a second for the window to end first
        call.answered(429, RateLimitAnswer(retry_after=2.0))
    async with flow.call() as call:  # refused: waits Retry-After
        call.answered(503, RateLimitAnswer())
    async with flow.call() as call:  # the window's allowance of 2, paced: half of its second
        call.timeout()  # less the tenth of the time left a call may run ahead
    async with flow.call():
        pass  # no answer at all (no connection): the window's allowance was spent, wait its end
    assert sleeps == [0.5, 2.0, pytest.approx(4 / 9), pytest.approx(5 / 9)]
    assert recorder.refusals == 1
    assert recorder.waited == pytest.approx(3.5)
    assert spy.samples == [(False, 1), (True, 1), (True, 1)]  # the 503 and the unanswered are no measure
    async with flow.call() as call:  # waits for the next window, then answered
        call.answered(201, RateLimitAnswer())
    assert spy.samples[-1] == (False, 1)
    assert spy.waits[-1] == pytest.approx(sleeps[-1])  # the wait for the budget is told apart
    assert spy.waits[-1] > 0
    assert flow.calls_in_flight == 0


def _with(settings: LimitSettings, **changes: Any) -> LimitSettings:
    return dataclasses.replace(settings, **changes)


async def test_without_a_budget_only_the_limit_hears_of_429s(clock: Clock) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    spy = SpyLimit()
    flow = AmiliFlow(spy, sleep=sleep, clock=clock)  # AMILI_RATE_BUDGET=false
    for _ in range(3):
        async with flow.call() as call:
            call.answered(
                429, RateLimitAnswer(limit=1, remaining=0, resets_at=clock.now + 5, retry_after=5.0)
            )
    assert sleeps == []
    assert spy.samples == [(True, 1)] * 3
    assert spy.told_shared == []
    assert not flow.shared


async def test_the_flow_tells_the_limit_whether_creditors_share_the_gate(clock: Clock) -> None:
    spy = SpyLimit()
    flow = AmiliFlow(spy, clock=clock)
    async with flow.place("small"), flow.call() as call:
        call.answered(201, RateLimitAnswer())
    # spy's limit is 10: "small" holds one place, "big" takes the other nine and waits for more
    async with contextlib.AsyncExitStack() as places:
        await places.enter_async_context(flow.place("small"))
        for _ in range(9):
            await places.enter_async_context(flow.place("big"))
        waiting = asyncio.create_task(places.enter_async_context(flow.place("big")))
        await asyncio.sleep(0)
        async with flow.call() as call:
            call.answered(201, RateLimitAnswer())
        clock.advance(0.06)  # the gate is looked at every 50 ms, not at every call's end
        async with flow.call() as call:
            call.answered(201, RateLimitAnswer())
        waiting.cancel()
    assert spy.told_shared == [2]  # told as the third call ended, not before
    assert flow.shared
