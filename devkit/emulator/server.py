"""Serving the emulator on loopback from inside an event loop (the demo and the tests do)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn

from devkit.emulator.app import Emulator
from devkit.emulator.settings import EmulatorSettings


@contextlib.asynccontextmanager
async def serve_emulator(settings: EmulatorSettings) -> AsyncIterator[tuple[str, Emulator]]:
    """Run the emulator for the duration of the block; yields its base URL and the emulator."""
    emulator = Emulator(settings)
    config = uvicorn.Config(
        emulator.app(),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the emulator stopped during start-up")
        await asyncio.sleep(0.02)
    try:
        yield f"http://{settings.host}:{settings.port}", emulator
    finally:
        emulator.faults.stop()  # answers held back by injected hangs go out now, so the stop is quick
        server.should_exit = True
        await task
