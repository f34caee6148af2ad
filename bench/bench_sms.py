"""SMS-core benchmarks (issue 2). Not tests: they print JSON lines that docs/performance.md records.

    .venv/bin/python -m bench.bench_sms ingest   [--seconds 10] [--connections 64]
    .venv/bin/python -m bench.bench_sms overhead [--messages 300]
    .venv/bin/python -m bench.bench_sms latency  [--clients 100] [--events 200]
    .venv/bin/python -m bench.bench_sms rss      [--modems 8] [--clients 100]

ingest   durable POST /v1/messages over loopback (target >= 2,000 accepted/s on 2 cores). The daemon runs
         in its own process; the load comes from wrk (Debian package) when installed, else from an
         httpx client process. Every 202 is a committed row.
overhead gateway time per segment on top of the modem's own time: one simulated modem at zero latency,
         N single-part messages end to end (queued -> sent); target <= 5 ms per segment.
latency  modem URC -> WebSocket client with N clients connected: the simulator (in the daemon's process)
         injects an SMS (+CMTI URC); the clients run in another process and stamp arrival;
         target p99 <= 10 ms.
rss      daemon RSS with 8 modems (simulated in separate processes) and 100 WebSocket clients;
         target <= 120 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench import ws_clients

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "gateway"]
TOKEN = "bench-token-0123456789"
TOKEN_HASH = "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, *, port: int, sims: int, latency: float,
                 modems: list[tuple[str, str]] | None = None, queue_size: int = 1000) -> Path:
    lines = [
        "gateway:", f"  data_dir: {tmp}", "api:", "  host: 127.0.0.1", f"  port: {port}",
        f"  ws_queue_size: {queue_size}",
        "  tokens:", f"    - {{name: bench, hash: '{TOKEN_HASH}', scopes: [admin]}}",
        "logging:", "  level: warning",
    ]
    modem_list = list(modems or [])
    if sims:
        lines += ["simulators:", "  gsm:"]
        for i in range(sims):
            link = tmp / "dev" / f"gsm{i}"
            lines.append(f"    - {{name: sim{i}, link: '{link}', send_latency: {latency}, "
                         "report_delay: 1.0}")
            modem_list.append((f"gsm{i}", str(link)))
    if modem_list:
        lines.append("modems:")
        lines += [f"  - {{name: {n}, port: '{p}'}}" for n, p in modem_list]
    path = tmp / "bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_health(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import urllib.request

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200 and json.loads(r.read()).get("modems", {}) is not None:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("daemon did not answer /health")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


WRK_LUA = textwrap.dedent("""
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Authorization"] = "Bearer %s"
    local n = 0
    request = function()
      n = n + 1
      local body = string.format('{"to": "+819012%%06d", "text": "検査結果のお知らせ %%d"}', n %% 1000000, n)
      return wrk.format(nil, "/v1/messages", nil, body)
    end
