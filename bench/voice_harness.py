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

import bisect
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


SETTLE_S = 5.0  # once the lines are up: the gateway lines up the boxes' frame phases within ~3 s


def line_names(count: int) -> list[str]:
    return [f"line{i:02d}" for i in range(count)]


def voice_config(tmp: Path, lines: int, *, auto_answer_rings: int | None = None, record: bool = False,
                 tree: Path | None = None, ring_gap_s: float = 3.0, country: str = "jp",
                 simulated_here: bool = True):
    """The daemon's config: ``lines`` usb_box lines, each on its own simulated box and PSTN line."""
    from gateway.config import Config

    names = line_names(lines)
    voice_lines = [{"name": n, "driver": "usb_box", "serial": f"HCRM-{i:04d}", "tones": country,
                    "auto_answer_rings": auto_answer_rings, "record": record} for i, n in enumerate(names)]
    raw: dict[str, Any] = {
        "gateway": {"data_dir": str(tmp)},
        "api": {"port": 0, "tokens": [{"name": "b", "hash": TOKEN_HASH, "scopes": ["admin"]}]},
        "voice": {"lines": voice_lines, "ring_gap_s": ring_gap_s, "recordings_dir": str(tmp / "rec")},
        "simulators": {"voice_lines": [{"line": n, "country": country} for n in names if simulated_here]},
        "logging": {"level": "warning"},
    }
    if tree is not None:
        raw["ivr"] = {"prompts_dir": str(tree.parent), "tree_file": str(tree),
                      "recordings_dir": str(tmp / "voicemail")}
    return Config.model_validate(raw)


@dataclass
class FrameTimes:
    """Per-frame timing of one simulated box (see the module docstring): for each IN frame, the line sample
    its audio ends at, its due time and the time the driver read it; the last sound sample of each 20 ms
    step of the exchange line (caller-ID bursts, the caller's DTMF); and the OUT audio packets with their
    arrival times. IN frames are line steps unless the box was asked to move its frame phase (FRAME_PHASE:
    one longer or shorter frame)."""

    due: dict[int, float] = field(default_factory=dict)  # IN frame number -> due time (wall)
    read: dict[int, float] = field(default_factory=dict)  # IN frame number -> read time (wall)
    ends: list[int] = field(default_factory=list)  # IN frame number -> line sample its audio ends at
    last_sound: dict[int, int] = field(default_factory=dict)  # line step -> index of its last sound sample
    out: list[tuple[float, np.ndarray]] = field(default_factory=list)  # OUT audio packets: (arrival, pcm)

    def frame_of(self, t: float) -> tuple[int, float] | None:
        """(IN frame number, line time its audio ends at) of the frame holding line time ``t``."""
        i = bisect.bisect_right(self.ends, t * RATE + 1e-6)
        return None if i >= len(self.ends) else (i, self.ends[i] / RATE)

    def wall(self, t: float) -> float | None:
        """Wall time at which line time ``t`` happened on a real box with this frame clock (its frame
        leaves the box when its last sample is captured)."""
        found = self.frame_of(t)
        if found is None or found[0] not in self.due:
            return None
        i, end = found
        return self.due[i] - (end - t)

    def sound_end_before(self, t: float) -> float | None:
        """Line time just after the last sound sample of the line step ending at line time ``t`` (a
        PstnLine record made when queued audio has been sent is stamped with the start of the next step)."""
        k = int(round(t / FRAME_S)) - 1
        idx = self.last_sound.get(k)
        return None if idx is None else k * FRAME_S + (idx + 1) / RATE

    def sound_runs_end(self, t0: float, t1: float) -> list[float]:
        """Line times at which runs of sound (line steps with sound, contiguous) end, within [t0, t1)."""
        frames = {k for k in self.last_sound if t0 <= k * FRAME_S < t1}
        return [k * FRAME_S + (self.last_sound[k] + 1) / RATE for k in sorted(frames) if k + 1 not in frames]

    def timings(self) -> list[tuple[float, float]]:
        """(due, read) wall times of every IN frame so far (a copy: the box's thread keeps adding)."""
        due, read = self.due.copy(), self.read.copy()
        return [(d, read[k]) for k, d in due.items() if k in read]

    def lag_ms(self) -> list[float]:
        """Host lag per frame: read time minus due time (ms)."""
        return [(read - due) * 1000 for due, read in self.timings()]


