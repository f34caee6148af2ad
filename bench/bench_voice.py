"""Voice-line benchmarks (issue 5). Not tests: they print JSON lines that docs/performance.md records.

    .venv/bin/python -m bench.bench_voice screenpop [--lines 32] [--clients 100] [--rounds 4]
    .venv/bin/python -m bench.bench_voice cpu       [--lines 32] [--seconds 20] [--no-record]

Both run the whole daemon in this process (``gateway.daemon.run_gateway``) on a generated config with N
``usb_box`` lines, each behind its own simulated box (``simulators/usb_box.py``, paced: one 20 ms frame per
read, on the box's real-time frame clock) on its own simulated exchange line (``simulators/pstn_line.py``,
Japan: NTT Number Display).  The real drivers, DSP, line machines, store, event bus and API run unchanged.

screenpop  last caller-ID bit on the line -> ``call.incoming`` at WebSocket clients; target p99 <= 50 ms
           with 32 lines ringing at once and 100 clients.  Each round starts an incoming call on every line
           at the same moment (CAR, silent off-hook, V.23 burst, release, one ring, missed).  The instant of
           the last bit: the exact line time of the message's last data bit (its last byte's first stop
           bit), which the PstnLine notes when it queues the burst (``cid_data_ends``, checked against an
           independent receiver in tests/unit/test_pstn_line.py).  Each call's burst is delayed by a
           random 0-20 ms (``Caller.cid_delay_ms``, seeded) so that the last bit falls anywhere in a box
           frame, as with a real exchange.  Line time is converted to wall time by the box's frame clock as
           a real box would deliver it, i.e. a frame leaves the box when its last sample is captured
           (``bench/voice_harness.py``).  So the figure includes the 0-20 ms of frame buffering a real box
           has, and the host's lag in reading frames.  (Until 2026-11-27 the instant was the end of the
           sound the exchange sent, which ends where the gateway's release cut it off, at a frame boundary
           after the message: that left out the box's buffering.)  The clients (raw RFC 6455, as in
           bench_sms) run in a child process and stamp arrival with the shared wall clock; the bench also
           stamps the in-process bus publication, to split line -> bus from bus -> clients
           (``bus_to_client_*``: the fan-out, ~1-4 ms at p99; more there is worth a look at the clients).
cpu        process CPU time (all threads) per line-second, first with N lines idle (on hook: the box still
           streams every frame and the DSP still listens for ringing and caller ID), then with N lines in
           answered calls (auto-answer after one ring into a small IVR menu, the caller speaking
           continuously, the call recorded to FLAC unless --no-record); and whether the gateway keeps up with
           N paced boxes on this machine: host lag per frame (read time minus due time), frames read more
           than 20 / 100 ms late, the driver's dropped audio chunks and sequence gaps.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from bench import ws_clients
from bench.bench_sms import TOKEN, machine
from bench.voice_harness import (
    FRAME_S,
    SETTLE_S,
    Boxes,
    line_names,
    pct,
    summary,
    voice_config,
    wait_lines,
)


def bench_screenpop(args) -> dict:
    import trio

    from gateway.daemon import run_gateway
    from simulators.pstn_line import Caller

    tmp = Path(tempfile.mkdtemp(prefix="bench-screenpop-"))
    names = line_names(args.lines)
    boxes = Boxes(names, remote=not args.in_process)
    config = voice_config(tmp, args.lines, simulated_here=not boxes.remote)
    out: dict = {}
    per_call: list[dict] = []

    async def main():
        async with trio.open_nursery() as n:
            gw = await n.start(partial(run_gateway, config, usb_backends=boxes.usb_backends()))
            t_up = time.time()
            await wait_lines(gw)
            boxes.attach(gw)
            await trio.sleep(SETTLE_S)  # steady state: the boxes' frames lined up (FRAME_PHASE)
            published: dict[str, float] = {}
            call_line: dict[str, str] = {}

            def on_event(e) -> None:
                if e.type == "call.incoming":
                    published.setdefault(e.data["call_id"], time.time())
                    call_line[e.data["call_id"]] = e.data["line"]

            gw.bus.add_listener(on_event)
            ws_url = gw.url.replace("http://", "ws://") + "/v1/events"
            total = args.lines * args.rounds
            max_s = 60.0 + args.rounds * 20.0
            proc = await trio.lowlevel.open_process(
                ws_clients.command(ws_url, TOKEN, args.clients, "call.incoming", "call_id", total, max_s),
                stdout=subprocess.PIPE, cwd=ws_clients.ROOT)
            buf = b""
            with trio.fail_after(60):
                while b"READY" not in buf:
                    buf += await proc.stdout.receive_some(4096)
            ended = gw.bus.subscribe(types={"call.ended"})
            cpu0, wall0 = time.process_time(), time.time()
            rng = random.Random(5)
            for r in range(args.rounds):
                for i, name in enumerate(names):
                    caller = Caller(f"03{r:02d}{i:06d}", cid_delay_ms=rng.uniform(0.0, 20.0))
                    boxes.call(name, "incoming_call", caller, max_rings=1)
                seen = 0
                with trio.fail_after(40):
                    async for _ in ended:
                        seen += 1
                        if seen == args.lines:
                            break
                await wait_lines(gw)
            cpu_s, wall_s = time.process_time() - cpu0, time.time() - wall0
            dsp = gw.services.voice.lines[names[0]].device.box.dsp
            out.update(dsp_cohorts=dsp.cohorts, dsp_phase_shifts=dsp.phase_shifts, dsp_moves=dsp.moves,
                       dsp_batches_per_s=round(dsp.batches / (time.time() - t_up), 1),
                       dsp_evictions=dsp.evictions)
            chunks = [buf.split(b"READY", 1)[1]]
            with trio.fail_after(max_s):
                while data := await proc.stdout.receive_some(65536):
                    chunks.append(data)
                await proc.wait()
            arrivals = json.loads(b"".join(chunks).strip() or b"[]")

            # The r-th call.incoming of a line belongs to its r-th caller-ID burst.
            last_bit: dict[str, float] = {}
            order: dict[str, list[str]] = {name: [] for name in names}
            for call_id in sorted(published, key=published.get):
                order[call_line[call_id]].append(call_id)
            missing = 0
            buffering: list[float] = []
            details: dict[str, dict] = {}
            clocks = {name: boxes.clock(name) for name in names}
            for name in names:
                bursts = [rec.t for rec in boxes.get(name, "cid_data_ends") if rec.detail == "v23_ntt"]
                for r, (call_id, t_end) in enumerate(zip(order[name], bursts, strict=False)):
                    wall = clocks[name].wall(t_end)
                    if wall is None:
                        missing += 1
                    else:
                        last_bit[call_id] = wall
                        # Line time from the last bit to the end of its box frame (the box sends it then).
                        k, frame_end = clocks[name].frame_of(t_end)
                        buffering.append((frame_end - t_end) * 1000)
                        details[call_id] = {"call_id": call_id, "line": name, "round": r, "last_bit": wall,
                                            "frame_due": clocks[name].due.get(k),
                                            "frame_read": clocks[name].read.get(k),
                                            "published": published[call_id]}
            to_client = [(t - last_bit[c]) * 1000 for c, t, _ in arrivals if c in last_bit]
            read = [(t - last_bit[c]) * 1000 for c, _, t in arrivals if c in last_bit]
            to_bus = [(published[c] - last_bit[c]) * 1000 for c in last_bit]
            # The fan-out stage on its own: a tail here that the daemon's writes do not have is the clients'
            # (a client process that falls behind gets late receive stamps: bench/ws_clients.py).
            fan_out = [(t - published[c]) * 1000 for c, t, _ in arrivals if c in published]
            by_round = [[(published[c] - last_bit[c]) * 1000 for name in names
                         for c in order[name][r : r + 1] if c in last_bit] for r in range(args.rounds)]
            lag = [x for clock in clocks.values() for x in clock.lag_ms()]
            if args.calls:  # one JSON object per call: wall times of its stages, and its clients' arrivals
                for c, t, _ in arrivals:
                    if c in details:
                        details[c].setdefault("clients", []).append(t)
                per_call.extend(details.values())
            out.update(calls=len(published), calls_expected=total, arrivals=len(arrivals),
                       arrivals_expected=total * args.clients, unmatched_bursts=missing,
                       **summary(to_client, "line_to_client"), **summary(to_bus, "line_to_bus"),
                       **summary(buffering, "box_buffering"), **summary(fan_out, "bus_to_client"),
                       line_to_bus_p99_by_round_ms=[pct(x, 99) for x in by_round],
                       **summary(read, "line_to_read_by_client"),
                       frame_lag_p99_ms=pct(lag, 99), frame_lag_max_ms=round(max(lag), 1),
                       cpu_percent=round(100 * cpu_s / wall_s, 1))
            gw.stop.set()

    with boxes:
        trio.run(main)
    if args.calls:
        Path(args.calls).write_text("".join(json.dumps(d) + "\n" for d in per_call))
    return {"bench": "screen_pop", "lines": args.lines, "clients": args.clients, "rounds": args.rounds,
            "boxes": "in_process" if args.in_process else "farm", **out,
            "target": "line_to_client p99 <= 50 ms", **machine()}


def _menu_tree(tmp: Path) -> Path:
    """A one-menu IVR (greeting, key 1 -> a short prompt -> back): what answered calls run during `cpu`."""
    import numpy as np
    import soundfile as sf

    tree_dir = tmp / "tree"
    tree_dir.mkdir()
    t = np.arange(4000) / 8000
    sf.write(tree_dir / "menu.wav", (0.3 * np.cos(2 * np.pi * 440 * t)).astype("float32"), 8000)
    sf.write(tree_dir / "info.wav", (0.3 * np.cos(2 * np.pi * 1000 * t)).astype("float32"), 8000)
    (tree_dir / "tree.yaml").write_text(
        "version: 1\nname: bench menu\nentry: main\nloop_limit: 100\nnodes:\n"
        "  main:\n    type: menu\n    greeting: menu\n    options: {\"1\": info, \"2\": info}\n"
        "    first_digit_timeout: 120\n    tries: 3\n    on_failure: bye\n"
        "  info:\n    type: play\n    prompts: [info]\n    next: main\n"
        "  bye:\n    type: hangup\n")
    return tree_dir / "tree.yaml"


def bench_cpu(args) -> dict:
    import numpy as np
    import trio

    from gateway.daemon import run_gateway
    from simulators.pstn_line import Caller, Say
    from simulators.signals import speech_like

    tmp = Path(tempfile.mkdtemp(prefix="bench-voicecpu-"))
    names = line_names(args.lines)
    boxes = Boxes(names, remote=not args.in_process)
    config = voice_config(tmp, args.lines, auto_answer_rings=1, record=not args.no_record,
                          tree=_menu_tree(tmp), simulated_here=not boxes.remote)
    out: dict = {}

    def sample() -> dict:
        return {"cpu": time.process_time(), "wall": time.time(), "frames": boxes.frames()}

    def phase(a: dict, b: dict, label: str) -> dict:
        cpu, wall = b["cpu"] - a["cpu"], b["wall"] - a["wall"]
        line_s = args.lines * wall
        lag = [read - due for name in names for due, read in boxes.clock(name).timings()
               if a["wall"] <= due < b["wall"]]
        lag_ms = [x * 1000 for x in lag]
        return {f"{label}_cpu_percent": round(100 * cpu / wall, 1),
                f"{label}_cpu_ms_per_line_s": round(1000 * cpu / line_s, 2),
                f"{label}_frames_per_s": round((b["frames"] - a["frames"]) / wall, 1),
                f"{label}_lag_p50_ms": pct(lag_ms, 50), f"{label}_lag_p99_ms": pct(lag_ms, 99),
                f"{label}_lag_max_ms": round(max(lag_ms), 1) if lag_ms else None,
                f"{label}_frames_late_20ms": sum(x > FRAME_S * 1000 for x in lag_ms),
                f"{label}_frames_late_100ms": sum(x > 100 for x in lag_ms)}

    async def main():
        async with trio.open_nursery() as n:
            gw = await n.start(partial(run_gateway, config, usb_backends=boxes.usb_backends()))
            await wait_lines(gw)
            boxes.attach(gw)
            await trio.sleep(SETTLE_S)  # steady state: the boxes' frames lined up (FRAME_PHASE)
            a = sample()
            await trio.sleep(args.seconds)
            b = sample()
            out.update(phase(a, b, "idle"))

            # Speech synthesised once: the simulator would otherwise synthesise each Say when it starts,
            # on the box's read path, and its lag would be charged to the gateway.
            speech = speech_like(2.0, np.random.default_rng(1))
            script = [Say(audio=speech)] * int(args.seconds / 2 + 30)
            answered = gw.bus.subscribe(types={"call.answered"})
            for i, name in enumerate(names):
                boxes.call(name, "incoming_call", Caller(f"0390{i:06d}"), script=script, max_rings=2)
            seen = 0
            with trio.fail_after(30):
                async for _ in answered:
                    seen += 1
                    if seen == args.lines:
                        break
            await trio.sleep(2.0)  # the greeting plays, recordings open
            a = sample()
            await trio.sleep(args.seconds)
            b = sample()
            out.update(phase(a, b, "active"))
            voice = gw.services.voice
            active = sum(1 for c in voice.active_calls() if c.state == "connected")
            box_drivers = [voice.lines[name].device.box for name in names]
            out.update(calls_connected_at_end=active,
                       driver_audio_dropped=sum(b.audio_dropped for b in box_drivers),
                       sequence_gaps_resyncs=sum(len(getattr(b._session, "notes", []) or [])
                                                 for b in box_drivers))
            gw.stop.set()

    with boxes:
        trio.run(main)
    return {"bench": "voice_cpu", "lines": args.lines, "seconds": args.seconds, "record": not args.no_record,
            "boxes": "in_process" if args.in_process else "farm",
            **out, "target": "32 lines in real time on 2 cores (no lag growth, no drops)", **machine()}


def main(argv: list[str] | None = None) -> int:
    from gateway.logging import configure_logging

    configure_logging("warning")
    parser = argparse.ArgumentParser(prog="bench.bench_voice", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    p = sub.add_parser("screenpop")
    p.add_argument("--lines", type=int, default=32)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--in-process", action="store_true", help="simulate the boxes in the daemon's process")
    p.add_argument("--calls", metavar="FILE", help="write each call's stage times (JSON lines) to FILE")
    p = sub.add_parser("cpu")
    p.add_argument("--lines", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--in-process", action="store_true", help="simulate the boxes in the daemon's process")
    args = parser.parse_args(argv)
    fn = {"screenpop": bench_screenpop, "cpu": bench_cpu}
    print(json.dumps(fn[args.which](args), ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
