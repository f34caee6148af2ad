"""Line-DSP throughput and DTMF latency on one core.

    .venv/bin/python -m bench.bench_dsp --channels 2000 --seconds 10

Throughput: C concurrent 8 kHz lines fed in 20 ms frames to one ``LineAnalyzerBank`` (DTMF + FSK caller ID
+ call progress). Lines carry a mix of DTMF, progress tones, speech-like sound, caller-ID bursts and idle
noise (a pool of distinct 8-line signals, rotated across channels). Reports channel-seconds per CPU
second and how many lines one core keeps in real time (target ≥ 2,000).

Latency: one 40 ms digit at random alignments, fed in 20 ms frames; from the end of the tone to the end of
the frame whose ``feed`` returned the digit (target ≤ 30 ms). Caller-ID latency likewise: an FSK burst (Bell
202, ETSI V.23, NTT in turn) at random alignments, from the end of the last byte's stop bit to the end of the
frame that returned the caller ID (target ≤ 30 ms).

Tick cost (``--tick-cost``): what one ``feed`` of a 20 ms frame costs a bank of C = 1, 8, 32 lines, on low
noise and while an NTT V.23 caller-ID burst plays on every line: the fixed cost the shared DSP of the
daemon pays per bank per tick (drivers/voice/shared_dsp.py).

Caller-ID gate: the fraction of line-frames on which FSK receivers run, per line type of the mix (only the
caller-ID line should need them), and on synthetic speech from espeak-ng when it is installed. Prints JSON
lines.
"""

from __future__ import annotations

import os

# One core: BLAS must not fan out over the (shared) machine. Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from drivers.dsp.pipeline import LineAnalyzerBank, caller_id_available  # noqa: E402
from simulators import signals  # noqa: E402

FRAME = 160
RATE = 8000
# What each row of the pool carries (the caller-ID line falls back to silence without the simulator).
POOL_LINES = (
    "dtmf",
    "busy_400hz",
    "ringback_400hz_am",
    "speech_like",
    "music_like",
    "callerid_burst",
    "dial_350_440hz",
    "speech_then_dtmf",
)


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
    open_by_line = np.zeros(pool.shape[0])
    for name, part in parts.items():
        used = 0.0
        for k in range(ticks):
            cols = (shift[:, None] + k * FRAME + np.arange(FRAME)[None, :]) % pool.shape[1]
            frame = pool[rows[:, None], cols]
            t0 = time.process_time()
            part.feed(frame)
            used += time.process_time() - t0
            if name == "callerid":
                open_by_line += np.bincount(rows[part.open_lines], minlength=pool.shape[0])
        per_part[name] = int(channel_seconds / max(used, 1e-9))
    gate = {}
    if "callerid" in parts:
        line_ticks = np.bincount(rows, minlength=pool.shape[0]) * ticks
        gate = {
            "callerid_gate_open_fraction": round(float(open_by_line.sum() / (channels * ticks)), 4),
            "callerid_gate_open_fraction_by_line": {
                name: round(float(open_by_line[i] / max(line_ticks[i], 1)), 4)
                for i, name in enumerate(POOL_LINES)
            },
        }
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
        **gate,
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


def callerid_latency(trials: int, seed: int) -> dict:
    from simulators import callerid_gen

    rng = np.random.default_rng(seed)
    message = callerid_gen.mdmf_callerid(datetime_mmddhhmm="01151230", number="0312345678", name="TANAKA")
    ntt = callerid_gen.ntt_callerid("0312345678")
    lat = []
    missed = 0
    for i in range(trials):
        standard, frame_bytes = (("bell202", message), ("etsi", message), ("ntt", ntt))[i % 3]
        lead = int(rng.integers(0, FRAME))
        burst = callerid_gen.callerid_burst(frame_bytes, standard=standard, level_dbm0=-20.0)
        x = np.concatenate([np.zeros(800 + lead), burst, np.zeros(1600)]).astype(np.float32)
        last_byte_end = 800 + lead + callerid_gen.burst_message_end(frame_bytes, standard=standard) * RATE
        bank = LineAnalyzerBank(1, cid="auto")
        seen = None
        for start in range(0, x.size, FRAME):
            evs = bank.feed(x[None, start : start + FRAME])
            if any(getattr(e, "type", None) == "callerid" for _, e in evs):
                seen = start + FRAME
                break
        if seen is None:
            missed += 1
        else:
            lat.append((seen - last_byte_end) * 1000.0 / RATE)
    a = np.array(lat) if lat else np.array([np.nan])
    return {
        "bench": "callerid_latency_last_byte_to_event",
        "trials": trials,
        "missed": missed,
        "mean_ms": round(float(a.mean()), 1),
        "p95_ms": round(float(np.percentile(a, 95)), 1),
        "max_ms": round(float(a.max()), 1),
        "frame_ms": FRAME * 1000 // RATE,
    }


