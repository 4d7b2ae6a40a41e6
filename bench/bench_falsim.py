"""Benchmark falsim: sustained submit rate, outstanding requests, schedule lag, PNG throughput.

Runs falsim in a child process (`imagine falsim` equivalent) on loopback and drives it from this
process with an open-loop load generator (submits paced at --rate, --count in total, --max-seconds
at most), with every request carrying a webhook to a small receiver in this process. Then reads
/_sim/stats and /_sim/requests and prints one JSON report.

    .venv/bin/python bench/bench_falsim.py --rate 1000 --count 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web

from falsim.images import render_png

ENDPOINT = "imagineart/imagineart-2.0-preview/text-to-image"
KEY = "bench:secret"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_falsim(port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """falsim in a child process, returned once it answers."""
    command = [
        sys.executable,
        "-c",
        "from falsim.cli import falsim_command; falsim_command()",
        "--port",
        str(port),
        "--seed",
        "1",
        "--concurrency",
        str(args.concurrency),
        "--time-scale",
        str(args.time_scale),
        "--median-1k",
        str(args.median_1k),
        "--p95-1k",
        str(args.median_1k * 1.8),
        "--median-2k",
        str(args.median_2k),
        "--p95-2k",
        str(args.median_2k * 1.8),
        "--log-level",
        "WARNING",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("falsim did not start")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def webhook_receiver(counter: dict[str, int]) -> tuple[web.AppRunner, int]:
    """A minimal webhook receiver counting deliveries."""

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        counter["webhooks"] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def load(base: str, args: argparse.Namespace) -> dict[str, Any]:
    """Submit `count` requests paced at `rate`; return latency and rate numbers."""
    counter = {"webhooks": 0}
    runner, hook_port = await webhook_receiver(counter)
    hook = f"http://127.0.0.1:{hook_port}/hook"
    latencies: list[float] = []
    errors = 0
    in_flight = asyncio.Semaphore(args.connections * 4)
    connector = aiohttp.TCPConnector(limit=args.connections)
    headers = {"Authorization": f"Key {KEY}"}
    url = f"{base}/{ENDPOINT}"
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(i: int) -> None:
            nonlocal errors
            body = {
                "prompt": f"bench prompt {i}",
                "resolution": "1K" if i % 2 else "2K",
                "aspect_ratio": ("1:1", "16:9", "9:16", "4:3")[i % 4],
            }
            started = time.perf_counter()
            try:
                async with session.post(url, json=body, params={"fal_webhook": hook}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            finally:
                latencies.append(time.perf_counter() - started)
                in_flight.release()

        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        sent = 0
        while sent < args.count and time.perf_counter() - t0 < args.max_seconds:
            due = t0 + sent / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await in_flight.acquire()
            task = asyncio.create_task(one(sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        stats = await (await session.get(f"{base}/_sim/stats")).json()
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = await (
                await session.get(
                    f"{base}/_sim/requests", params={"offset": offset, "limit": 10000}
                )
            ).json()
            rows.extend(page["requests"])
            offset += len(page["requests"])
            if offset >= page["total"] or not page["requests"]:
                break
    await runner.cleanup()
    return {
        "sent": sent,
        "errors": errors,
        "elapsed": elapsed,
        "latencies": latencies,
        "stats": stats,
        "rows": rows,
        "webhooks_received": counter["webhooks"],
    }


def slot_fullness(rows: list[dict[str, Any]], concurrency: int) -> float:
    """Share of slot-time busy between the first start and the last start."""
    starts = [r["started_at"] for r in rows if r["started_at"] is not None]
    if not starts:
        return 0.0
    window_start, window_end = min(starts), max(starts)
    if window_end <= window_start:
        return 0.0
    busy = 0.0
    for row in rows:
        if row["started_at"] is None:
            continue
        end = row["completed_at"] or window_end
        busy += max(0.0, min(end, window_end) - max(row["started_at"], window_start))
    return busy / (concurrency * (window_end - window_start))


def _render_many(args: tuple[int, float]) -> int:
    worker, seconds = args
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        render_png(f"png bench {worker} {done}", done, "1:1", "2K")
        done += 1
    return done


def png_rate(processes: int, seconds: float) -> float:
    """Distinct 2K PNGs rendered per second by `processes` processes (no cache)."""
    if processes == 1:
        return _render_many((0, seconds)) / seconds
    with multiprocessing.Pool(processes) as pool:
        return sum(pool.map(_render_many, [(w, seconds) for w in range(processes)])) / seconds


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="submits per second")
    parser.add_argument("--count", type=int, default=100_000, help="submits in total")
    parser.add_argument("--max-seconds", type=float, default=150.0, help="stop submitting after")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=400, help="falsim slots")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--median-1k", type=float, default=2.0)
    parser.add_argument("--median-2k", type=float, default=5.0)
    parser.add_argument("--png-seconds", type=float, default=3.0)
    args = parser.parse_args()

    png_1 = png_rate(1, args.png_seconds)
    png_2 = png_rate(2, args.png_seconds)
    port = free_port()
    proc = start_falsim(port, args)
    try:
        result = asyncio.run(load(f"http://127.0.0.1:{port}", args))
        memory = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    stats = result["stats"]
    latencies = result["latencies"]
    by_status = stats["requests_by_status"]
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": vars(args),
        "submits_sent": result["sent"],
        "submit_errors": result["errors"],
        "submit_rate_achieved": round(result["sent"] / result["elapsed"], 1),
        "submit_latency_ms": {
            "p50": round(percentile(latencies, 0.5) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
            "max": round(max(latencies, default=0.0) * 1000, 2),
        },
        "outstanding_at_end": by_status["IN_QUEUE"] + by_status["IN_PROGRESS"],
        "completed": by_status["COMPLETED"],
        "max_in_progress": stats["max_in_progress"],
        "slot_fullness": round(slot_fullness(result["rows"], args.concurrency), 4),
        "schedule_lag_ms": {
            phase: {k: round(v * 1000, 2) for k, v in lag.items() if k != "count"}
            for phase, lag in stats["schedule_lag"].items()
        },
        "webhooks": {
            "delivered": stats["webhooks"]["delivered"],
            "received": result["webhooks_received"],
            "pending": stats["webhooks"]["pending"],
        },
        "falsim_rss_mib": round(memory, 1),
        "png_2k_per_s": {"1_process": round(png_1), "2_processes": round(png_2)},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
