"""Fault injection on the emulator's API routes (never on ``/_admin/*`` nor ``/openapi.json``).

Configured by settings (``AMILI_EMULATOR_*``, see ``FaultConfig``'s fields) and at run time through
``GET/PUT/PATCH /_admin/faults`` (PUT replaces the whole configuration, fields left out taking their
defaults, which inject nothing; PATCH changes the fields given). Per request, in this order:

1. Rate limit (``rate_limit`` > 0; like a gateway, before anything else): each client may send
   ``max(1, round(rate_limit * rate_limit_window_seconds))`` requests per fixed window of
   ``rate_limit_window_seconds``, windows aligned on the epoch clock (a window starts at
   ``floor(now / w) * w``). The client is who the ``x-api-key`` names (``Authenticator.client_of``:
   a static key, or the api code of an access token or of a JWT; never the key itself in a log or
   an answer). A request over the allowance is answered 429 at once (Eve's JSON shape) with
   ``X-RateLimit-Limit`` (the allowance), ``X-RateLimit-Remaining: 0``, ``X-RateLimit-Reset`` (the
   window's end, integer epoch seconds) and, when ``rate_limit_retry_after``, ``Retry-After`` (the
   seconds left in the window, rounded up, at least 1); it uses none of the allowance and takes no
   place in the capacity queue. Every admitted request's answer, whatever it is, carries
   ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` (the allowance left in its window after it) and
   ``X-RateLimit-Reset`` (replacing those of an injected ``throttle_rate`` 429). With ``rate_limit``
   0 (the default) no such header is added.
2. Capacity (``capacity`` > 0): at most ``capacity`` requests are worked on at once; the others wait
   for a place in arrival (FIFO) order, so their latency grows. A request holds its place through
   the steps below (the injected latency included, so throughput tops out at capacity / latency)
   until its answer is sent; a hang gives its place back once the request was handled. 0 (the
   default): no limit. ``GET /_admin/load`` counts requests, rate-limited 429s, requests in service
   and queued, the maxima of those two, the requests served and the seconds they held their places
   (``service_seconds / served`` is the mean time in service: the injected latency and the
   handling; ``DELETE /_admin/load`` starts the counts again).
3. ``fail_next_count``: while above 0, the request is answered ``fail_next_status`` and the count
   goes down by one (before the request is handled).
4. Latency: ``latency_ms`` fixed, plus, when ``latency_median_ms`` > 0, a log-normal delay with that
   median and ``latency_p99_ms`` as its 99th percentile (heavy-tailed; e.g. 50 and 500).
5. One draw decides among, with these probabilities: ``throttle_rate`` (429 with ``Retry-After:
   retry_after_seconds`` and ``X-RateLimit-*``), ``error_500_rate``, ``error_502_rate``,
   ``error_503_rate``, ``hang_rate``; else the request is served. ``error_after_store_ratio`` of the
   500/502/503s come after the request was handled (a POST's registration stored, its answer lost).
   A hang handles the request (a POST's registration is stored) and then never answers: in mode
   ``sleep`` the answer is held for ``hang_seconds`` (sent then, unless the client has gone, or
   sooner when the emulator stops), in mode ``reset`` the status line and headers go out and the
   connection is dropped halfway through the body (over a socket the client sees the connection
   close; in process, through ``httpx.ASGITransport``, ``ConnectionDropped``, an
   ``httpx.RemoteProtocolError``, is raised to it).

Bodies: 502, 503 and 504 come as a gateway's HTML page; other statuses in Eve's JSON shape.
``fault_seed`` seeds the random generator: with one client sending one request at a time, a run
is reproducible.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devkit.emulator.auth import key_digest
from devkit.emulator.settings import EmulatorSettings

_Z99 = 2.3263478740408408  # the standard normal's 99th percentile
_HOUR_MS = 3_600_000
_GATEWAY_STATUSES = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}
_MESSAGES = {
    400: "The browser (or proxy) sent a request that this server could not understand.",
    401: "Please provide proper credentials",
    403: "You don't have the permission to access the requested resource.",
    404: "The requested URL was not found on the server.",
    409: "Conflict",
    429: "Rate limit exceeded",
    500: "The server encountered an internal error and was unable to complete your request.",
}


def is_api_path(path: str) -> bool:
    return not path.startswith("/_admin") and path != "/openapi.json"


class FaultConfig(BaseModel):
    """What the fault injector does; the fields are the settings of the same names."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0, le=_HOUR_MS, description="Fixed delay before each answer")
    latency_median_ms: float = Field(
        default=0.0, ge=0, le=_HOUR_MS, description="Median of an extra log-normal delay"
    )
    latency_p99_ms: float = Field(
        default=0.0, ge=0, le=_HOUR_MS, description="99th percentile of the log-normal delay"
    )
    error_500_rate: float = Field(default=0.0, ge=0, le=1)
    error_502_rate: float = Field(default=0.0, ge=0, le=1)
    error_503_rate: float = Field(default=0.0, ge=0, le=1)
    error_after_store_ratio: float = Field(
        default=0.0, ge=0, le=1, description="Share of injected 500/502/503 given after handling"
    )
    throttle_rate: float = Field(default=0.0, ge=0, le=1, description="Share of requests answered 429")
    retry_after_seconds: int = Field(default=1, ge=0)
    hang_rate: float = Field(default=0.0, ge=0, le=1, description="Share handled but never answered")
    hang_mode: Literal["sleep", "reset"] = "sleep"
    hang_seconds: float = Field(default=3600.0, ge=0, le=86_400)
    fail_next_count: int = Field(default=0, ge=0, description="Answer the next N requests fail_next_status")
    fail_next_status: int = Field(default=503, ge=400, le=599)
    fault_seed: int | None = None
    capacity: int = Field(
        default=0, ge=0, description="Requests worked on at once, the others queue in order (0: no limit)"
    )
    rate_limit: float = Field(
        default=0.0, ge=0, description="Requests per second allowed per API key, else 429 (0: no limit)"
    )
    rate_limit_window_seconds: int = Field(
        default=1, ge=1, description="The rate limit's fixed window, aligned on the epoch clock"
    )
    rate_limit_retry_after: bool = Field(
        default=True, description="Whether the rate limit's 429s carry Retry-After"
    )

    @model_validator(mode="after")
    def _consistent(self) -> FaultConfig:
        if (
            self.throttle_rate
            + self.error_500_rate
            + self.error_502_rate
            + self.error_503_rate
            + self.hang_rate
            > 1 + 1e-9
        ):
            raise ValueError("the rates of throttle, 500, 502, 503 and hang add up to more than 1")
        if self.latency_median_ms > 0 and 0 < self.latency_p99_ms < self.latency_median_ms:
            raise ValueError("latency_p99_ms is below latency_median_ms")
        return self

    @classmethod
    def from_settings(cls, settings: EmulatorSettings) -> FaultConfig:
        return cls.model_validate({name: getattr(settings, name) for name in cls.model_fields})


