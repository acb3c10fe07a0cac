"""The HTTP endpoints ops watch: ``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness).

Liveness fails only when the consume loop itself has stopped making progress, never because Amili
or Kafka are down: an outage must not restart every pod. Readiness says whether this instance can
do its work now: Kafka connected, ledger reachable, credentials accepted, circuit not open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

Check = Callable[[], Awaitable[tuple[bool, str]]]


async def _respond(send: Send, status: int, body: dict[str, object]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


@dataclass
class HealthEndpoint:
    """An ASGI app answering 200 when every check passes, else 503, with each check's verdict."""

    checks: dict[str, Check]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        verdicts: dict[str, object] = {}
        healthy = True
        for name, check in self.checks.items():
            try:
                ok, detail = await check()
            except Exception as error:  # a check that breaks is a failed check, not a 500
                ok, detail = False, error.__class__.__name__
            healthy = healthy and ok
            verdicts[name] = {"ok": ok, "detail": detail}
        await _respond(
            send, 200 if healthy else 503, {"status": "ok" if healthy else "fail", "checks": verdicts}
        )


def progress_check(last_progress: Callable[[], float], *, stale_after_seconds: float) -> Check:
    async def check() -> tuple[bool, str]:
        age = time.monotonic() - last_progress()
        return age < stale_after_seconds, f"last progress {age:.1f}s ago"

    return check