class FrameClock(FrameTimes):
    """Records :class:`FrameTimes` of ``box`` (a ``simulators.usb_box.VoiceBox``) by wrapping its
    ``next_frame``, its line's ``step`` and its ``receive`` (instance attributes: the simulator's code is
    untouched)."""

    def __init__(self, box: Any, activity: bool = False) -> None:
        super().__init__()
        self.box, self.activity = box, activity
        self._offset = time.time() - time.monotonic()
        next_frame, step, receive = box.next_frame, box.line.step, box.receive

        def timed_next_frame() -> bytes:
            data = next_frame()
            now = time.monotonic()
            k = len(self.ends)
            due = box._due if box._due is not None else now
            # The box holds a frame built ahead until it is due (VoiceBox.release): read then, or now if late.
            self.due[k], self.read[k] = due + self._offset, max(now, due) + self._offset
            self.ends.append(box.delivered)
            return data

        def timed_step(upstream=None):
            frame = step(upstream)
            if self.activity:
                loud = np.flatnonzero(np.abs(frame.audio) > SILENCE)
                if loud.size:
                    self.last_sound[int(round(frame.t / FRAME_S))] = int(loud[-1])
            return frame

        def timed_receive(data: bytes) -> None:
            before = len(box.host_audio)
            receive(data)
            if len(box.host_audio) > before:
                self.out.append((time.time(), box.host_audio[-1].astype(np.float32)))

        box.next_frame = timed_next_frame
        box.line.step = timed_step
        box.receive = timed_receive

    def snapshot(self) -> FrameTimes:
        return FrameTimes(self.due.copy(), self.read.copy(), list(self.ends), self.last_sound.copy(),
                          list(self.out))

    def frames(self) -> int:
        return len(self.due)


def instrument(backends: dict[str, Any], objects: dict[str, Any]) -> None:
    """The box farm's setup hook (``simulators.usb_remote --setup bench.voice_harness:instrument``): a
    frame clock on every box, reachable as ``clock:NAME``."""
    for name, backend in backends.items():
        objects[f"clock:{name}"] = FrameClock(backend.box, activity=True)


class Boxes:
    """The simulated boxes and exchange lines of a benchmark, wherever they run: in the daemon's process
    (``--in-process``: ``run_gateway`` builds them from ``config.simulators``) or in a box farm process
    (the default, ``simulators/usb_remote.py``), which is how a real box loads the host: its frames cost the
    gateway's process nothing until they are read."""

    def __init__(self, names: list[str], *, remote: bool, country: str = "jp") -> None:
        self.names, self.remote, self.country = names, remote, country
        self._proc: Any = None
        self._control: Any = None
        self._gw: Any = None
        self._clocks: dict[str, FrameClock] = {}
        self._backends: dict[str, Any] = {}

    def __enter__(self) -> Boxes:
        if self.remote:
            import subprocess
            import sys
            import tempfile

            from simulators.usb_remote import FarmControl, RemoteUsbBackend

            path = str(Path(tempfile.mkdtemp(prefix="hcrm-farm-")) / "boxes.sock")
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "simulators.usb_remote", "--socket", path,
                 "--lines", ",".join(self.names), "--country", self.country,
                 "--setup", "bench.voice_harness:instrument"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
            if self._proc.stdout.readline().strip() != b"READY":
                raise RuntimeError("the box farm did not start")
            self._control = FarmControl(path)
            self._backends = {name: RemoteUsbBackend(path, name) for name in self.names}
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            for backend in self._backends.values():
                backend.close()
            self._control.close()
            self._proc.stdin.close()
            self._proc.wait(timeout=10)

    def usb_backends(self) -> dict[str, Any]:
        """For ``run_gateway(..., usb_backends=...)`` (empty in process: the daemon builds its own)."""
        return dict(self._backends)

    def attach(self, gw, *, activity: bool = False) -> None:
        """Once the daemon runs: frame clocks on the in-process boxes (the farm's are on from the start)."""
        self._gw = gw
        if not self.remote:
            self._clocks = {name: FrameClock(backend.box, activity=activity)
                            for name, backend in gw.devices.usb_backends.items()}

    def call(self, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``method`` of line ``name``'s exchange simulator (a PstnLine)."""
        if self.remote:
            return self._control.call(f"line:{name}", method, *args, **kwargs)
        return getattr(self._gw.devices.lines[name], method)(*args, **kwargs)

    def get(self, name: str, attr: str) -> Any:
        if self.remote:
            return self._control.get(f"line:{name}", attr)
        return getattr(self._gw.devices.lines[name], attr)

    def clock(self, name: str) -> FrameTimes:
        if self.remote:
            return self._control.call(f"clock:{name}", "snapshot")
        return self._clocks[name].snapshot()

    def frames(self) -> int:
        """Frames read so far, every box."""
        if self.remote:
            return sum(self._control.call(f"clock:{n}", "frames") for n in self.names)
        return sum(c.frames() for c in self._clocks.values())


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


def cpu_seconds() -> float:
    return time.process_time()