@dataclass(frozen=True)
class Decision:
    delay_seconds: float = 0.0
    status: int | None = None  # answer this status instead of the real answer
    after_handling: bool = False  # ... after the request was handled
    hang: bool = False


@dataclass(frozen=True)
class Quota:
    """The rate limit's verdict on one request, and the X-RateLimit-* headers that tell it."""

    admitted: bool
    limit: int  # the allowance of a window
    remaining: int  # left in the window after this request
    reset: int  # when the window ends, epoch seconds
    retry_after: int  # seconds until then, rounded up, at least 1

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


class RateLimiter:
    """Fixed windows aligned on the epoch clock, a count per client in the current window."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._window: tuple[int, int] | None = None  # (start, length) of the window counted
        self._counts: dict[str, int] = {}

    def take(self, client: str, rate: float, window_seconds: int) -> Quota:
        """Count a request of ``client`` if its allowance has room (a refused one is not counted)."""
        now = self._clock()
        start = math.floor(now / window_seconds) * window_seconds
        end = start + window_seconds
        if self._window != (start, window_seconds):
            self._window, self._counts = (start, window_seconds), {}
        allowance = max(1, round(rate * window_seconds))
        used = self._counts.get(client, 0)
        retry_after = max(1, math.ceil(end - now))
        if used >= allowance:
            return Quota(False, allowance, 0, end, retry_after)
        self._counts[client] = used + 1
        return Quota(True, allowance, allowance - used - 1, end, retry_after)


class Capacity:
    """How many requests are in service (at most ``limit``, 0: no limit) and the FIFO queue of the
    others, with the maxima of both; and how long the requests served held their places (the
    latency and the handling: what bounds throughput at ``limit`` places)."""

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.in_service = 0
        self.max_in_service = 0
        self.max_queued = 0
        self.served = 0
        self.service_seconds = 0.0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(not waiting.done() for waiting in self._waiting)

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._admit()

    def reset_counts(self) -> None:
        self.max_in_service, self.max_queued = self.in_service, self.queued
        self.served, self.service_seconds = 0, 0.0

    async def acquire(self) -> None:
        """Wait for a place (behind those who came first); ``release`` gives it back."""
        if not self._waiting and self._has_room():
            self._enter()
            return
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(place)
        self.max_queued = max(self.max_queued, self.queued)
        try:
            await place
        except asyncio.CancelledError:
            if place.cancelled():
                if place in self._waiting:
                    self._waiting.remove(place)
            else:  # given a place just as it was cancelled: pass the place on
                self.release()
            raise

    def release(self, held_seconds: float | None = None) -> None:
        """A place is given back; ``held_seconds``: by a request served that long (``None``: by
        one cancelled as it was given the place)."""
        self.in_service -= 1
        if held_seconds is not None:
            self.served += 1
            self.service_seconds += held_seconds
        self._admit()

    def _has_room(self) -> bool:
        return self.limit == 0 or self.in_service < self.limit

    def _enter(self) -> None:
        self.in_service += 1
        self.max_in_service = max(self.max_in_service, self.in_service)

    def _admit(self) -> None:
        while self._waiting and self._has_room():
            place = self._waiting.popleft()
            if not place.done():
                self._enter()
                place.set_result(None)


class _Place:
    """One request's place in the capacity: given back once, however the request ends."""

    def __init__(self, capacity: Capacity) -> None:
        self._capacity: Capacity | None = capacity
        self._taken = time.monotonic()

    def release(self) -> None:
        if self._capacity is not None:
            self._capacity.release(time.monotonic() - self._taken)
            self._capacity = None


