"""Registrations per second of AmiliClient against the emulator, and the client's CPU per request.
(A benchmark, not a test.)

The emulator runs in its own process (``python -m service emulator``, ``AMILI_EMULATOR_LATENCY_MS``
fixed), so that its CPU is not charged to the client; the client runs here, with N registrations in
flight, once per transport and in-flight count. Reported per run: requests per second, the ideal
(in flight ÷ latency), their ratio, the client process's CPU milliseconds per request
(``time.process_time`` delta ÷ requests) and, on Linux, the emulator process's CPU share (near 100 %
means the emulator, not the client, sets the pace).

    .venv/bin/python bench/amili_client.py [--latency-ms 50] [--in-flight 64 256] [--requests 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from devkit.emulator.settings import DEMO_ACCOUNT, DEMO_API_KEY, DEMO_CREDITOR
from devkit.localkafka import free_port
from service.amili.client import AmiliClient, HttpSettings, Transport
from service.amili.models import InvoiceRegistrationRequest
from service.ports import AmiliError

ROOT = Path(__file__).resolve().parent.parent
TRANSPORTS: tuple[Transport, ...] = ("aiohttp", "httpx")


def request(number: str) -> InvoiceRegistrationRequest:
    """A registration the size of a typical invoice: a person with an address, two lines."""
    return InvoiceRegistrationRequest.model_validate(
        {
            "account": DEMO_ACCOUNT,
            "creditor": DEMO_CREDITOR,
            "customer": {
                "name": "Bench Person",
                "customer_number": "C-1",
                "is_person": True,
                "address": {"address_line_1": "Storgatan 12", "zip_code": "11122", "city": "Stockholm"},
                "email": "bench@example.se",
            },
            "invoice_type": "invoice",
            "invoice_number": number,
            "invoice_date": "Fri, 20 Nov 2026 00:00:00 GMT",
            "invoice_due_date": "Sun, 20 Dec 2026 00:00:00 GMT",
            "currency": "SEK",
            "invoice_headline": "Broadband, November",
            "matrix": [
                {"article_description": "Broadband 250/250", "total_price_excluding_vat": 399},
                {
                    "article_description": "Router rent",
                    "total_price_excluding_vat": 49,
                    "unit_vat_percent": "25%",
                },
            ],
        }
    )


@contextlib.contextmanager
def emulator_process(latency_ms: float, port: int) -> Iterator[tuple[str, int]]:
    """``python -m service emulator`` in its own process; yields its base URL and pid."""
    env = {
        **os.environ,
        "AMILI_EMULATOR_LATENCY_MS": str(latency_ms),
        "AMILI_EMULATOR_PORT": str(port),
        "AMILI_EMULATOR_API_KEYS": DEMO_API_KEY,
        "AMILI_EMULATOR_ACCESS_LOG": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "emulator", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the emulator exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the emulator did not start within 30 s")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds_of(pid: int) -> float | None:
    """User + system CPU time of another process (Linux ``/proc``); None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Result:
    transport: Transport
    in_flight: int
    requests: int
    seconds: float
    client_cpu_seconds: float
    emulator_cpu_seconds: float | None
    latencies: list[float]
    failures: dict[str, int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


async def measure(
    url: str, emulator_pid: int, transport: Transport, in_flight: int, total: int, prefix: str
) -> Result:
    settings = HttpSettings(transport=transport, max_connections=in_flight)
    warm_up = [request(f"{prefix}-w{number}") for number in range(in_flight)]
    measured = [request(f"{prefix}-{number}") for number in range(total)]
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    async with AmiliClient(url, SecretStr(DEMO_API_KEY), settings) as client:

        async def run(batch: list[InvoiceRegistrationRequest]) -> None:
            queue = iter(batch)

            async def worker() -> None:
                for item in queue:
                    started = time.perf_counter()
                    try:
                        await client.register(item)
                    except AmiliError as error:  # counted, not fatal: a run shows what it met
                        failures[type(error).__name__] += 1
                    latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(worker() for _ in range(in_flight)))

        await run(warm_up)  # opens the connections
        latencies.clear()
        failures.clear()
        emulator_cpu = cpu_seconds_of(emulator_pid)
        cpu, started = time.process_time(), time.perf_counter()
        await run(measured)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        emulator_after = cpu_seconds_of(emulator_pid)
    emulator_used = None if emulator_cpu is None or emulator_after is None else emulator_after - emulator_cpu
    return Result(transport, in_flight, total, seconds, cpu, emulator_used, latencies, dict(failures))


def report(result: Result, latency_ms: float) -> str:
    ideal = result.in_flight / (latency_ms / 1000)
    emulator = (
        "n/a"
        if result.emulator_cpu_seconds is None
        else f"{result.emulator_cpu_seconds / result.seconds:.0%}"
    )
    failures = ", ".join(f"{count} {name}" for name, count in sorted(result.failures.items())) or "-"
    cpu_ms = 1000 * result.client_cpu_seconds / result.requests
    return (
        f"{result.transport:8} {result.in_flight:9} {result.rate:10,.0f} {ideal:8,.0f} "
        f"{result.rate / ideal:6.0%} {cpu_ms:17.3f} {emulator:>12} "
        f"{1000 * result.percentile(0.5):7.0f} {1000 * result.percentile(0.99):7.0f}  {failures}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--requests", type=int, default=4000, help="measured registrations per run")
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    args = parser.parse_args()

    print(
        f"emulator in its own process, {args.latency_ms:g} ms latency; "
        f"{args.requests} registrations per run (after a warm-up of one per connection)"
    )
    print(
        "transport in flight  requests/s    ideal  ratio  client CPU ms/req  emulator CPU"
        "  p50 ms  p99 ms  failures"
    )
    run_id = f"{time.time_ns():x}"
    with emulator_process(args.latency_ms, free_port()) as (url, pid):
        for in_flight in args.in_flight:
            for transport in args.transports:
                prefix = f"B-{run_id}-{transport}-{in_flight}"
                result = await measure(url, pid, transport, in_flight, args.requests, prefix)
                print(report(result, args.latency_ms), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
