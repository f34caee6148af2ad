"""Line-DSP throughput and DTMF latency on one core.

    .venv/bin/python -m bench.bench_dsp --channels 2000 --seconds 10

Throughput: C concurrent 8 kHz lines fed in 20 ms frames to one ``LineAnalyzerBank`` (DTMF + FSK caller ID
+ call progress). Lines carry a mix of DTMF, progress tones, speech-like sound, caller-ID bursts and idle
noise (a pool of distinct 8-line signals, rotated across channels). Reports channel-seconds per CPU
second and how many lines one core keeps in real time (target ≥ 2,000).

Latency: one 40 ms digit at random alignments, fed in 20 ms frames; from the end of the tone to the end of
the frame whose ``feed`` returned the digit (target ≤ 30 ms). Prints JSON lines.
"""

from __future__ import annotations

import os

# One core: BLAS must not fan out over the (shared) machine. Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from drivers.dsp.pipeline import LineAnalyzerBank, caller_id_available  # noqa: E402
from simulators import signals  # noqa: E402

FRAME = 160
RATE = 8000


def _pool(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Eight different line signals, each ``seconds`` long."""
    n = int(seconds * RATE)

    def fit(x: np.ndarray) -> np.ndarray:
        reps = int(np.ceil(n / max(x.size, 1)))
        return np.tile(x, reps)[:n]

    lines = [
        fit(signals.dtmf_sequence("0312345678#", 80, 80, -12, lead_ms=300)),
        fit(signals.cadence([400], 0.5, 0.5, seconds, -20)),
        fit(signals.cadence([400], 1.0, 2.0, seconds, -20, am_hz=16)),
        fit(signals.speech_like(min(seconds, 6.0), rng, level=-18)),
        fit(signals.music_like(min(seconds, 6.0), rng, level=-20)),
        np.zeros(n),
        fit(signals.cadence([350, 440], None, 0, seconds, -15)),
        fit(
            np.concatenate(
                [signals.speech_like(2.0, rng, level=-20), signals.dtmf_sequence("1", 60, 60, -10)]
            )
        ),
    ]
    try:  # a caller-ID burst on one line when the simulator is there
        from simulators import callerid_gen

        burst = callerid_gen.callerid_burst(
            callerid_gen.mdmf_callerid(datetime_mmddhhmm="01151230", number="0312345678", name="TANAKA")
        )
        lines[5] = fit(np.concatenate([np.zeros(4000), np.asarray(burst, dtype=float), np.zeros(8000)]))
    except (ImportError, AttributeError, TypeError):
        pass
    pool = np.stack(lines)
    return signals.line(pool.reshape(-1), noise_dbm0=-65, law="ulaw", rng=rng).reshape(pool.shape)


def throughput(channels: int, seconds: float, tones: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    pool = _pool(seconds, rng).astype(np.float32)
    rows = np.arange(channels) % pool.shape[0]
    shift = (np.arange(channels) * 997) % pool.shape[1]  # channels do not move in step
    bank = LineAnalyzerBank(channels, tones=tones, cid="auto")
    ticks = int(seconds * RATE) // FRAME
    events = 0
    cpu = 0.0
    wall0 = time.perf_counter()
    for k in range(ticks):
        cols = (shift[:, None] + k * FRAME + np.arange(FRAME)[None, :]) % pool.shape[1]
        frame = pool[rows[:, None], cols]
        t0 = time.process_time()
        events += len(bank.feed(frame))
        cpu += time.process_time() - t0
    wall = time.perf_counter() - wall0
    channel_seconds = channels * ticks * FRAME / RATE
    # The same frames through each detector bank alone, to show where the time goes.
    parts = {"dtmf": bank.dtmf.__class__(channels), "progress": bank.progress.__class__(channels, tones)}
    if bank.callerid is not None:
        parts["callerid"] = bank.callerid.__class__(channels, "auto", RATE, dtmf=False)
    per_part = {}
    for name, part in parts.items():
        used = 0.0
        for k in range(ticks):
            cols = (shift[:, None] + k * FRAME + np.arange(FRAME)[None, :]) % pool.shape[1]
            frame = pool[rows[:, None], cols]
            t0 = time.process_time()
            part.feed(frame)
            used += time.process_time() - t0
        per_part[name] = int(channel_seconds / max(used, 1e-9))
    return {
        "bench": "dsp_throughput",
        "channels": channels,
        "seconds": seconds,
        "tones": tones,
        "caller_id": caller_id_available(),
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "channel_seconds_per_cpu_second": round(channel_seconds / cpu, 1),
        "realtime_channels_per_core": int(channel_seconds / cpu),
        "cpu_ms_per_tick": round(1000 * cpu / ticks, 3),
        "events": events,
        "realtime_channels_per_core_by_detector": per_part,
    }


def latency(trials: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    lat = []
    missed = 0
    for i in range(trials):
        digit = "0123456789*#ABCD"[i % 16]
        lead = int(rng.integers(0, 400))
        x = np.concatenate(
            [np.zeros(800 + lead), signals.dtmf_tone(digit, 0.040, -10, rng=rng), np.zeros(1600)]
        )
        tone_end = 800 + lead + 320
        bank = LineAnalyzerBank(1, cid=None)
        seen = None
        for start in range(0, x.size, FRAME):
            evs = bank.feed(x[None, start : start + FRAME].astype(np.float32))
            if any(getattr(e, "digit", None) == digit for _, e in evs):
                seen = start + FRAME
                break
        if seen is None:
            missed += 1
        else:
            lat.append((seen - tone_end) * 1000.0 / RATE)
    a = np.array(lat)
    return {
        "bench": "dtmf_latency_40ms_digit",
        "trials": trials,
        "missed": missed,
        "mean_ms": round(float(a.mean()), 1),
        "p95_ms": round(float(np.percentile(a, 95)), 1),
        "max_ms": round(float(a.max()), 1),
        "frame_ms": FRAME * 1000 // RATE,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_dsp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--tones", default="jp")
    ap.add_argument("--latency-trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    print(json.dumps(throughput(args.channels, args.seconds, args.tones, args.seed)), flush=True)
    print(json.dumps(latency(args.latency_trials, args.seed)), flush=True)


if __name__ == "__main__":
    main()
