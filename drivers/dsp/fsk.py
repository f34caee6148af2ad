"""Streaming 1200 bit/s FSK receivers for caller-ID data (Bell 202 and V.23), with the async byte framing.

``FskReceiverBank`` demodulates one FSK standard on any number of lines in lockstep: every step below is
one numpy operation over a ``(lines, samples)`` array, and the async framer advances all lines together
one character per round. ``FskReceiver`` is the same code on one line (a bank of one row). ``feed``
returns the ``UartByte`` and ``CarrierLost`` items completed so far; nothing inside reads a clock or does
I/O. Byte and message meaning live in ``callerid.py``. ``FskGate`` is the cheap test, run on every line
of a bank, that decides which lines need a receiver at all.

Signal path (loops only per received CHARACTER round or carrier change, never per sample or per line):

1. band-pass FIR (windowed sinc) around the two tones, also the in-band power for carrier detect;
2. quadrature mixing with the mark and the space reference, moving sums over one bit (a matched
   non-coherent detector: integrate-and-dump when sampled at the bit centre);
3. soft bit ``(|mark|^2 - |space|^2) / (|mark|^2 + |space|^2)``, > 0 = mark (binary 1);
4. carrier = in-band power above a level AND a fraction of the total power, with hysteresis;
5. asynchronous framing: a falling edge (mark -> space) while carrier is on opens a start bit, bits are
   read at their centres, the 10th must be a stop bit (mark). 8 data bits LSB first. NTT's 7E1 framing
   is the same 10-bit frame with the even-parity bit as bit 7, so the raw 8-bit value is reported and the
   NTT layer checks parity.

Before each byte the receiver reports how many mark bits preceded it (message framing needs a mark
"carrier signal" run before the first byte: GR-30-CORE; EN 300 659-1 data link layer) and, after a
long enough mark run, the measured offset of the mark tone from this receiver's nominal mark
frequency. The Bell 202 and V.23 receivers decode each other's signals (1200 vs 1300 Hz mark); the
offset tells them apart.

A line whose block is below ``silence_dbm0`` while its carrier is off restarts (filters and framing
from silence): the same decision a line would take on its own, so results do not depend on how lines
are grouped or how the audio is cut into frames.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from drivers.dsp.goertzel import BlockStream, channel_rows, hann, sinusoid_basis

__all__ = [
    "BELL202",
    "V23",
    "CarrierLost",
    "FskGate",
    "FskReceiver",
    "FskReceiverBank",
    "FskSpec",
    "UartByte",
    "dbm0_to_power",
    "power_to_dbm0",
]

# ITU-T G.711: the µ-law/A-law digital milliwatt is a sine 3.17 dB below the overload point, so with
# full scale = 1.0 a 0 dBm0 sine has amplitude 10^(-3.17/20) and mean power half its square.
_DBM0_REF_POWER = 0.5 * 10.0 ** (-3.17 / 10.0)


def dbm0_to_power(level_dbm0: float) -> float:
    """Mean square (full scale 1.0) of a sine at ``level_dbm0``."""
    return _DBM0_REF_POWER * 10.0 ** (level_dbm0 / 10.0)


def power_to_dbm0(power: float) -> float:
    """Level in dBm0 of a signal whose mean square (full scale 1.0) is ``power``."""
    return 10.0 * math.log10(max(power, 1e-30) / _DBM0_REF_POWER)


@dataclass(frozen=True, slots=True)
class FskSpec:
    name: str
    mark_hz: int  # binary 1, also the idle (marking) state
    space_hz: int  # binary 0
    baud: float = 1200.0


# Bell 202 as used by Telcordia GR-30-CORE (CLASS caller ID): mark 1200 Hz, space 2200 Hz, 1200 bit/s.
BELL202 = FskSpec("bell202", 1200, 2200)
# ITU-T V.23 forward channel, mode 2 (1200 bit/s): "1" (mark) 1300 Hz, "0" (space) 2100 Hz. Used by
# ETSI EN 300 659-1 (physical layer) and by NTT number display (「電話サービスのインタフェース」 第5分冊).
V23 = FskSpec("v23", 1300, 2100)


@dataclass(frozen=True, slots=True)
class UartByte:
    """One asynchronous character: start bit, 8 data bits LSB first, stop bit."""

    value: int  # the 8 data bits as received; for 7E1 (NTT) bit 7 is the parity bit
    end_sample: float  # input sample index (from the first sample fed) where the stop bit ends
    idle_bits: float  # mark bits between the previous character (or carrier start) and this start bit
    framing_ok: bool  # False when the stop bit was a space (framing error)
    mark_offset_hz: float | None = None  # measured mark tone minus nominal, after >= 8 idle bits


@dataclass(frozen=True, slots=True)
class CarrierLost:
    """The FSK carrier dropped: a message in progress is incomplete."""

    sample: float


Item = UartByte | CarrierLost

_OFFSET_SPAN_HZ = 150
_OFFSET_STEP_HZ = 5
_BUFFER_LIMIT = 4096  # samples of soft bits kept at most behind the newest one


@lru_cache(maxsize=64)
def _reference(freq_hz: int, sample_rate: int) -> np.ndarray:
    """One period of exp(-j*2*pi*f*n/fs), indexed by ``n % len``; shared by every receiver."""
    period = sample_rate // math.gcd(int(freq_hz), sample_rate)
    n = np.arange(period)
    ref = np.exp(-2j * np.pi * freq_hz * n / sample_rate)
    ref.setflags(write=False)
    return ref


_BIT_WEIGHTS = 1 << np.arange(8)  # data bits LSB first


def _reference_run(ref: np.ndarray, start: int, n: int, runs: dict[int, np.ndarray]) -> np.ndarray:
    """``ref[(start + arange(n)) % len(ref)]``, sliced from ``ref`` repeated (kept in ``runs``)."""
    period = ref.size
    phase = start % period
    run = runs.get(period)
    if run is None or run.size < phase + n:
        run = np.tile(ref, -(-(period + n) // period))
        run.setflags(write=False)
        runs[period] = run
    return run[phase : phase + n]


@lru_cache(maxsize=16)
def _bandpass(low_hz: float, high_hz: float, taps: int, sample_rate: int) -> np.ndarray:
    """Linear-phase band-pass FIR (Hamming-windowed sinc), unit gain at the band centre."""
    n = np.arange(taps) - (taps - 1) / 2.0
    lo, hi = low_hz / sample_rate, high_hz / sample_rate
    h = 2.0 * hi * np.sinc(2.0 * hi * n) - 2.0 * lo * np.sinc(2.0 * lo * n)
    h *= np.hamming(taps)
    centre = (low_hz + high_hz) / 2.0
    gain = abs(np.sum(h * np.exp(-2j * np.pi * centre / sample_rate * np.arange(taps))))
    h = h / gain
    h.setflags(write=False)
    return h


@lru_cache(maxsize=64)
def _filter_spectrum(h_bytes: bytes, nfft: int) -> np.ndarray:
    return np.fft.rfft(np.frombuffer(h_bytes)[::-1], nfft)


@lru_cache(maxsize=16)
def _offset_basis(mark_hz: int, sample_rate: int) -> np.ndarray:
    """exp(-j*2*pi*f*n/fs) for the mark-offset grid (rows) and n = 0 .. 100 ms (columns)."""
    grid = mark_hz + np.arange(-_OFFSET_SPAN_HZ, _OFFSET_SPAN_HZ + 1, _OFFSET_STEP_HZ)
    basis = np.exp(np.outer(-2j * np.pi * grid / sample_rate, np.arange(sample_rate // 10 + 1)))
    basis.setflags(write=False)
    return basis


def _fir_rows(joined: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Each row of ``joined`` convolved with ``h``, the 'valid' part (FFT convolution: all rows at once)."""
    length = joined.shape[1]
    nfft = 1 << (length - 1).bit_length()
    spectrum = _filter_spectrum(h.tobytes(), nfft)
    full = np.fft.irfft(np.fft.rfft(joined, nfft, axis=1) * spectrum, nfft, axis=1)
    return full[:, h.size - 1 : length]


