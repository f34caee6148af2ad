"""HTTP provider route benchmark (issue 4): N messages through HttpSmsRoute to the simulator on loopback.

    .venv/bin/python -m bench.bench_http_provider [--messages 10000] [--concurrency 32] [--senders 64]
                                                  [--latency 0] [--in-process]

Target: 10,000 messages end to end in <= 5 s on 2 cores. The simulator runs in its own process (as a real
provider would be another machine) unless --in-process; the route runs here with ``--senders`` tasks taking
messages from a queue (as the dispatcher's senders would) and at most ``--concurrency`` requests in flight.
Every message must be accepted with a provider id, else the run fails. Prints one JSON line: wall time,
messages/s, client and simulator CPU per message, latency percentiles of ``route.send``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import trio

from gateway.sms.http_provider import HttpProviderConfig, HttpSmsRoute
from simulators.http_provider import HttpProviderSimulator

ROOT = Path(__file__).resolve().parents[1]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _config(base_url: str, concurrency: int) -> HttpProviderConfig:
    return HttpProviderConfig(
        name="bench",
        url=base_url + "/sms",
        body={"to": "{to}", "text": "{text}", "reference": "{message_id}"},
        success={"json_path": '$.result.status == "ok"'},
        provider_id={"json_path": "$.result.id"},
        concurrency=concurrency,
        timeout_s=10.0,
    )


async def _drive(base_url: str, messages: int, concurrency: int, senders: int) -> dict:
    send_channel, receive_channel = trio.open_memory_channel[int](messages)
    for i in range(messages):
        send_channel.send_nowait(i)
    send_channel.close()
    latencies: list[float] = []
    failures: list[str] = []

    async with HttpSmsRoute(_config(base_url, concurrency)) as route:
        # Warm the connections so the numbers are steady-state sending, not TCP handshakes.
        async with trio.open_nursery() as nursery:
            for i in range(concurrency):
                nursery.start_soon(partial(route.send, "+819012340000", "warm", message_id=f"warm{i}"))

        async def sender() -> None:
            async for i in receive_channel:
                start = time.perf_counter()
                result = await route.send("+8190" + f"{i:08d}", "入院費用のお知らせ", message_id=f"m{i}")
                latencies.append(time.perf_counter() - start)
                if not result.accepted or result.provider_id is None:
                    failures.append(f"m{i}: {result.error}")

        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(senders):
                nursery.start_soon(sender)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
    latencies.sort()
    return {
        "wall_s": round(wall, 3),
        "messages_per_s": round(messages / wall),
        "client_cpu_us_per_msg": round(cpu / messages * 1e6),
        "send_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "send_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
    }


async def _run_in_process(args: argparse.Namespace) -> dict:
    simulator = HttpProviderSimulator(latency=args.latency)
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(simulator.serve)
        result = await _drive(base_url, args.messages, args.concurrency, args.senders)
        result["simulator_accepted"] = simulator.counts["accepted"]
        nursery.cancel_scope.cancel()
    return result


def _run_subprocess(args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        "-m",
        "simulators.http_provider",
        "--port",
        "0",
        "--latency",
        str(args.latency),
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"simulator did not start: {line!r}")
        base_url = line.split()[-1]
        sim_cpu0 = _cpu_seconds(proc.pid)
        result = trio.run(_drive, base_url, args.messages, args.concurrency, args.senders)
        result["simulator_cpu_us_per_msg"] = round((_cpu_seconds(proc.pid) - sim_cpu0) / args.messages * 1e6)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_http_provider", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32, help="route concurrency (requests in flight)")
    parser.add_argument("--senders", type=int, default=64, help="tasks calling route.send")
    parser.add_argument("--latency", type=float, default=0.0, help="simulated provider latency, seconds")
    parser.add_argument("--in-process", action="store_true", help="run the simulator in this process")
    args = parser.parse_args(argv)
    result = trio.run(_run_in_process, args) if args.in_process else _run_subprocess(args)
    report = {
        "bench": "http_provider",
        "messages": args.messages,
        "concurrency": args.concurrency,
        "senders": args.senders,
        "latency_s": args.latency,
        "simulator": "in-process" if args.in_process else "subprocess",
        **result,
        "target_wall_s": 5.0,
        "meets_target": result["wall_s"] <= 5.0 and result["failures"] == 0,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report))
    if result["failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
