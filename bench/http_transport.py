"""Which transport keeps many Amili calls in flight, aiohttp (called directly) or httpx's own pool?
(A benchmark, not a test.)

Serves the emulator on loopback with a fixed latency and sends POST /invoice--registrations with
N calls in flight through AmiliClient, once per transport; prints requests per second against the
ideal (in flight ÷ latency).

    .venv/bin/python bench/http_transport.py [--in-flight 64] [--latency-ms 50] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from pydantic import SecretStr

from service.amili.client import AmiliClient, HttpSettings, Transport
from service.amili.models import InvoiceRegistrationRequest
from service.config import DEMO_ACCOUNT, DEMO_API_KEY, DEMO_CREDITOR, EmulatorSettings
from service.emulator.server import serve_emulator
from service.localkafka import free_port


def request(number: int) -> InvoiceRegistrationRequest:
    return InvoiceRegistrationRequest.model_validate(
        {
            "account": DEMO_ACCOUNT,
            "creditor": DEMO_CREDITOR,
            "customer": {"name": "Bench", "is_foreign": True},
            "invoice_type": "invoice",
            "invoice_number": f"B-{number}",
            "invoice_date": "Fri, 20 Nov 2026 00:00:00 GMT",
            "invoice_due_date": "Sun, 20 Dec 2026 00:00:00 GMT",
            "currency": "SEK",
            "matrix": [{"article_description": "x", "total_price_excluding_vat": 1}],
        }
    )


async def measure(url: str, transport: Transport, in_flight: int, total: int, offset: int) -> float:
    settings = HttpSettings(transport=transport, max_connections=in_flight)
    async with AmiliClient(url, SecretStr(DEMO_API_KEY), settings) as client:
        queue = iter(range(offset, offset + total))

        async def worker() -> None:
            for number in queue:
                await client.register(request(number))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return total / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--url", help="an emulator already running (in its own process) instead of one in this process"
    )
    args = parser.parse_args()
    ideal = args.in_flight / (args.latency_ms / 1000)
    print(f"{args.in_flight} in flight, {args.latency_ms:g} ms latency: ideal {ideal:,.0f} requests/s")
    if args.url:
        await compare(args.url, args)
        return
    async with serve_emulator(EmulatorSettings(port=free_port(), latency_ms=args.latency_ms)) as (url, _):
        await compare(url, args)


async def compare(url: str, args: argparse.Namespace) -> None:
    ideal = args.in_flight / (args.latency_ms / 1000)
    offset = int(time.time())  # fresh invoice numbers on a long-running emulator
    transports: tuple[Transport, ...] = ("httpx", "aiohttp")
    for index, transport in enumerate(transports):
        rate = await measure(url, transport, args.in_flight, args.requests, offset + index * args.requests)
        print(f"  {transport:8} {rate:8,.0f} requests/s  ({rate / ideal:.0%} of ideal)")


if __name__ == "__main__":
    asyncio.run(main())