def _moving_sum_rows(history: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, sums of each window of history.shape[1]+1 values ending at every column of ``values``;
    also the new history (the last history.shape[1] values)."""
    joined = np.concatenate((history, values), axis=1)
    c = np.cumsum(joined, axis=1)
    width = history.shape[1] + 1
    n = values.shape[1]
    out = c[:, width - 1 :].copy()
    out[:, 1:] -= c[:, : n - 1]
    return out, joined[:, n:]


class FskReceiverBank:
    """Demodulator + async framer for one FSK standard on many lines fed in lockstep.

    Lines join with ``add(lines, preroll)`` (their receivers start ``preroll.shape[1]`` samples in the
    past, so a receiver started late still sees the mark run before the first byte), leave with
    ``remove(mask)``, and are fed together: ``feed(x)`` with ``x[i]`` the samples of ``lines[i]``.
    Every line's results are those of an ``FskReceiver`` fed the same samples. See the module docstring.
    """

    def __init__(
        self,
        spec: FskSpec,
        sample_rate: int = 8000,
        *,
        min_level_dbm0: float = -43.0,
        band_ratio_on: float = 0.75,  # white noise puts ~0.55 (Bell 202) / 0.5 (V.23) of its power
        band_ratio_off: float = 0.62,  # in the pass band, FSK at 6 dB SNR ~0.9
        silence_dbm0: float = -50.0,
        carrier_window_ms: float = 20.0,
    ) -> None:
        if sample_rate < 2 * (spec.space_hz + 600):
            raise ValueError(
                f"sample rate {sample_rate} Hz is too low for {spec.name} FSK "
                f"(needs at least {2 * (spec.space_hz + 600)} Hz)"
            )
        if not 0.0 < band_ratio_off <= band_ratio_on < 1.0:
            raise ValueError("carrier band ratios must satisfy 0 < off <= on < 1")
        self.spec = spec
        self.sample_rate = fs = int(sample_rate)
        self._spb = fs / spec.baud  # samples per bit (6.667 at 8 kHz)
        taps = 2 * round(0.003 * fs) + 1  # 49 taps at 8 kHz: 6 ms span, ~3 ms delay
        # Pass band: both tones plus half the bit rate of modulation sidebands each side.
        self._h = _bandpass(spec.mark_hz - spec.baud / 2, spec.space_hz + spec.baud / 2, taps, fs)
        self._ref_mark = _reference(spec.mark_hz, fs)
        self._ref_space = _reference(spec.space_hz, fs)
        self._mark_runs: dict[int, np.ndarray] = {}  # the references repeated, see _reference_run
        self._space_runs: dict[int, np.ndarray] = {}
        self._bit_len = max(2, round(self._spb))  # integration window: one bit
        # Trial timings of one character: +/-1.5 samples around the edge (7 rows) x 10 bit centres.
        self._grid = np.linspace(-1.5, 1.5, 7)[:, None] * fs / 8000.0 + (np.arange(10) + 0.5) * self._spb
        self._win = max(8, round(carrier_window_ms * fs / 1000.0))
        # Index shifts from "newest input sample in the window" to the time the value describes.
        self._delay = (taps - 1) / 2.0 + (self._bit_len - 1) / 2.0
        self._on_power = dbm0_to_power(min_level_dbm0)
        self._off_power = dbm0_to_power(min_level_dbm0 - 3.0)
        self._ratio_on = band_ratio_on
        self._ratio_off = band_ratio_off
        self._silence_power = dbm0_to_power(silence_dbm0)
        self._offset_basis = _offset_basis(spec.mark_hz, fs)
        # Band-passed samples kept per line for the mark-offset estimate: up to 100 ms before a start bit.
        self._y_margin = fs // 10 + 2 * self._bit_len + 8
        self._next_index = 0  # absolute index of the next input sample, the same for every line
        self._init_rows(np.zeros(0, dtype=np.intp), 0)

    # ----------------------------------------------------------------- state
    def _init_rows(self, lines: np.ndarray, start: int) -> None:
        """Fresh state for ``lines``, all starting at sample ``start``."""
        k = lines.size
        self.lines = np.asarray(lines, dtype=np.intp).copy()
        self._next_index = start
        self._x_hist = np.zeros((k, self._h.size - 1))
        self._m_hist = np.zeros((k, self._bit_len - 1), dtype=complex)
        self._s_hist = np.zeros((k, self._bit_len - 1), dtype=complex)
        self._pb_hist = np.zeros((k, self._win - 1))
        self._pt_hist = np.zeros((k, self._win - 1))
        self._carrier = np.zeros(k, dtype=bool)
        self._buf_start = start
        self._soft = np.zeros((k, 0))
        self._carr = np.zeros((k, 0), dtype=bool)
        self._y_ring = np.zeros((k, 1024))  # column = absolute sample index % width
        self._pos = np.full(k, float(start))  # UART search position (absolute)
        self._last_end = np.full(k, -math.inf)  # end of the previous character's stop bit
        self._carrier_on_at = np.full(k, -math.inf)
        self._valid_from = np.full(k, start, dtype=np.int64)  # first sample of the current run
        self._first_transition = np.full(k, math.inf)
        self._transitions: list[list[tuple[int, bool]]] = [[] for _ in range(k)]

    _ROW_ARRAYS = (
        "lines",
        "_x_hist",
        "_m_hist",
        "_s_hist",
        "_pb_hist",
        "_pt_hist",
        "_carrier",
        "_pos",
        "_last_end",
        "_carrier_on_at",
        "_valid_from",
        "_first_transition",
    )
    # Everything that describes the lines (the rest is configuration shared by every line).
    _STATE = frozenset((*_ROW_ARRAYS, "_buf_start", "_soft", "_carr", "_y_ring", "_transitions"))

    @property
    def busy(self) -> np.ndarray:
        """Per line (row order of ``lines``): True while a carrier is present."""
        return self._carrier

    @property
    def samples_seen(self) -> int:
        return self._next_index

    def restart(self, skip: int = 0) -> None:
        """Every line restarts from silence; the clock first advances over ``skip`` samples."""
        self._init_rows(self.lines, self._next_index + int(skip))

    def advance(self, count: int) -> None:
        """The clock moves over ``count`` samples while no line is present."""
        if self.lines.size:
            raise RuntimeError("advance() is for an empty bank: feed the lines their samples")
        start = self._next_index + int(count)
        if self._soft.shape[1] == 0 and self._carr.shape[1] == 0 and self._y_ring.shape[1] == 1024:
            # Already the fresh state of an empty bank (every row array has no rows): only the clock moves.
            self._next_index = start
            self._buf_start = start
            return
        self._init_rows(self.lines, start)

    def add(self, lines: np.ndarray, preroll: np.ndarray) -> list[tuple[int, Item]]:
        """Start receivers for ``lines`` (not yet in the bank) on their last ``preroll.shape[1]`` samples."""
        lines = np.asarray(lines, dtype=np.intp).reshape(-1)
        x = np.asarray(preroll, dtype=np.float64)
        if x.shape[0] != lines.size or x.ndim != 2:
            raise ValueError(f"expected pre-roll shaped ({lines.size}, N), got {x.shape}")
        if lines.size == 0:
            return []
        fresh = copy.copy(self)
        fresh._init_rows(lines, self._next_index - x.shape[1])
        items = fresh._process(x) if x.shape[1] else [[] for _ in range(lines.size)]
        self._merge(fresh)
        return [(int(line), item) for line, row in zip(lines, items, strict=True) for item in row]

    def remove(self, mask: np.ndarray) -> None:
        """Drop the lines (rows) where ``mask`` is True; their state is forgotten."""
        keep = ~np.asarray(mask, dtype=bool)
        for name in self._ROW_ARRAYS:
            setattr(self, name, getattr(self, name)[keep])
        self._soft = self._soft[keep]
        self._carr = self._carr[keep]
        self._y_ring = self._y_ring[keep]
        self._transitions = [t for t, k in zip(self._transitions, keep, strict=True) if k]

    def _merge(self, other: FskReceiverBank) -> None:
        """Take over the lines of ``other`` (same configuration, same clock): rows are appended, soft-bit
        buffers aligned on the earlier start (the gap is no carrier), y rings brought to one width."""
        if self.lines.size == 0:  # nothing to align with (the clocks are equal)
            self.__dict__.update({k: v for k, v in other.__dict__.items() if k in self._STATE})
            return
        for name in self._ROW_ARRAYS:
            setattr(self, name, np.concatenate((getattr(self, name), getattr(other, name))))
        start = min(self._buf_start, other._buf_start)
        self._soft = np.concatenate(
            (self._left_pad(self._soft, start, 0.0), other._left_pad(other._soft, start, 0.0))
        )
        self._carr = np.concatenate(
            (self._left_pad(self._carr, start, False), other._left_pad(other._carr, start, False))
        )
        self._buf_start = start
        width = max(self._y_ring.shape[1], other._y_ring.shape[1])
        self._y_ring = np.concatenate((self._ring_resized(width), other._ring_resized(width)))
        self._transitions += other._transitions

    def _left_pad(self, buf: np.ndarray, start: int, fill: float | bool) -> np.ndarray:
        extra = self._buf_start - start
        if extra == 0:
            return buf
        pad = np.full((buf.shape[0], extra), fill, dtype=buf.dtype)
        return np.concatenate((pad, buf), axis=1)

    def _ring_resized(self, width: int) -> np.ndarray:
        """The y ring with ``width`` columns, the newest samples kept at their absolute positions."""
        ring = self._y_ring
        if ring.shape[1] == width:
            return ring
        keep = min(ring.shape[1], width)
        idx = np.arange(self._next_index - keep, self._next_index)
        out = np.zeros((ring.shape[0], width))
        out[:, idx % width] = ring[:, idx % ring.shape[1]]
        return out

    # ------------------------------------------------------------------ feed
    def feed(self, x: np.ndarray) -> list[tuple[int, Item]]:
        """``x[i]`` = the next samples of ``lines[i]``; returns ``(line, item)`` in row order, each line's
        items in time order."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != self.lines.size:
            raise ValueError(f"expected samples shaped ({self.lines.size}, N), got {x.shape}")
        if x.shape[1] == 0:
            return []
        if self.lines.size == 0:
            self.advance(x.shape[1])
            return []
        items = self._process(x)
        return [(int(line), item) for line, row in zip(self.lines, items, strict=True) for item in row]

    def _process(self, x: np.ndarray) -> list[list[Item]]:
        rows, n = x.shape
        start = self._next_index
        end = start + n
        self._next_index = end
        x2 = x * x
        # A line without carrier whose block is below the silence level restarts (see module docstring).
        silent = ~self._carrier & (x2.sum(axis=1) < self._silence_power * n)

        joined = np.concatenate((self._x_hist, x), axis=1)
        y = _fir_rows(joined, self._h)
        self._x_hist = joined[:, n:]
        mark = _reference_run(self._ref_mark, start, n, self._mark_runs)
        space = _reference_run(self._ref_space, start, n, self._space_runs)
        cm, self._m_hist = _moving_sum_rows(self._m_hist, y * mark)
        cs, self._s_hist = _moving_sum_rows(self._s_hist, y * space)
        em = cm.real**2 + cm.imag**2
        es = cs.real**2 + cs.imag**2
        soft = (em - es) / (em + es + 1e-20)

        pb, self._pb_hist = _moving_sum_rows(self._pb_hist, y * y)
        pt, self._pt_hist = _moving_sum_rows(self._pt_hist, x2)
        carr = self._carrier_track(pb / self._win, pt / self._win, start, silent)

        self._write_ring(y, start)
        self._soft = np.concatenate((self._soft, soft), axis=1)
        self._carr = np.concatenate((self._carr, carr), axis=1)
        if silent.any():
            self._restart_rows(silent)
        items: list[list[Item]] = [[] for _ in range(rows)]
        self._run_uart(items)
        self._trim()
        return items

    def _restart_rows(self, rows: np.ndarray) -> None:
        """Lines in ``rows`` (mask) start again from silence at the current clock."""
        for name in ("_x_hist", "_m_hist", "_s_hist", "_pb_hist", "_pt_hist"):
            getattr(self, name)[rows] = 0.0
        self._carrier[rows] = False
        self._soft[rows] = 0.0
        self._carr[rows] = False
        # As on a line whose buffer restarts here: an edge needs a sample before it in the new run.
        self._pos[rows] = self._next_index + 1.0
        self._last_end[rows] = -math.inf
        self._carrier_on_at[rows] = -math.inf
        self._valid_from[rows] = self._next_index
        self._first_transition[rows] = math.inf
        for r in np.flatnonzero(rows):
            self._transitions[r] = []

    def _write_ring(self, y: np.ndarray, start: int) -> None:
        end = start + y.shape[1]
        need = end - min(self._buf_start, start) + self._y_margin + 1
        width = self._y_ring.shape[1]
        if need > width:
            self._y_ring = self._ring_resized(1 << (need - 1).bit_length())
            width = self._y_ring.shape[1]
        first = start % width
        split = min(y.shape[1], width - first)
        self._y_ring[:, first : first + split] = y[:, :split]
        self._y_ring[:, : y.shape[1] - split] = y[:, split:]

    def _carrier_track(self, pb: np.ndarray, pt: np.ndarray, start: int, silent: np.ndarray) -> np.ndarray:
        """Carrier on/off per sample with hysteresis, vectorised by forward-filling the decisions."""
        on = (pb >= self._on_power) & (pb >= self._ratio_on * pt)
        off = (pb < self._off_power) | (pb < self._ratio_off * pt)
        n = pb.shape[1]
        last = np.where(on | off, np.arange(n), -1)
        np.maximum.accumulate(last, axis=1, out=last)
        held = on[np.arange(on.shape[0])[:, None], np.maximum(last, 0)]
        state = np.where(last >= 0, held, self._carrier[:, None])
        state[silent] = False
        prev = np.concatenate((self._carrier[:, None], state[:, :-1]), axis=1)
        changed_rows, changed_at = np.nonzero(state != prev)
        for r, i in zip(changed_rows.tolist(), changed_at.tolist(), strict=True):
            self._transitions[r].append((start + i, bool(state[r, i])))
            self._first_transition[r] = min(self._first_transition[r], start + i)
        self._carrier = state[:, -1].copy()
        return state

    # ------------------------------------------------------------------ UART
    def _flush_transitions(self, rows: np.ndarray, upto: np.ndarray, items: list[list[Item]]) -> None:
        """Carrier changes up to ``upto`` (per row) take effect: carrier start times, CarrierLost items."""
        due = self._first_transition[rows] <= upto
        for r, limit in zip(rows[due].tolist(), upto[due].tolist(), strict=True):
            pending = self._transitions[r]
            while pending and pending[0][0] <= limit:
                index, state = pending.pop(0)
                if state:
                    self._carrier_on_at[r] = float(index)
                else:
                    items[r].append(CarrierLost(sample=index - self._delay))
            self._first_transition[r] = pending[0][0] if pending else math.inf

    def _settle(self, rows: np.ndarray, end: int, items: list[list[Item]]) -> None:
        """No character in progress: every carrier change before the last sample is settled."""
        if rows.size:
            self._flush_transitions(rows, np.full(rows.size, end - 2.0), items)
            self._pos[rows] = np.maximum(self._pos[rows], float(end - 1))

    def _run_uart(self, items: list[list[Item]]) -> None:
        soft, carr, base = self._soft, self._carr, self._buf_start
        end = base + soft.shape[1]
        if soft.shape[1] < 2:
            self._settle(np.arange(soft.shape[0]), end, items)
            return
        neg = soft < 0.0
        # Falling edges (first space sample after a mark sample) while the carrier is on, as sorted keys
        # row * width + column of the first space sample.
        width = soft.shape[1]
        edge_rows, edge_cols = np.nonzero(~neg[:, :-1] & neg[:, 1:] & carr[:, 1:])
        keys = edge_rows * width + edge_cols + 1
        has_edges = np.zeros(soft.shape[0], dtype=bool)
        has_edges[edge_rows] = True
        self._settle(np.flatnonzero(~has_edges), end, items)
        todo = np.flatnonzero(has_edges)
        spb = self._spb
        while todo.size:  # one round = at most one character (or glitch) per line
            # The first edge at or after each line's search position.
            first = np.minimum(np.maximum(np.ceil(self._pos[todo] - base), 0), width).astype(np.int64)
            k = np.searchsorted(keys, todo * width + first)
            found = k < keys.size
            found[found] = edge_rows[k[found]] == todo[found]
            self._settle(todo[~found], end, items)
            todo = todo[found]
            e = keys[k[found]] - todo * width  # buffer column of the first space sample
            s0, s1 = soft[todo, e - 1], soft[todo, e]
            t_edge = base + (e - 1) + s0 / (s0 - s1)  # interpolated zero crossing = start of the start bit
            ready = t_edge + 9.5 * spb + 3.0 < end  # else the rest of this character has not arrived yet
            todo, e, t_edge = todo[ready], e[ready], t_edge[ready]
            if not todo.size:
                break
            self._flush_transitions(todo, t_edge, items)
            # The zero crossing jitters in noise: take the timing, within +/-1.5 samples of it, at which
            # the 10 bit centres look most decided (a one-shot early/late gate per character).
            grid = t_edge[:, None, None] + self._grid
            rel = grid - base
            i = np.floor(rel).astype(np.intp)
            frac = rel - i
            r3 = todo[:, None, None]
            trial = soft[r3, i] * (1.0 - frac) + soft[r3, i + 1] * frac
            best = np.argmax(np.abs(trial).sum(axis=2), axis=1)
            pick = np.arange(todo.size)
            bits = trial[pick, best]
            centres = grid[pick, best]
            glitch = bits[:, 0] >= 0.0  # not a start bit: look for the next edge
            self._pos[todo[glitch]] = base + e[glitch] + 1.0
            framed = ~glitch
            rows, bits, centres = todo[framed], bits[framed], centres[framed]
            self._pos[rows] = centres[:, 9]
            stop_at = np.rint(centres[:, 9]).astype(np.intp) - base
            held = carr[rows, stop_at]  # else the carrier was lost inside the character: CarrierLost follows
            if held.any():
                self._emit(rows[held], bits[held], centres[held, 0] - 0.5 * spb, items)

    def _emit(self, rows: np.ndarray, bits: np.ndarray, t_start: np.ndarray, items: list[list[Item]]) -> None:
        spb = self._spb
        values = (bits[:, 1:9] > 0.0) @ _BIT_WEIGHTS
        idle_from = np.maximum(self._last_end[rows], self._carrier_on_at[rows])
        finite = np.isfinite(idle_from)
        idle_bits = np.where(finite, (t_start - np.where(finite, idle_from, 0.0)) / spb, 0.0)
        ends = t_start + 10.0 * spb
        self._last_end[rows] = ends
        for k, r in enumerate(rows.tolist()):
            offset = self._mark_offset(r, idle_from[k], t_start[k]) if idle_bits[k] >= 8.0 else None
            items[r].append(
                UartByte(
                    value=int(values[k]),
                    end_sample=float(ends[k] - self._delay),
                    idle_bits=float(idle_bits[k]),
                    framing_ok=bool(bits[k, 9] > 0.0),
                    mark_offset_hz=offset,
                )
            )

    def _mark_offset(self, row: int, idle_from: float, t_edge: float) -> float | None:
        """Frequency of the steady mark tone before a character minus the nominal mark frequency.

        The peak of the segment's spectrum on a 5 Hz grid within +/-150 Hz of nominal (white noise lifts
        every bin alike, so the peak stays unbiased at low SNR), refined by a parabola through the peak
        and its neighbours. At most the last 100 ms of the run are used; one bit is skipped at each end.
        """
        a = max(int(math.ceil(idle_from + self._spb)), int(self._valid_from[row]))
        b = int(t_edge - self._spb)
        a = max(a, b - self.sample_rate // 10)
        if b - a < 2 * self._bit_len:
            return None
        seg = self._y_ring[row, np.arange(a, b) % self._y_ring.shape[1]]
        power = np.abs(self._offset_basis[:, : b - a] @ seg) ** 2
        k = int(np.argmax(power))
        step = _OFFSET_STEP_HZ
        offset = -_OFFSET_SPAN_HZ + k * step
        if 0 < k < power.size - 1:
            den = power[k - 1] - 2.0 * power[k] + power[k + 1]
            if den < 0.0:
                offset += 0.5 * step * (power[k - 1] - power[k + 1]) / den
        return float(offset)

    def _trim(self) -> None:
        """Keep the soft bits the framer still needs: from the earliest line's search position."""
        end = self._buf_start + self._soft.shape[1]
        if self._pos.size == 0:
            keep_from = end
        else:
            keep_from = max(int(math.floor(self._pos.min())) - 2, end - _BUFFER_LIMIT, self._buf_start)
        drop = keep_from - self._buf_start
        if drop > 0:
            self._soft = self._soft[:, drop:]
            self._carr = self._carr[:, drop:]
            self._buf_start = keep_from
            np.maximum(self._pos, keep_from + 1.0, out=self._pos)


class FskReceiver:
    """Demodulator + async framer for one FSK standard on one line: a ``FskReceiverBank`` of one row.

    ``feed`` takes frames of any length; frames shorter than 5 ms are gathered into blocks (the per-call
    cost stays bounded and the silence test sees enough samples). Results do not depend on the frame size.
    """

    def __init__(self, spec: FskSpec, sample_rate: int = 8000, **options) -> None:
        self._bank = FskReceiverBank(spec, sample_rate, **options)
        self._bank.add(np.zeros(1, dtype=np.intp), np.zeros((1, 0)))
        self.spec = spec
        self.sample_rate = self._bank.sample_rate
        self._min_block = max(1, round(0.005 * self.sample_rate))
        self._pending: list[np.ndarray] = []
        self._pending_n = 0

    def reset(self) -> None:
        """Forget everything except the sample clock."""
        self._bank.restart()

    @property
    def busy(self) -> bool:
        """True while a carrier is present: the caller must keep feeding real samples."""
        return bool(self._bank.busy[0])

    @property
    def samples_seen(self) -> int:
        return self._bank.samples_seen

    def skip(self, count: int) -> None:
        """Advance the clock over ``count`` samples treated as silence (filters and framing restart)."""
        if count < 0:
            raise ValueError(f"cannot skip a negative number of samples ({count})")
        # Samples still gathered for a block are part of the silence too.
        self._bank.restart(int(count) + self._pending_n)
        self._pending.clear()
        self._pending_n = 0

    def feed(self, samples: np.ndarray) -> list[Item]:
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return []
        if self._pending or x.size < self._min_block:
            self._pending.append(x.copy())
            self._pending_n += x.size
            if self._pending_n < self._min_block:
                return []
            x = np.concatenate(self._pending)
            self._pending.clear()
            self._pending_n = 0
        return [item for _, item in self._bank.feed(x[None, :])]

    def flush(self) -> list[Item]:
        """Process samples held back by ``feed`` (tiny frames are gathered into 5 ms blocks)."""
        if not self._pending:
            return []
        x = np.concatenate(self._pending)
        self._pending.clear()
        self._pending_n = 0
        return [item for _, item in self._bank.feed(x[None, :])]


class FskGate:
    """Which of ``channels`` lines may be starting an FSK caller-ID burst: one matrix product per 10 ms.

    Every caller-ID transmission opens with a steady pattern before its first byte: the channel seizure
    (alternating bits, GR-30-CORE and EN 300 659-1: 300 bits) and/or the mark run (180 bits, 80 for
    call-waiting caller ID; NTT: a mark run only). Alternating bits at 1200 bit/s are a carrier at the
    centre of the two tones (1700 Hz for Bell 202 and V.23 alike) phase-modulated by a 600 Hz
    triangle: spectral lines at 1700 +/- 600 k Hz. The mark run is one tone at 1200 or 1300 Hz.
    Per 10 ms block (Hann window, 100 Hz bins) a line passes when it is above ``min_level_dbm0`` - 3 dB
    and either the bins 1000-1200, 1600-1800, 2200-2400 Hz (seizure) or the bins 1100-1400 Hz (mark)
    hold at least ``fraction`` of its energy. Speech rarely does (harmonics below 600 Hz carry most of
    its energy); DTMF never does (its low-group tone, 697-941 Hz, carries about half).

    ``update(x)`` returns ``(start, quiet)``: lines that passed ``open_blocks`` blocks in a row during this
    frame, and lines that have not passed for ``hold_ms``. ``preroll(lines)`` gives the last
    ``preroll_ms`` of samples before the current frame (call it before ``remember(x)``).
    """

    _SEIZURE_HZ = (1000, 1100, 1200, 1600, 1700, 1800, 2200, 2300, 2400)
    _MARK_HZ = (1100, 1200, 1300, 1400)

    def __init__(
        self,
        channels: int,
        sample_rate: int = 8000,
        *,
        min_level_dbm0: float = -43.0,
        fraction: float = 0.7,
        open_blocks: int = 2,
        hold_ms: float = 50.0,
        preroll_ms: float = 100.0,
    ) -> None:
        if channels < 1:
            raise ValueError(f"an FSK gate needs at least one channel, got {channels}")
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"gate fraction must be between 0 and 1, got {fraction}")
        self.channels = channels
        self.sample_rate = fs = int(sample_rate)
        block = round(0.010 * fs)
        self._stream = BlockStream(channels, block)
        freqs = sorted(set(self._SEIZURE_HZ) | set(self._MARK_HZ))
        self._basis = sinusoid_basis(freqs, block, sample_rate=fs, window=hann(block))
        self._seizure = np.isin(freqs, self._SEIZURE_HZ).astype(np.float32)
        self._mark = np.isin(freqs, self._MARK_HZ).astype(np.float32)
        w = hann(block)
        # Columns: windowed energy scaled so that one-sided bin powers of a block sum to it (Parseval),
        # and the mean square for the level test.
        self._energy = np.stack((w * w * (block / 2.0), np.full(block, 1.0 / block)), axis=1).astype(
            np.float32
        )
        self._fraction = np.float32(fraction)
        self._min_power = dbm0_to_power(min_level_dbm0 - 3.0)
        self._open_blocks = int(open_blocks)
        self._hold_blocks = max(1, round(hold_ms / 10.0))
        self._run = np.zeros(channels, dtype=np.int32)  # consecutive passing blocks
        self._since = np.full(channels, self._hold_blocks, dtype=np.int32)  # blocks since the last pass
        self._preroll = max(0, round(preroll_ms * fs / 1000.0))
        self._history: np.ndarray | None = None  # (channels, preroll) ring of the newest samples
        self._written = 0  # samples written into the ring so far
        self.blocks = 0  # blocks tested per line
        self.passed = 0  # line-blocks that passed

    def update(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blocks, _ = self._stream.push(x)
        c, m, n = blocks.shape
        start = np.zeros(c, dtype=bool)
        if m:
            flat = blocks.reshape(c * m, n)
            coeffs = flat @ self._basis
            k = self._basis.shape[1] // 2
            power = coeffs[:, :k] ** 2 + coeffs[:, k:] ** 2
            energy = (flat * flat) @ self._energy
            need = self._fraction * energy[:, 0]
            passed = (energy[:, 1] >= self._min_power) & (
                (power @ self._seizure >= need) | (power @ self._mark >= need)
            )
            passed = passed.reshape(c, m)
            self.blocks += m
            count = int(np.count_nonzero(passed))
            self.passed += count
            if count == 0 and self._open_blocks > 0:
                # No line passed: every run ends, every "since" counts on up to the hold, none starts.
                self._run = np.zeros(c, dtype=self._run.dtype)
                self._since = np.minimum(self._since + m, self._hold_blocks)
                return start, self._since >= self._hold_blocks
            for j in range(m):
                hit = passed[:, j]
                self._run = np.where(hit, self._run + 1, 0)
                self._since = np.where(hit, 0, np.minimum(self._since + 1, self._hold_blocks))
                start |= self._run >= self._open_blocks
        return start, self._since >= self._hold_blocks

    @property
    def passing(self) -> np.ndarray:
        """Per line: the latest block passed (a run that may open receivers is under way)."""
        return self._run > 0

    def reset_rows(self, rows: np.ndarray | list[int]) -> None:
        """``rows`` start again as on a gate constructed now: no passing run, quiet for the hold time, the
        samples held back for the next block and the pre-roll history zeroed (silence before now)."""
        rows = channel_rows(rows, self.channels)
        self._stream.reset_rows(rows)
        self._run[rows] = 0
        self._since[rows] = self._hold_blocks
        if self._history is not None:
            self._history[rows] = 0.0

    def preroll(self, lines: np.ndarray) -> np.ndarray:
        """The newest ``preroll_ms`` (or fewer, early on) of samples of ``lines`` before the current frame."""
        have = min(self._written, self._preroll)
        if self._history is None or have == 0:
            return np.zeros((np.size(lines), 0))
        idx = np.arange(self._written - have, self._written) % self._preroll
        return self._history[np.asarray(lines)[:, None], idx[None, :]]

    def remember(self, x: np.ndarray) -> None:
        """Keep the newest samples of every line for the pre-roll."""
        if self._preroll == 0:
            return
        if self._history is None:
            self._history = np.zeros((self.channels, self._preroll), dtype=x.dtype)
        n = x.shape[1]
        if n >= self._preroll:
            idx = np.arange(self._written + n - self._preroll, self._written + n) % self._preroll
            self._history[:, idx] = x[:, -self._preroll :]
        else:
            first = self._written % self._preroll
            split = min(n, self._preroll - first)
            self._history[:, first : first + split] = x[:, :split]
            self._history[:, : n - split] = x[:, split:]
        self._written += n
