"""Streaming 1200 bit/s FSK receiver for caller-ID data (Bell 202 and V.23), with the async byte framing.

One ``FskReceiver`` per modem standard and line. ``feed(samples)`` takes any number of float samples
(full scale 1.0) and returns the ``UartByte`` and ``CarrierLost`` items completed so far; nothing inside
reads a clock or does I/O. Byte and message meaning live in ``callerid.py``.

Signal path, vectorised over each fed block (loops only per received BIT/BYTE, never per sample):

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

Silent channels cost one dot product per block: with the carrier off and block power below
``silence_dbm0`` the block is skipped (the filters restart from silence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "BELL202",
    "V23",
    "CarrierLost",
    "FskReceiver",
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


_OFFSET_SPAN_HZ = 150
_OFFSET_STEP_HZ = 5


@lru_cache(maxsize=64)
def _reference(freq_hz: int, sample_rate: int) -> np.ndarray:
    """One period of exp(-j*2*pi*f*n/fs), indexed by ``n % len``; shared by every receiver."""
    period = sample_rate // math.gcd(int(freq_hz), sample_rate)
    n = np.arange(period)
    ref = np.exp(-2j * np.pi * freq_hz * n / sample_rate)
    ref.setflags(write=False)
    return ref


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


def _moving_sum(history: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sums of each window of len(history)+1 values ending at every element of ``values``."""
    joined = np.concatenate((history, values))
    c = np.cumsum(joined)
    width = history.size + 1
    out = c[width - 1 :].copy()
    out[1:] -= c[: values.size - 1]
    return out