class ConnectionDropped(httpx.RemoteProtocolError):
    """The emulator dropped the connection in the middle of an answer (an injected fault)."""


class _DropFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


_DROP_FILTER = _DropFilter()


def quiet_uvicorn() -> None:
    """Keep uvicorn from logging a traceback for each injected dropped connection."""
    logger = logging.getLogger("uvicorn.error")
    if _DROP_FILTER not in logger.filters:
        logger.addFilter(_DROP_FILTER)


class Faults:
    """The fault injector's state: its configuration, its random generator, the hangs it holds."""

    def __init__(
        self,
        config: FaultConfig,
        *,
        clock: Callable[[], float] = time.time,
        client_of: Callable[[str], str] = key_digest,
    ) -> None:
        self.config = config
        self._random = random.Random(config.fault_seed)
        self._holding: set[asyncio.Future[None]] = set()
        self._stopped = False
        self._clock = clock
        self._client_of = client_of
        self._limiter = RateLimiter(clock)
        self.capacity = Capacity(config.capacity)
        self.requests = 0  # API requests that reached the fault layer
        self.rate_limited = 0  # ... answered 429 by the rate limit
        quiet_uvicorn()

    def replace(self, config: FaultConfig, *, reseed: bool) -> None:
        self.config = config
        self.capacity.set_limit(config.capacity)
        if reseed:
            self._random = random.Random(config.fault_seed)

    def admit(self, api_key: str) -> Quota | None:
        """The rate limit's verdict on a request with this ``x-api-key``; None while it is off."""
        config = self.config
        if config.rate_limit <= 0:
            return None
        return self._limiter.take(
            self._client_of(api_key), config.rate_limit, config.rate_limit_window_seconds
        )

    def load(self) -> dict[str, float]:
        capacity = self.capacity
        return {
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "in_service": capacity.in_service,
            "queued": capacity.queued,
            "max_in_service": capacity.max_in_service,
            "max_queued": capacity.max_queued,
            "served": capacity.served,
            "service_seconds": round(capacity.service_seconds, 6),
        }

    def reset_load(self) -> None:
        """Count from now: the counters to 0, the maxima to what is in service and queued now."""
        self.requests = self.rate_limited = 0
        self.capacity.reset_counts()

    def decide(self) -> Decision:
        config = self.config
        delay = self._delay_seconds()
        if config.fail_next_count > 0:
            self.config = config.model_copy(update={"fail_next_count": config.fail_next_count - 1})
            return Decision(delay, config.fail_next_status)
        draw = self._random.random()
        for status, rate in (
            (429, config.throttle_rate),
            (500, config.error_500_rate),
            (502, config.error_502_rate),
            (503, config.error_503_rate),
        ):
            if draw < rate:
                after = status != 429 and self._random.random() < config.error_after_store_ratio
                return Decision(delay, status, after_handling=after)
            draw -= rate
        if draw < config.hang_rate:
            return Decision(delay, hang=True)
        return Decision(delay)

    def _delay_seconds(self) -> float:
        config = self.config
        milliseconds = config.latency_ms
        if config.latency_median_ms > 0:
            sigma = 0.0
            if config.latency_p99_ms > config.latency_median_ms:
                sigma = math.log(config.latency_p99_ms / config.latency_median_ms) / _Z99
            exponent = min(sigma * self._random.gauss(0.0, 1.0), 50.0)
            milliseconds += config.latency_median_ms * math.exp(exponent)
        return min(milliseconds, _HOUR_MS) / 1000

    def rate_limited_response(self, quota: Quota) -> Response:
        headers = quota.headers()
        if self.config.rate_limit_retry_after:
            headers["Retry-After"] = str(quota.retry_after)
        return JSONResponse(_error_body(429), status_code=429, headers=headers)

    def response(self, status: int) -> Response:
        if status in _GATEWAY_STATUSES:
            title = f"{status} {_GATEWAY_STATUSES[status]}"
            page = (
                f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1>"
                "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            )
            return HTMLResponse(page, status_code=status)
        headers: dict[str, str] = {}
        if status == 429:
            seconds = self.config.retry_after_seconds
            headers = {
                "Retry-After": str(seconds),
                "X-RateLimit-Limit": "300",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(self._clock()) + seconds),
            }
        return JSONResponse(_error_body(status), status_code=status, headers=headers)

    async def hold(self, receive: Receive) -> bool:
        """Hold a hanging answer back; False when the client went away meanwhile."""
        if self._stopped:
            return True
        released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        disconnected = asyncio.ensure_future(_disconnect(receive))
        self._holding.add(released)
        try:
            done, _ = await asyncio.wait(
                {released, disconnected},
                timeout=self.config.hang_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self._holding.discard(released)
            released.cancel()
            disconnected.cancel()
        return disconnected not in done

    @property
    def holding(self) -> int:
        """How many answers are held back now."""
        return len(self._holding)

    def release(self) -> None:
        """End every hang now: the answers held back go out; later hangs hold again."""
        for released in self._holding:
            if not released.done():
                released.set_result(None)

    def stop(self) -> None:
        """The emulator is stopping: release every hang, and hold no answer from now on."""
        self._stopped = True
        self.release()


def _error_body(status: int) -> dict[str, Any]:
    return {"_status": "ERR", "_error": {"code": status, "message": _MESSAGES.get(status, "Error")}}


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class FaultMiddleware:
    """ASGI middleware applying ``Faults`` to the API routes."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        faults = self.faults
        faults.requests += 1
        quota = faults.admit(_api_key(scope))
        if quota is not None:
            if not quota.admitted:
                faults.rate_limited += 1
                await faults.rate_limited_response(quota)(scope, receive, send)
                return
            send = _with_headers(send, quota.headers())
        await faults.capacity.acquire()
        place = _Place(faults.capacity)
        try:
            await self._serve(scope, receive, send, place)
        finally:
            place.release()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, place: _Place) -> None:
        decision = self.faults.decide()
        if decision.delay_seconds > 0:
            await asyncio.sleep(decision.delay_seconds)
        if decision.status is not None:
            if decision.after_handling:
                await self.app(scope, receive, _discard)
            await self.faults.response(decision.status)(scope, receive, send)
        elif decision.hang:
            await self._hang(scope, receive, send, place)
        else:
            await self.app(scope, receive, send)

    async def _hang(self, scope: Scope, receive: Receive, send: Send, place: _Place) -> None:
        messages: list[Message] = []

        async def capture(message: Message) -> None:
            messages.append(message)

        await self.app(scope, receive, capture)
        place.release()  # handled: the answer held back or dropped takes no place
        if self.faults.config.hang_mode == "reset":
            await _send_half(messages, send)
            raise ConnectionDropped("the emulator dropped the connection (injected fault)")
        if await self.faults.hold(receive):
            for message in messages:
                await send(message)


def _api_key(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            return bytes(value).decode("latin-1")
    return ""


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    """``send`` with these headers in the answer's start, in place of any of the same names."""
    names = {name.lower().encode("latin-1") for name in headers}
    extra = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = [(name, value) for name, value in message.get("headers", []) if name.lower() not in names]
            message = {**message, "headers": [*kept, *extra]}
        await send(message)

    return sending


async def _send_half(messages: list[Message], send: Send) -> None:
    body = b"".join(
        message.get("body", b"") for message in messages if message["type"] == "http.response.body"
    )
    start = next((message for message in messages if message["type"] == "http.response.start"), None)
    if start is None or not body:
        return
    await send(start)
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})


async def _discard(message: Message) -> None:
    return None
