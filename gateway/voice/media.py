"""Prompts in, recordings out, at the line format (8 kHz mono float32, full scale 1.0).

Prompts: WAV/FLAC/OGG of any rate and channel count, read with soundfile, mixed to mono, resampled once with
soxr (VHQ) and kept in an LRU cache keyed by (path, mtime, size), so an operator who replaces a prompt file is
heard at the next call without a restart.

Recordings: soundfile, FLAC 16-bit by default, with the call's metadata in the file's tags (title = call id,
artist = number, album = line, comment = direction, date = start time). The writer flushes to the OS at
least every ``flush_s`` (0.5) seconds of audio; libsndfile's FLAC encoder holds back up to one 4096-sample
block (0.51 s) more, so a crash loses at most the last second. A file cut short by a crash has no length in
its STREAMINFO (FLAC: total samples 0 = unknown); :func:`read_recording` reads it to its last whole frame.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import trio

RATE = 8000
SILENCE_RMS = 10 ** (-45 / 20)  # about -45 dBFS: a received frame quieter than this counts as silence


def frame_is_loud(frame: np.ndarray) -> bool:
    """True when a received frame carries more than line noise (speech, tones, key presses)."""
    return bool(frame.size) and float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))) >= SILENCE_RMS


class PromptError(ValueError):
    """A prompt file is missing or not readable as audio; the message names the file."""


def _decode_prompt(path: Path) -> np.ndarray:
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise PromptError(f"prompt {path} does not exist") from None
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise PromptError(f"prompt {path} is not a readable audio file: {exc}") from None
    mono = data.mean(axis=1, dtype=np.float32)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE, quality="VHQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


class PromptCache:
    """Prompts decoded and converted to the line format once, keyed by file, mtime and size.

    A file is looked at again (``stat`` in a worker thread) at most every ``revalidate_s``: a prompt
    replaced on disk is played within that time, and a key press does not wait for a thread round trip
    before its next prompt (with 32 calls pressing at once those queued behind each other: issue 6's
    key -> prompt latency)."""

    def __init__(self, max_entries: int = 128, *, revalidate_s: float = 1.0) -> None:
        self.max_entries = max_entries
        self.revalidate_s = revalidate_s
        self._entries: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._checked: dict[str, tuple[float, tuple[str, int, int]]] = {}  # path -> (trio time, key)
        self.loads = 0  # decodes done (cache misses), for tests and metrics

    async def load(self, path: Path | str) -> np.ndarray:
        path = Path(path)
        checked = self._checked.get(str(path))
        if checked is not None and trio.current_time() - checked[0] < self.revalidate_s:
            hit = self._entries.get(checked[1])
            if hit is not None:
                self._entries.move_to_end(checked[1])
                await trio.lowlevel.checkpoint()
                return hit
        try:
            st = await trio.to_thread.run_sync(path.stat)
        except FileNotFoundError:
            self._checked.pop(str(path), None)
            raise PromptError(f"prompt {path} does not exist") from None
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        self._checked[str(path)] = (trio.current_time(), key)
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        samples = await trio.to_thread.run_sync(_decode_prompt, path)
        samples.setflags(write=False)
        self.loads += 1
        for old in [k for k in self._entries if k[0] == key[0]]:  # an older version of the same file
            del self._entries[old]
        self._entries[key] = samples
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        if len(self._checked) > 4 * self.max_entries:  # paths seen once long ago
            self._checked.clear()
        return samples


def beep(freq: float = 1000.0, seconds: float = 0.4, level: float = 0.25) -> np.ndarray:
    """The record tone: a sine with 10 ms raised-cosine edges (no click on the line)."""
    n = int(seconds * RATE)
    t = np.arange(n, dtype=np.float64) / RATE
    x = level * np.sin(2 * np.pi * freq * t)
    edge = min(int(0.01 * RATE), n // 2)
    if edge:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)
        x[:edge] *= ramp
        x[n - edge :] *= ramp[::-1]
    return x.astype(np.float32)


@dataclass(frozen=True)
class RecordingInfo:
    call_id: str
    line: str
    direction: str
    number: str | None
    started_at: str  # RFC 3339


class RecordingWriter:
    """Append-only recording file. ``write`` buffers in memory; every ``flush_s`` seconds of audio the buffer
    is written and flushed in a worker thread. ``close`` writes the rest and finalises the file."""

    def __init__(
        self,
        path: Path,
        info: RecordingInfo,
        *,
        format: str = "FLAC",
        subtype: str = "PCM_16",
        flush_s: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.info = info
        self.flush_every = int(flush_s * RATE)
        self.samples = 0
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = sf.SoundFile(
            str(self.path), "w", samplerate=RATE, channels=1, format=format, subtype=subtype
        )
        self._file.title = info.call_id
        self._file.album = info.line
        self._file.comment = f"direction={info.direction}"
        self._file.date = info.started_at
        if info.number:
            self._file.artist = info.number
        self._file.software = "hcrm-gateway"

    @property
    def seconds(self) -> float:
        return self.samples / RATE

    async def write(self, frame: np.ndarray) -> None:
        x = np.clip(np.asarray(frame, dtype=np.float32), -1.0, 1.0)
        self._pending.append(x)
        self._pending_n += x.size
        self.samples += x.size
        if self._pending_n >= self.flush_every:
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        block = np.concatenate(self._pending)
        self._pending, self._pending_n = [], 0
        await trio.to_thread.run_sync(self._write_block, block)

    def _write_block(self, block: np.ndarray) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(block)
                self._file.flush()

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await self.flush()
            await trio.to_thread.run_sync(self._close_file)

    def _close_file(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def read_recording(path: Path | str, block: int = 8192) -> tuple[np.ndarray, int]:
    """All samples of a recording, finished or cut short by a crash, and its rate (blocking).

    soundfile's ``read`` seeks after each block, which fails on a FLAC file of unknown length, so the blocks
    are read with libsndfile's ``sf_readf_float`` through soundfile's own binding."""
    with sf.SoundFile(str(path)) as f:
        parts = []
        while True:
            buf = np.empty(block * f.channels, dtype=np.float32)
            got = sf._snd.sf_readf_float(f._file, sf._ffi.cast("float *", buf.ctypes.data), block)
            if got <= 0:
                break
            parts.append(buf[: got * f.channels].reshape(-1, f.channels).mean(axis=1))
        samples = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return samples.astype(np.float32), f.samplerate
