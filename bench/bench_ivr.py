"""IVR benchmark (issue 6). Not a test: it prints a JSON line that docs/performance.md records.

    .venv/bin/python -m bench.bench_ivr [--lines 32] [--presses 8]

Key press on the line -> the next prompt's first audio sample at the box; target p99 <= 100 ms with 32
concurrent calls in menus.

The whole daemon runs in this process (``gateway.daemon.run_gateway``) with N ``usb_box`` lines on paced
simulated boxes and exchange lines (Japan), auto-answer after one ring, and a small tree written to a temp
dir (``bench_voice._menu_tree``): menu ``main`` plays a 0.5 s 440 Hz greeting and waits for a key; key 1
goes to ``info``, a play node with a 0.5 s 1 kHz prompt, then back to ``main``.  Every line gets a call
at once; each caller waits 2 s after the answer, then presses 1 (80 ms tone, 80 ms gap) every 1.76 s, so
each press comes after the greeting has been sent and the next prompt is the 1 kHz one.

Measured at the box simulator (``bench/voice_harness.py``): the end of the DTMF tone is the last sample
above -40 dBFS of the tone the exchange sent, in line time, converted to wall time by the box's frame
clock as a real box would deliver that frame (so the figure includes the 0-20 ms of the box's frame
buffering and any host lag in reading frames). The callers' pauses are off the 20 ms frame grid by a
random 0-20 ms, the same for every line, so that keys end anywhere in a frame and the 32 callers still
press together (until 2026-11-27 every key ended on a frame boundary, which left the buffering out).
The prompt's first sample is the arrival time of the first OUT audio packet after the key whose samples
are sound and whose frequency is the info prompt's (1 kHz, by zero crossings).  Detection of a digit
needs the tone to end (the DTMF detector waits for two non-digit blocks: docs/performance.md, ~25 ms),
so this latency can never be below that.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from bench.bench_sms import machine
from bench.bench_voice import _menu_tree
from bench.voice_harness import (
    FRAME_S,
    SETTLE_S,
    SILENCE,
    Boxes,
    line_names,
    pct,
    summary,
    voice_config,
    wait_lines,
)

KEY_PERIOD_S = 1.6  # pause after each key (tone 80 ms + gap 80 ms before it)
INFO_HZ, MENU_HZ = 1000.0, 440.0


def _frequency(pcm: np.ndarray) -> float:
    """Rough frequency of a pure tone by zero crossings of its sound samples (exact zeros are left out, so
    it reads high: 454 for 440 Hz, 1333 for 1 kHz; enough to tell the two prompts apart)."""
    sound = pcm[np.abs(pcm) > SILENCE]
    if sound.size < 16:
        return 0.0
    crossings = np.count_nonzero(np.signbit(sound[1:]) != np.signbit(sound[:-1]))
    return crossings * 8000 / (2 * sound.size)


def bench_ivr(args) -> dict:
    import trio

    from gateway.daemon import run_gateway
    from simulators.pstn_line import Caller, HangUp, Keys, Pause

    tmp = Path(tempfile.mkdtemp(prefix="bench-ivr-"))
    names = line_names(args.lines)
    boxes = Boxes(names, remote=not args.in_process)
    config = voice_config(tmp, args.lines, auto_answer_rings=1, tree=_menu_tree(tmp),
                          simulated_here=not boxes.remote)
    out: dict = {}

    async def main():
        async with trio.open_nursery() as n:
            gw = await n.start(partial(run_gateway, config, usb_backends=boxes.usb_backends()))
            await wait_lines(gw)
            boxes.attach(gw, activity=True)
            await trio.sleep(SETTLE_S)  # steady state: the boxes' frames lined up (FRAME_PHASE)
            # Each pause is off the 20 ms frame grid by a random 0-20 ms, so the keys end anywhere in a box
            # frame (the exchange simulator works in whole frames; a caller does not). One script for every
            # line: the 32 callers still press at the same moments.
            rng = random.Random(6)
            script = [Pause(2.0 + rng.uniform(0.0, FRAME_S))]
            for _ in range(args.presses):
                script += [Keys("1", on_ms=80, off_ms=80), Pause(KEY_PERIOD_S + rng.uniform(0.0, FRAME_S))]
            script.append(HangUp())
            ended = gw.bus.subscribe(types={"call.ended"})
            cpu0, wall0 = time.process_time(), time.time()
            for i, name in enumerate(names):
                boxes.call(name, "incoming_call", Caller(f"0391{i:06d}"), script=script, max_rings=3)
            seen = 0
            with trio.fail_after(60 + args.presses * 3):
                async for _ in ended:
                    seen += 1
                    if seen == args.lines:
                        break
            cpu_s, wall_s = time.process_time() - cpu0, time.time() - wall0

            latencies: list[float] = []
            unmatched = 0
            clocks = {name: boxes.clock(name) for name in names}
            for name in names:
                clock = clocks[name]
                answered = [r.t for r in boxes.call(name, "kinds", "answered")]
                hung = [r.t for r in boxes.call(name, "kinds", "far_end_hangup")]
                if not answered or not hung:
                    unmatched += args.presses
                    continue
                key_ends = clock.sound_runs_end(answered[0], hung[0])
                packets = [(t, pcm) for t, pcm in clock.out if _frequency(pcm) > (INFO_HZ + MENU_HZ) / 2]
                for t_end in key_ends:
                    key_wall = clock.wall(t_end)
                    first = next((t for t, _ in packets if key_wall is not None and t > key_wall), None)
                    if first is None:
                        unmatched += 1
                    else:
                        latencies.append((first - key_wall) * 1000)
                unmatched += max(0, args.presses - len(key_ends))
            lag = [x for clock in clocks.values() for x in clock.lag_ms()]
            ivr_events = sum(1 for c in gw.services.voice.calls.values() if c.cause == "far_end_busy")
            out.update(**summary(latencies, "key_to_prompt"), key_to_prompt_p95_ms=pct(latencies, 95),
                       presses_expected=args.lines * args.presses, unmatched=unmatched,
                       calls_ended_by_caller=ivr_events, frame_lag_p99_ms=pct(lag, 99),
                       frame_lag_max_ms=round(max(lag), 1), cpu_percent=round(100 * cpu_s / wall_s, 1))
            gw.stop.set()

    with boxes:
        trio.run(main)
    return {"bench": "ivr_key_to_prompt", "lines": args.lines, "presses": args.presses,
            "boxes": "in_process" if args.in_process else "farm", **out,
            "target": "key_to_prompt p99 <= 100 ms", **machine()}


def main(argv: list[str] | None = None) -> int:
    from gateway.logging import configure_logging

    configure_logging("warning")
    parser = argparse.ArgumentParser(prog="bench.bench_ivr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=32)
    parser.add_argument("--presses", type=int, default=8)
    parser.add_argument("--in-process", action="store_true",
                        help="simulate the boxes in the daemon's process")
    args = parser.parse_args(argv)
    print(json.dumps(bench_ivr(args), ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
