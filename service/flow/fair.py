"""Fair order across creditors: round robin over the creditors with work waiting.

One creditor's month-end batch must not hold every other creditor's invoices behind it: what
waits is taken one creditor at a time, in turn, and within a creditor in arrival order. A
creditor with one invoice waiting thus waits at most one turn of the creditors waiting, however
much another has queued; a creditor alone gets every place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Items waiting, taken round robin across their keys, in arrival order within a key."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}
        self._turns: deque[str] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def keys(self) -> int:
        """How many keys have something waiting."""
        return len(self._queues)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has something waiting."""
        return key in self._queues

    def push(self, key: str, item: T) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)  # a key new to the queue takes its turn after those waiting
        queue.append(item)
        self._size += 1

    def pop(self) -> T:
        """The next item in turn (``IndexError`` when nothing waits)."""
        key = self._turns.popleft()
        queue = self._queues[key]
        item = queue.popleft()
        if queue:
            self._turns.append(key)
        else:
            del self._queues[key]
        self._size -= 1
        return item

    def remove(self, predicate: Callable[[T], bool]) -> list[T]:
        """Take out every item ``predicate`` holds for, in queue order within each key."""
        removed: list[T] = []
        for key in list(self._turns):
            queue = self._queues[key]
            kept = deque(item for item in queue if not predicate(item))
            removed.extend(item for item in queue if predicate(item))
            if kept:
                self._queues[key] = kept
            else:
                del self._queues[key]
                self._turns.remove(key)
        self._size -= len(removed)
        return removed


class FairGate:
    """At most ``limit()`` places taken at once; whoever waits gets a freed place in turn of its
    key. The limit may change at any time: a smaller one takes effect as places are given back,
    a larger one at the next place taken or given back."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._taken = 0
        self._waiting: FairQueue[asyncio.Future[None]] = FairQueue()
        self._asking: Counter[str] = Counter()  # places held and waited for, by key

    @property
    def taken(self) -> int:
        return self._taken

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def shared(self) -> bool:
        """Whether a light key meets one that waits for a place: a small creditor beside a backlog,
        whose calls must not queue at Amili behind the backlog's. A key is light with nothing
        waiting and at most half its share of places (the limit over the keys asking), or one:
        backlogs side by side hold their shares, though each may have nothing waiting for a moment.
        A look at every key asking, so not for every call."""
        asking, waiting = self._asking, self._waiting
        if not waiting.keys or len(asking) < 2:  # a cancelled waiter's key may still be queued
            return False
        light = max(1.0, self._limit() / (2 * len(asking)))
        return any(count <= light and key not in waiting for key, count in asking.items())

    @contextlib.asynccontextmanager
    async def place(self, key: str) -> AsyncIterator[None]:
        asking = self._asking
        asking[key] += 1
        try:
            await self._acquire(key)
            try:
                yield
            finally:
                self._taken -= 1
                self._wake()
        finally:
            asking[key] -= 1
            if not asking[key]:
                del asking[key]

    async def _acquire(self, key: str) -> None:
        if not self._waiting and self._taken < self._limit():
            self._taken += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.push(key, future)
        self._wake()  # places may be free (the limit grew, or the waiters ahead went away)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # The place was handed over as the waiter was cancelled: give it back.
                self._taken -= 1
                self._wake()
            raise

    def _wake(self) -> None:
        while self._waiting and self._taken < self._limit():
            future = self._waiting.pop()
            if future.done():  # its waiter was cancelled
                continue
            self._taken += 1
            future.set_result(None)
