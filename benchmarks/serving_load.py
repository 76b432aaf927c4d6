"""Closed-loop HTTP load for the model-server benchmark, run as its own process.

    python benchmarks/serving_load.py URL BODY_FILE --concurrency 32 --duration 5

Keeps ``concurrency`` requests in flight against one URL for ``duration`` seconds
(after ``warmup`` seconds not counted) and prints one JSON line: successful answers per
second, latency percentiles of successful answers, and the count of everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    measure_from: float,
    stop_at: float,
    latencies: list[float],
    failures: dict[str, int],
) -> None:
    headers = {"Content-Type": "application/json"}
    while True:
        started = time.perf_counter()
        if started >= stop_at:
            return
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError as exc:
            status = -1
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
        finished = time.perf_counter()
        if started < measure_from or finished > stop_at:
            continue
        if status == 200:
            latencies.append(finished - started)
        elif status != -1:
            failures[str(status)] = failures.get(str(status), 0) + 1


async def run_load(
    url: str, body: bytes, concurrency: int, duration: float, warmup: float
) -> dict[str, object]:
    latencies: list[float] = []
    failures: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        now = time.perf_counter()
        measure_from = now + warmup
        stop_at = measure_from + duration
        await asyncio.gather(
            *(
                _worker(session, url, body, measure_from, stop_at, latencies, failures)
                for _ in range(concurrency)
            )
        )
    latencies.sort()

    def percentile(q: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "concurrency": concurrency,
        "ok": len(latencies),
        "failures": failures,
        "rps": len(latencies) / duration,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("body_file", type=Path)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("the load targets only http://127.0.0.1")
    result = asyncio.run(
        run_load(
            args.url,
            args.body_file.read_bytes(),
            args.concurrency,
            args.duration,
            args.warmup,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