_SPEECH = {  # espeak-ng voice: text (patient-relations phrases, as a hospital line would carry)
    "en-us": "Good morning, this is the patient relations office of the city hospital. Your appointment on "
    "Tuesday at three fifteen is confirmed. Please call us back if you need to change it.",
    "cmn": "您好，这里是市立医院患者服务中心。您的预约已经确认，请在星期二下午三点到达。如需改期请回电。",
    "ja": "こんにちは、こちらは市立病院の患者相談窓口です。ご予約は火曜日の午後三時に確定しました。"
    "変更がある場合はお電話ください。",
}


def gate_on_speech(seed: int) -> dict:
    """Gate-open fraction of the caller-ID bank on espeak-ng speech (skipped when espeak-ng is missing)."""
    from drivers.dsp.callerid import CallerIdDetectorBank

    espeak = shutil.which("espeak-ng")
    result: dict = {"bench": "callerid_gate_on_speech", "espeak_ng": espeak is not None}
    if espeak is None:
        return result
    import soundfile
    import soxr

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        for voice, text in _SPEECH.items():
            wav = Path(tmp) / f"{voice}.wav"
            subprocess.run([espeak, "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
            audio, rate = soundfile.read(wav)
            x = soxr.resample(audio, rate, RATE)
            x = x * signals.amplitude(-15.0) / np.sqrt(2 * np.mean(x[np.abs(x) > 0.01] ** 2))
            lines = signals.line(np.tile(x, 3), noise_dbm0=-65, law="ulaw", rng=rng)[None, :]
            bank = CallerIdDetectorBank(1, "auto", RATE, dtmf=False)
            opened = events = 0
            ticks = lines.shape[1] // FRAME
            for k in range(ticks):
                events += len(bank.feed(lines[:, k * FRAME : (k + 1) * FRAME].astype(np.float32)))
                opened += bank.open_lines.size
            result[voice] = {
                "seconds": round(ticks * FRAME / RATE, 1),
                "open_fraction": round(opened / ticks, 4),
            }
            result[voice]["false_caller_ids"] = events
    return result


def tick_cost(seed: int, feeds: int = 2000) -> dict:
    """Microseconds per ``feed`` of one 20 ms frame, best of three rounds of ``feeds`` after a warm-up."""
    from simulators import callerid_gen

    rng = np.random.default_rng(seed)
    burst = callerid_gen.callerid_burst(callerid_gen.ntt_callerid("0312345678"), standard="ntt")
    burst = np.pad(burst, (0, -burst.size % FRAME)).astype(np.float32)
    out: dict = {"bench": "dsp_tick_cost", "feeds": feeds}
    for channels in (1, 8, 32):
        noise = (rng.standard_normal((channels, FRAME * 50)) * 10 ** (-60 / 20)).astype(np.float32)
        for name, audio in (("noise", noise), ("ntt_burst", np.tile(burst, (channels, 1)))):
            frames = audio.shape[1] // FRAME
            best = float("inf")
            for _ in range(3):
                bank = LineAnalyzerBank(channels, tones="jp", cid="auto")
                for k in range(min(200, frames)):  # warm-up
                    bank.feed(audio[:, k * FRAME : (k + 1) * FRAME])
                bank = LineAnalyzerBank(channels, tones="jp", cid="auto")
                start = time.perf_counter()
                for i in range(feeds):
                    k = i % frames  # the burst restarts from its beginning: receivers open again
                    bank.feed(audio[:, k * FRAME : (k + 1) * FRAME])
                best = min(best, time.perf_counter() - start)
            out[f"{name}_c{channels}_us"] = round(best / feeds * 1e6, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_dsp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--tones", default="jp")
    ap.add_argument("--latency-trials", type=int, default=200)
    ap.add_argument("--cid-latency-trials", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tick-cost", action="store_true", help="only the per-feed cost of small banks")
    args = ap.parse_args(argv)
    if args.tick_cost:
        print(json.dumps(tick_cost(args.seed)), flush=True)
        return
    print(json.dumps(throughput(args.channels, args.seconds, args.tones, args.seed)), flush=True)
    print(json.dumps(latency(args.latency_trials, args.seed)), flush=True)
    if caller_id_available():
        print(json.dumps(callerid_latency(args.cid_latency_trials, args.seed)), flush=True)
        print(json.dumps(gate_on_speech(args.seed)), flush=True)


if __name__ == "__main__":
    main()