class FskReceiver:
    """Demodulator + async framer for one FSK standard on one line. See the module docstring."""

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
        self.sample_rate = int(sample_rate)
        fs = self.sample_rate
        self._spb = fs / spec.baud  # samples per bit (6.667 at 8 kHz)
        taps = 2 * round(0.003 * fs) + 1  # 49 taps at 8 kHz: 6 ms span, ~3 ms delay
        # Pass band: both tones plus half the bit rate of modulation sidebands each side.
        self._h = _bandpass(spec.mark_hz - spec.baud / 2, spec.space_hz + spec.baud / 2, taps, fs)
        self._h_rev = self._h[::-1].copy()
        self._ref_mark = _reference(spec.mark_hz, fs)
        self._ref_space = _reference(spec.space_hz, fs)
        self._bit_len = max(2, round(self._spb))  # integration window: one bit
        self._nudge = np.linspace(-1.5, 1.5, 7) * fs / 8000.0
        self._win = max(8, round(carrier_window_ms * fs / 1000.0))
        # Index shifts from "newest input sample in the window" to the time the value describes.
        self._delay = (taps - 1) / 2.0 + (self._bit_len - 1) / 2.0
        self._on_power = dbm0_to_power(min_level_dbm0)
        self._off_power = dbm0_to_power(min_level_dbm0 - 3.0)
        self._ratio_on = band_ratio_on
        self._ratio_off = band_ratio_off
        self._silence_power = dbm0_to_power(silence_dbm0)
        grid = spec.mark_hz + np.arange(-_OFFSET_SPAN_HZ, _OFFSET_SPAN_HZ + 1, _OFFSET_STEP_HZ)
        self._grid_w = -2j * np.pi * grid / fs  # for the mark frequency estimate
        self._next_index = 0  # absolute index of the next input sample
        self._min_block = max(1, round(0.005 * fs))
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget everything except the sample clock."""
        fs_taps = self._h.size
        self._x_hist = np.zeros(fs_taps - 1)
        self._m_hist = np.zeros(self._bit_len - 1, dtype=complex)
        self._s_hist = np.zeros(self._bit_len - 1, dtype=complex)
        self._pb_hist = np.zeros(self._win - 1)
        self._pt_hist = np.zeros(self._win - 1)
        self._carrier = False
        self._clear_buffer()

    def _clear_buffer(self) -> None:
        self._buf_start = self._next_index
        self._soft = np.zeros(0)
        self._carr = np.zeros(0, dtype=bool)
        self._y = np.zeros(0)  # band-passed input, for the mark frequency estimate
        self._pos = float(self._next_index)  # UART search position (absolute, buffer coordinates)
        self._last_end = -math.inf  # end of the previous character's stop bit
        self._carrier_on_at = -math.inf
        self._transitions: list[tuple[int, bool]] = []  # (index of first sample in new state, state)

    @property
    def busy(self) -> bool:
        """True while a carrier is present: the caller must keep feeding real samples."""
        return self._carrier

    @property
    def samples_seen(self) -> int:
        return self._next_index

    def skip(self, count: int) -> None:
        """Advance the clock over ``count`` samples treated as silence (filters and framing restart)."""
        if count < 0:
            raise ValueError(f"cannot skip a negative number of samples ({count})")
        # Samples still gathered for a block are part of the silence too.
        self._next_index += int(count) + self._pending_n
        self._pending.clear()
        self._pending_n = 0
        self._x_hist[:] = 0.0
        self._m_hist[:] = 0.0
        self._s_hist[:] = 0.0
        self._pb_hist[:] = 0.0
        self._pt_hist[:] = 0.0
        self._carrier = False
        self._clear_buffer()

    # ------------------------------------------------------------------ feed
    def feed(self, samples: np.ndarray) -> list[UartByte | CarrierLost]:
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return []
        if self._pending or x.size < self._min_block:
            # Tiny frames are gathered into blocks of >= 5 ms: the per-call cost stays bounded and the
            # silence test sees enough samples. Results do not depend on the frame size.
            self._pending.append(x.copy())
            self._pending_n += x.size
            if self._pending_n < self._min_block:
                return []
            x = np.concatenate(self._pending)
            self._pending.clear()
            self._pending_n = 0
        return self._process(x)

    def flush(self) -> list[UartByte | CarrierLost]:
        """Process samples held back by ``feed`` (tiny frames are gathered into 5 ms blocks)."""
        if not self._pending:
            return []
        x = np.concatenate(self._pending)
        self._pending.clear()
        self._pending_n = 0
        return self._process(x)

    def _process(self, x: np.ndarray) -> list[UartByte | CarrierLost]:
        n = x.size
        if not self._carrier and float(np.dot(x, x)) < self._silence_power * n:
            self.skip(n)  # fast path: no carrier and nothing loud enough to start one
            return []
        start = self._next_index
        self._next_index += n

        y = np.convolve(np.concatenate((self._x_hist, x)), self._h_rev, mode="valid")
        self._x_hist = np.concatenate((self._x_hist, x))[-self._x_hist.size :]
        idx = start + np.arange(n)
        ym = y * self._ref_mark[idx % self._ref_mark.size]
        ys = y * self._ref_space[idx % self._ref_space.size]
        cm = _moving_sum(self._m_hist, ym)
        cs = _moving_sum(self._s_hist, ys)
        self._m_hist = np.concatenate((self._m_hist, ym))[-self._m_hist.size :]
        self._s_hist = np.concatenate((self._s_hist, ys))[-self._s_hist.size :]
        em = cm.real**2 + cm.imag**2
        es = cs.real**2 + cs.imag**2
        soft = (em - es) / (em + es + 1e-20)

        y2 = y * y
        x2 = x * x
        pb = _moving_sum(self._pb_hist, y2) / self._win
        pt = _moving_sum(self._pt_hist, x2) / self._win
        self._pb_hist = np.concatenate((self._pb_hist, y2))[-self._pb_hist.size :]
        self._pt_hist = np.concatenate((self._pt_hist, x2))[-self._pt_hist.size :]
        carr = self._carrier_track(pb, pt, start)

        self._soft = np.concatenate((self._soft, soft))
        self._carr = np.concatenate((self._carr, carr))
        self._y = np.concatenate((self._y, y))
        out = self._run_uart()
        self._trim()
        return out

    def _carrier_track(self, pb: np.ndarray, pt: np.ndarray, start: int) -> np.ndarray:
        """Carrier on/off per sample with hysteresis, vectorised by forward-filling the decisions."""
        on = (pb >= self._on_power) & (pb >= self._ratio_on * pt)
        off = (pb < self._off_power) | (pb < self._ratio_off * pt)
        decided = on | off
        last = np.where(decided, np.arange(pb.size), -1)
        np.maximum.accumulate(last, out=last)
        state = np.where(last >= 0, on[np.maximum(last, 0)], self._carrier)
        prev = np.concatenate(([self._carrier], state[:-1]))
        for i in np.flatnonzero(state != prev):
            self._transitions.append((start + int(i), bool(state[i])))
        self._carrier = bool(state[-1])
        return state

    # ------------------------------------------------------------------ UART
    def _flush_transitions(self, upto: float, out: list[UartByte | CarrierLost]) -> None:
        while self._transitions and self._transitions[0][0] <= upto:
            index, state = self._transitions.pop(0)
            if state:
                self._carrier_on_at = float(index)
            else:
                out.append(CarrierLost(sample=index - self._delay))

    def _sample_soft(self, where: np.ndarray) -> np.ndarray:
        rel = where - self._buf_start
        i = np.floor(rel).astype(np.intp)
        frac = rel - i
        return self._soft[i] * (1.0 - frac) + self._soft[i + 1] * frac

    def _run_uart(self) -> list[UartByte | CarrierLost]:
        out: list[UartByte | CarrierLost] = []
        soft, carr, base = self._soft, self._carr, self._buf_start
        end = base + soft.size
        neg = soft < 0.0
        # Falling edges (first space sample after a mark sample) while the carrier is on.
        edges = np.flatnonzero(~neg[:-1] & neg[1:] & carr[1:]) + 1 + base
        spb = self._spb
        k = int(np.searchsorted(edges, self._pos, side="left"))
        while k < edges.size:
            e = int(edges[k])
            s0, s1 = soft[e - 1 - base], soft[e - base]
            t_edge = (e - 1) + s0 / (s0 - s1)  # interpolated zero crossing = start of the start bit
            if t_edge + 9.5 * spb + 3.0 >= end:
                break  # the rest of this character has not arrived yet
            self._flush_transitions(t_edge, out)
            # The zero crossing jitters in noise: take the timing, within +/-1.5 samples of it, at which
            # the 10 bit centres look most decided (a one-shot early/late gate per character).
            grid = (t_edge + self._nudge)[:, None] + (np.arange(10) + 0.5) * spb
            trial = self._sample_soft(grid)
            best = int(np.argmax(np.abs(trial).sum(axis=1)))
            t_edge = float(grid[best, 0] - 0.5 * spb)
            centres = grid[best]
            bits = trial[best]
            if bits[0] >= 0.0:  # glitch, not a start bit: look for the next edge
                self._pos = e + 1.0
                k += 1
                continue
            stop_at = int(round(centres[9])) - base
            self._pos = float(centres[9])
            k = int(np.searchsorted(edges, self._pos, side="left"))
            if not carr[stop_at]:
                continue  # carrier lost inside the character: the CarrierLost item follows
            value = int(np.dot(bits[1:9] > 0.0, 1 << np.arange(8)))
            idle_from = max(self._last_end, self._carrier_on_at)
            idle_bits = (t_edge - idle_from) / spb if math.isfinite(idle_from) else 0.0
            offset = self._mark_offset(idle_from, t_edge) if idle_bits >= 8.0 else None
            self._last_end = t_edge + 10.0 * spb
            out.append(
                UartByte(
                    value=value,
                    end_sample=self._last_end - self._delay,
                    idle_bits=idle_bits,
                    framing_ok=bool(bits[9] > 0.0),
                    mark_offset_hz=offset,
                )
            )
        if k >= edges.size:
            # No character in progress: every carrier change before the last sample is settled.
            self._flush_transitions(end - 2, out)
            self._pos = max(self._pos, float(end - 1))
        return out

    def _mark_offset(self, idle_from: float, t_edge: float) -> float | None:
        """Frequency of the steady mark tone before a character minus the nominal mark frequency.

        The peak of the segment's spectrum on a 5 Hz grid within +/-150 Hz of nominal (white noise lifts
        every bin alike, so the peak stays unbiased at low SNR), refined by a parabola through the peak
        and its neighbours. At most the last 100 ms of the run are used; one bit is skipped at each end.
        """
        a = max(int(math.ceil(idle_from + self._spb)), self._buf_start)
        b = int(t_edge - self._spb)
        a = max(a, b - self.sample_rate // 10)
        if b - a < 2 * self._bit_len:
            return None
        seg = self._y[a - self._buf_start : b - self._buf_start]
        n = np.arange(seg.size)
        power = np.abs(np.exp(np.outer(self._grid_w, n)) @ seg) ** 2
        k = int(np.argmax(power))
        step = _OFFSET_STEP_HZ
        offset = -_OFFSET_SPAN_HZ + k * step
        if 0 < k < power.size - 1:
            den = power[k - 1] - 2.0 * power[k] + power[k + 1]
            if den < 0.0:
                offset += 0.5 * step * (power[k - 1] - power[k + 1]) / den
        return float(offset)

    def _trim(self) -> None:
        """Keep what the UART still needs: from its position, and the idle run for the offset."""
        end = self._buf_start + self._soft.size
        keep_from = int(math.floor(self._pos)) - 2
        if self._carrier:
            idle_from = max(self._last_end, self._carrier_on_at)
            if math.isfinite(idle_from):
                keep_from = min(keep_from, int(idle_from) - 1)
        keep_from = max(keep_from, end - 4096, self._buf_start)
        drop = keep_from - self._buf_start
        if drop > 0:
            self._soft = self._soft[drop:]
            self._carr = self._carr[drop:]
            self._y = self._y[drop:]
            self._buf_start = keep_from
            self._pos = max(self._pos, keep_from + 1.0)
