"""Fault injection on the emulator's API routes (never on ``/_admin/*`` nor ``/openapi.json``).

Configured by settings (``AMILI_EMULATOR_*``, see ``FaultConfig``'s fields) and at run time through
``GET/PUT/PATCH /_admin/faults`` (PUT replaces the whole configuration, fields left out taking their
defaults, which inject nothing; PATCH changes the fields given). Per request, in this order:

1. ``fail_next_count``: while above 0, the request is answered ``fail_next_status`` and the count
   goes down by one (before the request is handled).
2. Latency: ``latency_ms`` fixed, plus, when ``latency_median_ms`` > 0, a log-normal delay with that
   median and ``latency_p99_ms`` as its 99th percentile (heavy-tailed; e.g. 50 and 500).
3. One draw decides among, with these probabilities: ``throttle_rate`` (429 with ``Retry-After:
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
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import EmulatorSettings

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

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._random = random.Random(config.fault_seed)
        self._holding: set[asyncio.Future[None]] = set()
        self._stopped = False
        quiet_uvicorn()

    def replace(self, config: FaultConfig, *, reseed: bool) -> None:
        self.config = config
        if reseed:
            self._random = random.Random(config.fault_seed)

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

    def response(self, status: int) -> Response:
        if status in _GATEWAY_STATUSES:
            title = f"{status} {_GATEWAY_STATUSES[status]}"
            page = (
                f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1>"
                "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            )
            return HTMLResponse(page, status_code=status)
        body = {"_status": "ERR", "_error": {"code": status, "message": _MESSAGES.get(status, "Error")}}
        headers: dict[str, str] = {}
        if status == 429:
            seconds = self.config.retry_after_seconds
            headers = {
                "Retry-After": str(seconds),
                "X-RateLimit-Limit": "300",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(time.time()) + seconds),
            }
        return JSONResponse(body, status_code=status, headers=headers)

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
        decision = self.faults.decide()
        if decision.delay_seconds > 0:
            await asyncio.sleep(decision.delay_seconds)
        if decision.status is not None:
            if decision.after_handling:
                await self.app(scope, receive, _discard)
            await self.faults.response(decision.status)(scope, receive, send)
        elif decision.hang:
            await self._hang(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _hang(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages: list[Message] = []

        async def capture(message: Message) -> None:
            messages.append(message)

        await self.app(scope, receive, capture)
        if self.faults.config.hang_mode == "reset":
            await _send_half(messages, send)
            raise ConnectionDropped("the emulator dropped the connection (injected fault)")
        if await self.faults.hold(receive):
            for message in messages:
                await send(message)


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