""")


def bench_ingest(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    port = free_port()
    cfg = write_config(tmp, port=port, sims=1, latency=3.0)
    proc = subprocess.Popen([*CLI, "run", "--config", str(cfg)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_health(port, proc)
        if shutil.which("wrk"):
            lua = tmp / "post.lua"
            lua.write_text(WRK_LUA % TOKEN)
            out = subprocess.run(["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
                                  "-s", str(lua), f"http://127.0.0.1:{port}"],
                                 capture_output=True, text=True, check=True).stdout
            rps = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
            non2xx = next((int(line.split()[-1]) for line in out.splitlines() if "Non-2xx" in line), 0)
            p99 = next((line.split()[1] for line in out.splitlines() if line.strip().startswith("99%")), None)
            tool = "wrk"
        else:
            rps, non2xx, p99, tool = _httpx_load(port, args.seconds, args.connections), 0, None, "httpx"
        counted = _count_rows(tmp)
        return {"bench": "ingest", "accepted_per_s": round(rps, 1), "non_2xx": non2xx, "p99_latency": p99,
                "rows_committed": counted, "connections": args.connections, "seconds": args.seconds,
                "load_tool": tool, "target": ">= 2000/s", **machine()}
    finally:
        stop(proc)


def _count_rows(tmp: Path) -> int:
    import sqlite3

    db = tmp / "gateway.sqlite3"
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]


def _httpx_load(port: int, seconds: float, connections: int) -> float:
    import httpx
    import trio

    done = 0

    async def worker(client, end):
        nonlocal done
        i = 0
        while trio.current_time() < end:
            i += 1
            r = await client.post("/v1/messages", json={"to": f"+819012{i % 10**6:06d}", "text": "bench"})
            if r.status_code == 202:
                done += 1

    async def main():
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            end = trio.current_time() + seconds
            async with trio.open_nursery() as n:
                for _ in range(connections):
                    n.start_soon(worker, client, end)

    t0 = time.perf_counter()
    trio.run(main)
    return done / (time.perf_counter() - t0)


def bench_overhead(args) -> dict:
    """In-process: the daemon and one zero-latency simulated modem; N messages, time from first submit to
    the last `sms.sent`, divided by N."""
    import trio

    from gateway.config import Config
    from gateway.daemon import run_gateway

    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    raw = {
        "gateway": {"data_dir": str(tmp)},
        "api": {"port": 0, "tokens": [{"name": "b", "hash": TOKEN_HASH, "scopes": ["admin"]}]},
        "simulators": {"gsm": [{"name": "sim0", "link": str(tmp / "dev/gsm0"), "send_latency": 0.0}]},
        "modems": [{"name": "gsm0", "port": str(tmp / "dev/gsm0")}],
        "sms": {"report": False},
        "logging": {"level": "warning"},
    }
    config = Config.model_validate(raw)
    result: dict = {}

    async def main():
        from gateway.sms.models import SubmitRequest

        async with trio.open_nursery() as n:
            gw = await n.start(run_gateway, config)
            await _wait_modem_ready(gw)
            sub = gw.bus.subscribe(types={"sms.sent"})
            t0 = time.perf_counter()
            for i in range(args.messages):
                await gw.sms.submit(SubmitRequest(to=f"+819012{i:06d}", text=f"overhead {i}"))
            seen = 0
            async for _ in sub:
                seen += 1
                if seen == args.messages:
                    break
            elapsed = time.perf_counter() - t0
            result.update(per_segment_ms=round(elapsed / args.messages * 1000, 3), messages=args.messages,
                          total_s=round(elapsed, 3))
            gw.stop.set()

    trio.run(main)
    return {"bench": "overhead", **result, "target": "<= 5 ms per segment", **machine()}


async def _wait_modem_ready(gw, within: float = 20.0) -> None:
    import trio

    with trio.fail_after(within):
        async for _event in gw.bus.subscribe(since=(gw.bus.epoch, 0), types={"modem.state_changed"}):
            if all(m.status.state == "ready" for m in gw.modems.values()):
                return




def bench_latency(args) -> dict:
    """The daemon (with its simulator) in this process, the WebSocket clients in a child process."""
    import trio

    from gateway.config import Config
    from gateway.daemon import run_gateway

    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    raw = {
        "gateway": {"data_dir": str(tmp)},
        "api": {"port": 0, "tokens": [{"name": "b", "hash": TOKEN_HASH, "scopes": ["admin"]}]},
        "simulators": {"gsm": [{"name": "sim0", "link": str(tmp / "dev/gsm0"), "send_latency": 0.0}]},
        "modems": [{"name": "gsm0", "port": str(tmp / "dev/gsm0")}],
        "logging": {"level": "warning"},
    }
    config = Config.model_validate(raw)
    injected: dict[str, float] = {}
    out: dict = {}

    async def main():
        async with trio.open_nursery() as n:
            gw = await n.start(run_gateway, config)
            await _wait_modem_ready(gw)
            ws_url = gw.url.replace("http://", "ws://") + "/v1/events"
            proc = await trio.lowlevel.open_process(
                ws_clients.command(ws_url, TOKEN, args.clients, "sms.received", "text", args.events,
                                   600.0),
                stdout=subprocess.PIPE, cwd=ROOT)
            buf = b""
            while b"READY" not in buf:
                buf += await proc.stdout.receive_some(4096)
            sim = gw.simulators["sim0"]
            published: dict[str, float] = {}
            gw.bus.add_listener(lambda e: published.setdefault(e.data.get("text"), time.time())
                                if e.type == "sms.received" else None)
            for i in range(args.events):
                text = f"latency probe {i}"
                injected[text] = time.time()
                sim.inject_sms("+819012345678", text)
                await trio.sleep(0.02)
            chunks = [buf.split(b"READY", 1)[1]]
            while True:
                data = await proc.stdout.receive_some(65536)
                if not data:
                    break
                chunks.append(data)
            await proc.wait()
            arrivals = json.loads(b"".join(chunks).strip() or b"[]")
            lat = sorted((t - injected[text]) * 1000 for text, t, _ in arrivals if text in injected)
            read = sorted((t - injected[text]) * 1000 for text, _, t in arrivals if text in injected)
            to_bus = sorted((published[t] - injected[t]) * 1000 for t in injected if t in published)
            out.update(urc_to_bus_p50_ms=round(statistics.median(to_bus), 2),
                       urc_to_bus_p99_ms=round(to_bus[int(len(to_bus) * 0.99) - 1], 2))
            out.update(samples=len(lat), p50_ms=round(statistics.median(lat), 2),
                       p99_ms=round(lat[int(len(lat) * 0.99) - 1], 2), max_ms=round(lat[-1], 2),
                       read_by_client_p50_ms=round(statistics.median(read), 2),
                       read_by_client_p99_ms=round(read[int(len(read) * 0.99) - 1], 2))
            gw.stop.set()

    trio.run(main)
    return {"bench": "event_latency", "clients": args.clients, "events": args.events, **out,
            "target": "p99 <= 10 ms", **machine()}


def bench_rss(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    sims, modems = [], []
    try:
        for i in range(args.modems):
            link = tmp / "dev" / f"gsm{i}"
            link.parent.mkdir(parents=True, exist_ok=True)
            sims.append(subprocess.Popen([*CLI, "sim", "gsm", "--link", str(link), "--latency", "0.5"],
                                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            modems.append((f"gsm{i}", str(link)))
        for _ in range(100):
            if all(Path(p).exists() for _, p in modems):
                break
            time.sleep(0.1)
        port = free_port()
        cfg = write_config(tmp, port=port, sims=0, latency=0, modems=modems)
        proc = subprocess.Popen([*CLI, "run", "--config", str(cfg)], cwd=ROOT, stderr=subprocess.PIPE,
                                text=True)
        try:
            wait_health(port, proc)
            idle = rss_kb(proc.pid)
            clients = subprocess.Popen(
                ws_clients.command(f"ws://127.0.0.1:{port}/v1/events", TOKEN, args.clients, "sms.received",
                                   "text", 1_000_000, 3600.0), stdout=subprocess.PIPE, text=True, cwd=ROOT)
            assert clients.stdout is not None
            clients.stdout.readline()  # READY
            _post_some(port, 200)
            time.sleep(3)
            loaded = rss_kb(proc.pid)
            clients.kill()
            return {"bench": "rss", "modems": args.modems, "clients": args.clients, "rss_idle_mb":
                    round(idle / 1024, 1), "rss_loaded_mb": round(loaded / 1024, 1), "target": "<= 120 MB",
                    **machine()}
        finally:
            stop(proc)
    finally:
        for s in sims:
            s.terminate()


def _post_some(port: int, n: int) -> None:
    import urllib.request

    for i in range(n):
        body = json.dumps({"to": f"+819012{i:06d}", "text": f"rss {i}"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()


def main(argv: list[str] | None = None) -> int:
    from gateway.logging import configure_logging

    configure_logging("warning")  # in-process benches: the daemon's log lines would cost more than the work
    parser = argparse.ArgumentParser(prog="bench.bench_sms", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    p = sub.add_parser("ingest")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=64)
    p = sub.add_parser("overhead")
    p.add_argument("--messages", type=int, default=300)
    p = sub.add_parser("latency")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--events", type=int, default=200)
    p = sub.add_parser("rss")
    p.add_argument("--modems", type=int, default=8)
    p.add_argument("--clients", type=int, default=100)
    args = parser.parse_args(argv)
    fn = {"ingest": bench_ingest, "overhead": bench_overhead, "latency": bench_latency, "rss": bench_rss}
    print(json.dumps(fn[args.which](args), ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
