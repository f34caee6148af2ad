"""Shared pieces of the voice and IVR benchmarks (bench_voice.py, bench_ivr.py): the daemon's config with N
simulated USB-box lines, a frame clock recorder on each simulated box, WebSocket clients in a child process,
and percentile helpers. Not a test helper: only the benchmarks import it.

Time base
=========
The daemon runs its ``usb_box`` simulators paced (``make_box(..., paced=True)``): the box releases one 20 ms
frame per bulk IN read, never before the frame's due time on its own frame clock (``VoiceBox._due``,
``time.monotonic``).  :class:`FrameClock` wraps the ``PstnLine.step`` of one box and records, for every
frame, its line time, its due time and the time the driver actually read it, converted to wall time
(``time.time``, shared with the client process).  A real box sends a frame once its last sample is captured,
so the line-time instant ``t`` in frame ``k`` (line time ``t_k``) happened at
``due_k - FRAME_S + (t - t_k)`` on the wall clock.  A read later than ``due_k`` is host lag: a real box
would have buffered the frame (or dropped it once its buffer is full).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_sms import TOKEN_HASH

FRAME_S = 0.02
RATE = 8000
SILENCE = 0.01  # |sample| above this (-40 dBFS) counts as sound


def line_names(count: int) -> list[str]:
    return [f"line{i:02d}" for i in range(count)]


def voice_config(tmp: Path, lines: int, *, auto_answer_rings: int | None = None, record: bool = False,
                 tree: Path | None = None, ring_gap_s: float = 3.0, country: str = "jp"):
    """The daemon's config: ``lines`` usb_box lines, each on its own simulated box and PSTN line."""
    from gateway.config import Config

    names = line_names(lines)
    voice_lines = [{"name": n, "driver": "usb_box", "serial": f"HCRM-{i:04d}", "tones": country,
                    "auto_answer_rings": auto_answer_rings, "record": record} for i, n in enumerate(names)]
    raw: dict[str, Any] = {
        "gateway": {"data_dir": str(tmp)},
        "api": {"port": 0, "tokens": [{"name": "b", "hash": TOKEN_HASH, "scopes": ["admin"]}]},
        "voice": {"lines": voice_lines, "ring_gap_s": ring_gap_s, "recordings_dir": str(tmp / "rec")},
        "simulators": {"voice_lines": [{"line": n, "country": country} for n in names]},
        "logging": {"level": "warning"},
    }
    if tree is not None:
        raw["ivr"] = {"prompts_dir": str(tree.parent), "tree_file": str(tree),
                      "recordings_dir": str(tmp / "voicemail")}
    return Config.model_validate(raw)


@dataclass
class FrameClock:
    """Per-frame timing of one simulated box (see the module docstring). With ``activity``, also the last
    sound sample of each frame the exchange sent (caller-ID bursts, the caller's DTMF)."""

    box: Any  # simulators.usb_box.VoiceBox
    activity: bool = False
    due: dict[int, float] = field(default_factory=dict)  # frame number -> due time (wall)
    read: dict[int, float] = field(default_factory=dict)  # frame number -> read time (wall)
    last_sound: dict[int, int] = field(default_factory=dict)  # frame number -> index of its last sound sample
    out: list[tuple[float, np.ndarray]] = field(default_factory=list)  # OUT audio packets: (arrival, pcm)

    def __post_init__(self) -> None:
        self._offset = time.time() - time.monotonic()
        step, receive = self.box.line.step, self.box.receive

        def timed_step(upstream=None):
            now = time.monotonic()
            frame = step(upstream)
            k = int(round(frame.t / FRAME_S))
            due = self.box._due if self.box._due is not None else now
            self.due[k], self.read[k] = due + self._offset, now + self._offset
            if self.activity:
                loud = np.flatnonzero(np.abs(frame.audio) > SILENCE)
                if loud.size:
                    self.last_sound[k] = int(loud[-1])
            return frame

        def timed_receive(data: bytes) -> None:
            before = len(self.box.host_audio)
            receive(data)
            if len(self.box.host_audio) > before:
                self.out.append((time.time(), self.box.host_audio[-1]))

        self.box.line.step = timed_step  # instance attributes: the simulator's code is untouched
        self.box.receive = timed_receive

    def wall(self, t: float) -> float | None:
        """Wall time at which line time ``t`` happened on a real box with this frame clock."""
        k = int(np.floor(t / FRAME_S + 1e-9))
        due = self.due.get(k)
        return None if due is None else due - FRAME_S + (t - k * FRAME_S)

    def sound_end_before(self, t: float) -> float | None:
        """Line time just after the last sound sample of the frame ending at line time ``t`` (a PstnLine
        record made when queued audio has been sent is stamped with the start of the next frame)."""
        k = int(round(t / FRAME_S)) - 1
        idx = self.last_sound.get(k)
        return None if idx is None else k * FRAME_S + (idx + 1) / RATE

    def sound_runs_end(self, t0: float, t1: float) -> list[float]:
        """Line times at which runs of sound (frames with sound, contiguous) end, within [t0, t1)."""
        frames = {k for k in self.last_sound if t0 <= k * FRAME_S < t1}
        return [k * FRAME_S + (self.last_sound[k] + 1) / RATE for k in sorted(frames) if k + 1 not in frames]

    def timings(self) -> list[tuple[float, float]]:
        """(due, read) wall times of every frame so far (a copy: the box's thread keeps adding)."""
        due, read = self.due.copy(), self.read.copy()
        return [(d, read[k]) for k, d in due.items() if k in read]

    def lag_ms(self) -> list[float]:
        """Host lag per frame: read time minus due time (ms)."""
        return [(read - due) * 1000 for due, read in self.timings()]


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    return round(s[max(0, min(len(s) - 1, int(np.ceil(q / 100 * len(s))) - 1))], 2)


def summary(values: list[float], prefix: str) -> dict[str, Any]:
    if not values:
        return {f"{prefix}_samples": 0}
    return {f"{prefix}_samples": len(values), f"{prefix}_p50_ms": round(statistics.median(values), 2),
            f"{prefix}_p99_ms": pct(values, 99), f"{prefix}_max_ms": round(max(values), 2)}




async def wait_lines(gw, state: str = "idle", within: float = 30.0) -> None:
    """Until every voice line is in ``state`` (they start ``down`` until their box is found)."""
    import trio

    voice = gw.services.voice
    sub = gw.bus.subscribe(types={"line.state_changed"})
    with trio.fail_after(within):
        if all(v["state"] == state for v in voice.line_views()):
            return
        async for _ in sub:
            if all(v["state"] == state for v in voice.line_views()):
                return


def attach_clocks(gw, *, activity: bool = False) -> dict[str, FrameClock]:
    return {name: FrameClock(backend.box, activity=activity)
            for name, backend in gw.devices.usb_backends.items()}


def cpu_seconds() -> float:
    return time.process_time()
