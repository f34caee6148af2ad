"""DTMF receiver (ITU-T Q.23 frequencies, Q.24 receiver limits), streaming and vectorised across channels.

Per 102-sample block (12.75 ms at 8 kHz, the block of spandsp ``dtmf.c`` / Asterisk ``DTMF_GSIZE``) one
matrix product gives, for every channel and block at once:

* rectangular-window bins at the 8 DTMF frequencies and their 8 second harmonics,
* Blackman and Blackman-derivative bins at the 8 frequencies (frequency reassignment: the sub-bin
  frequency estimate that makes the ±1.5 % accept / ±3.5 % reject window of Q.24 possible in one block),
* bins at the site's dial/progress tone frequencies (excluded from the relative-energy guard).

A block is a *hit* for digit (row, column) when (Q.24 and the "basic DTMF specs" in spandsp ``dtmf.h``):
both tones ≥ the minimum level, twist within the site profile, every other row/column ≥ 8 dB below,
the two-tone least-squares fit holds ≥ 82 % of the block energy (talk-off guard), both frequencies
within the tolerance, and the second harmonics of both tones are weak (speech/music guard, as
libteletone). The two-tone fit is a least-squares projection, so a column tone leaking into the
2nd-harmonic bin of the row (1336 Hz next to 2×697 Hz) is not mistaken for a harmonic.

Timing (ETSI ES 201 235-3 as quoted in Asterisk ``dsp.c``): a digit starts after 2 successive hits; a
tone of < 20 ms cannot fill 2 blocks to 82 %, one of ≥ 40 ms always does. It ends once the estimated
pause reaches ``min_pause_ms`` (a block partly covered by the tone tells where in it the tone stopped),
so the event leaves 10–25 ms after the tone ends. Onset and duration are refined to sub-block precision
from how much of the first/last partial block the tone filled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from drivers.dsp.events import DtmfDigit
from drivers.dsp.goertzel import (
    SAMPLE_RATE,
    BlockStream,
    bin_power,
    blackman,
    blackman_derivative,
    channel_rows,
    dbm0_to_power,
    reassigned_frequency,
    sinusoid_basis,
)

ROW_FREQS = (697.0, 770.0, 852.0, 941.0)  # ITU-T Q.23 low group
COLUMN_FREQS = (1209.0, 1336.0, 1477.0, 1633.0)  # ITU-T Q.23 high group
KEYPAD = ("123A", "456B", "789C", "*0#D")
DIGITS = "".join(KEYPAD)  # digit index = row * 4 + column
BLOCK = 102  # samples per Goertzel block at 8 kHz (12.75 ms)

# Twist (normal = high group louder, reverse = low group louder), dB. Asterisk dsp.conf.sample
# administrations; no source gives a China row, so "cn" starts as AT&T and is a site setting.
TWIST_PROFILES: dict[str, tuple[float, float]] = {
    "att": (8.0, 4.0),
    "ntt": (5.0, 5.0),
    "etsi": (6.0, 6.0),
    "cn": (8.0, 4.0),
}

# Dial-tone frequencies of each tone plan (telephony.md §6), kept out of the relative-energy guard so
# digits survive a dial tone 10 dB louder than themselves (spandsp dtmf_rx_tests "dial tone" case).
DIALTONE_FREQS: dict[str, tuple[float, ...]] = {
    "jp": (400.0,),
    "cn": (450.0,),
    "us": (350.0, 440.0),
    "etsi": (425.0,),
}


@dataclass(frozen=True)
class DtmfParams:
    """Receiver limits; every one is a site setting (telephony.md §1)."""

    normal_twist_db: float = 8.0
    reverse_twist_db: float = 4.0
    min_level_dbm0: float = -44.0  # per tone; Q.24 "about −42 dBm0" must still operate
    relative_peak_db: float = 8.0  # every other row/column this far below the peak (spandsp)
    relative_energy: float = 10 ** (-0.85 / 10)  # row+column share of the block energy (spandsp, ≈ 82 %)
    frequency_tolerance: float = 0.025  # midway between Q.24's ±1.5 % operate and ±3.5 % non-operate
    harmonic_db: float = -10.0  # 2nd harmonics must be this far below the fundamentals
    hits_to_begin: int = 2
    min_pause_ms: float = 10.0
    reject_tones: tuple[float, ...] = ()

    @classmethod
    def for_site(cls, twist: str = "att", *, tones: str | None = None, **overrides) -> DtmfParams:
        """Parameters for a twist profile (``att|ntt|etsi|cn``) and the site's tone plan."""
        try:
            normal, reverse = TWIST_PROFILES[twist]
        except KeyError:
            raise ValueError(
                f"unknown twist profile {twist!r}; expected one of {sorted(TWIST_PROFILES)}"
            ) from None
        reject = DIALTONE_FREQS.get(tones, ()) if tones else ()
        return replace(
            cls(normal_twist_db=normal, reverse_twist_db=reverse, reject_tones=reject), **overrides
        )


def _digit_gram_inverses(basis: np.ndarray, ls_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per digit: inverse Gram matrices of its (row, column, 2·row, 2·column) columns and of (row, column)."""
    full = np.zeros((16, 8, 8), dtype=np.float32)
    fund = np.zeros((16, 4, 4), dtype=np.float32)
    for d in range(16):
        cols = basis[:, ls_index[d]].astype(np.float64)
        full[d] = np.linalg.inv(cols.T @ cols)
        fund[d] = np.linalg.inv(cols[:, :4].T @ cols[:, :4])
    return full, fund


def _dirichlet_power_gain(offset_hz: np.ndarray, n: int) -> np.ndarray:
    """Power response of an n-sample rectangular bin to a tone ``offset_hz`` away from it."""
    x = np.pi * offset_hz / SAMPLE_RATE
    num = np.sin(n * x)
    den = n * np.sin(x)
    tiny = np.abs(den) < 1e-9
    gain = np.where(tiny, 1.0, num / np.where(tiny, 1.0, den))
    return np.maximum(gain * gain, 0.05)


_PAIR = np.array([0, 1])  # last axis of the row/column pairs: 0 = row group, 1 = column group
# Columns of the Blackman (cos, sin) and Blackman-derivative (cos, sin) bins of row 0 and column 0.
_REASSIGN_COLUMNS = np.array([[32, 40, 48, 56], [36, 44, 52, 60]])


class DtmfBank:
    """DTMF receivers for C channels fed in lockstep: ``feed((C, n)) -> [(channel, DtmfDigit)]``."""

    def __init__(self, channels: int, params: DtmfParams | None = None, *, sample_rate: int = SAMPLE_RATE):
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"the DTMF receiver runs at {SAMPLE_RATE} Hz, got {sample_rate}: resample first")
        self.params = params or DtmfParams()
        self.channels = channels
        self._stream = BlockStream(channels, BLOCK)
        p = self.params
        n = BLOCK
        fund = np.array(ROW_FREQS + COLUMN_FREQS)
        self._fund = fund
        self._fund_pairs = fund.reshape(2, 4)
        self._grid_cache: dict[tuple[int, ...], tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]] = {}
        harm = 2.0 * fund
        parts = [
            sinusoid_basis(np.concatenate([fund, harm]), n),  # 0..15 cos, 16..31 sin
            sinusoid_basis(fund, n, window=blackman(n)),  # 32..39 cos, 40..47 sin
            sinusoid_basis(fund, n, window=blackman_derivative(n)),  # 48..55 cos, 56..63 sin
            np.ones((n, 1), dtype=np.float32),  # 64: block sum, for DC removal
        ]
        rows = np.arange(16) // 4
        cols = 4 + np.arange(16) % 4
        # Per digit: where its 8 least-squares coefficients sit among the rectangular bins.
        self._ls_index = np.stack(
            [rows, 16 + rows, cols, 16 + cols, 8 + rows, 24 + rows, 8 + cols, 24 + cols], axis=1
        )
        basis = np.concatenate(parts, axis=1).astype(np.float64)
        self._reject_count = len(p.reject_tones)
        if p.reject_tones:
            # Analyse the block with the site's dial tone projected out: (I − P)·basis, with P the
            # least-squares projector onto the dial-tone sinusoids. Same cost per block, and a dial tone
            # 10 dB above the digits no longer leaks into the row bins.
            reject = sinusoid_basis(p.reject_tones, n).astype(np.float64)
            ginv = np.linalg.inv(reject.T @ reject)
            basis = basis - reject @ (ginv @ (reject.T @ basis))
            basis = np.concatenate([basis, reject], axis=1)  # 65..: raw dial-tone bins for the energy
            self._reject_ginv = ginv.astype(np.float32)
        self._basis = np.ascontiguousarray(basis.astype(np.float32))
        self._ginv_full, self._ginv_fund = _digit_gram_inverses(basis, self._ls_index)
        self._min_power = dbm0_to_power(p.min_level_dbm0)
        self._normal = 10 ** (p.normal_twist_db / 10)
        self._reverse = 10 ** (p.reverse_twist_db / 10)
        self._rel_peak = 10 ** (p.relative_peak_db / 10)
        self._harm = 10 ** (p.harmonic_db / 10)
        self._min_pause = p.min_pause_ms * SAMPLE_RATE / 1000.0
        # Per-channel state of the digit state machine.
        c = channels
        self._active = np.full(c, -1)
        self._onset = np.zeros(c)
        self._end = np.zeros(c)
        self._pause = np.zeros(c)
        self._ref_sum = np.zeros(c)
        self._ref_count = np.zeros(c)
        self._cand = np.full(c, -1)
        self._cand_count = np.zeros(c, dtype=int)
        self._cand_onset = np.zeros(c)
        self._cand_sum = np.zeros(c)
        self._prev_digit = np.full(c, -1)
        self._prev_power = np.zeros(c)

    # -- analysis -----------------------------------------------------------------------------------
    def analyse(self, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """Per-block features of ``blocks (..., 102)``: candidate digit, hit flag, two-tone power, ...

        Public so tests and tools can look at why a block was (not) taken.
        """
        return self._features(np.asarray(blocks), full=True)

    def _grids(self, lead: tuple[int, ...]) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Open index grids over the leading axes of a feature array, with one and with two trailing unit
        axes: ``x[(*grid, cols)]`` picks, per block, the columns ``cols (..., k)`` (``take_along_axis``
        without its per-call set-up)."""
        grids = self._grid_cache.get(lead)
        if grids is None:
            nd = len(lead)
            one, two = [], []
            for axis, size in enumerate(lead):
                shape = [1] * nd
                shape[axis] = size
                idx = np.arange(size).reshape(shape)
                one.append(idx[..., None])
                two.append(idx[..., None, None])
            grids = self._grid_cache[lead] = (tuple(one), tuple(two))
        return grids

    def _features(self, blocks: np.ndarray, *, full: bool) -> dict[str, np.ndarray]:
        """The features of :meth:`analyse`; with ``full=False`` only ``digit``, ``hit`` and ``power`` (what
        the digit state machine needs). Row and column quantities are computed as pairs on a last axis of
        2 (0 = row, 1 = column), element for element the same arithmetic as one at a time."""
        n = BLOCK
        x = blocks @ self._basis  # the one matrix product
        lead = x.shape[:-1]
        grid1, grid2 = self._grids(lead)
        powers = bin_power(x[..., 0:8], x[..., 16:24], n)
        pairs = powers.reshape(lead + (2, 4))  # [..., 0, :] rows, [..., 1, :] columns
        best = np.argmax(pairs, axis=-1)  # (..., 2): row, column
        row = best[..., 0]
        col = best[..., 1]
        digit = row * 4 + col
        rect_best = pairs.max(axis=-1)  # the power at the argmax
        others = np.sort(pairs, axis=-1)[..., -2]

        # Least-squares two-tone fit (and with harmonics) at the candidate digit's frequencies.
        b = x[(*grid1, self._ls_index[digit])]
        g_full = self._ginv_full[digit]
        g_fund = self._ginv_fund[digit]
        b4 = b[..., :4]
        amp = np.einsum("...ij,...j->...i", g_fund, b4)
        e_fund = np.einsum("...i,...i->...", amp, b4)
        e_all = np.einsum("...i,...ij,...j->...", b, g_full, b)
        sq = amp * amp
        tone = 0.5 * (sq[..., 0::2] + sq[..., 1::2])  # (..., 2): row, column
        fund_power = e_fund / n
        harm_power = np.maximum(e_all - e_fund, 0.0) / n

        # Frequency reassignment at the candidate row and column.
        f = self._fund_pairs[_PAIR, best]
        g = x[(*grid2, best[..., None] + _REASSIGN_COLUMNS)]
        est = reassigned_frequency(g[..., 0], g[..., 1], g[..., 2], g[..., 3], f)
        offset = est - f
        # Undo the rectangular bin's scalloping for an off-frequency tone before level/twist checks.
        tone = tone / _dirichlet_power_gain(offset, n)
        tone_row = tone[..., 0]
        tone_col = tone[..., 1]

        mean = x[..., 64] / n
        energy = np.einsum("...i,...i->...", blocks, blocks) / n - mean * mean
        if self._reject_count:
            rb = x[..., 65 : 65 + 2 * self._reject_count]
            energy = energy - np.einsum("...i,ij,...j->...", rb, self._reject_ginv, rb) / n
        energy = np.maximum(energy, 1e-20)

        p = self.params
        pair_ok = (tone >= self._min_power) & (np.abs(offset) <= p.frequency_tolerance * f)
        if not full:
            hit = (
                pair_ok[..., 0]
                & pair_ok[..., 1]
                & (tone_col <= tone_row * self._normal)
                & (tone_row <= tone_col * self._reverse)
                & np.all(others * self._rel_peak <= rect_best, axis=-1)
                & ((tone_row + tone_col) >= p.relative_energy * energy)
                & (harm_power <= self._harm * fund_power)
            )
            return {"digit": digit, "hit": hit, "power": fund_power}
        level = (tone >= self._min_power)
        freq_ok = np.abs(offset) <= p.frequency_tolerance * f
        peak_ok = others * self._rel_peak <= rect_best
        checks = {
            "level": level[..., 0] & level[..., 1],
            "twist": (tone_col <= tone_row * self._normal) & (tone_row <= tone_col * self._reverse),
            "relative_peak": peak_ok[..., 0] & peak_ok[..., 1],
            "relative_energy": (tone_row + tone_col) >= p.relative_energy * energy,
            "frequency": freq_ok[..., 0] & freq_ok[..., 1],
            "harmonic": harm_power <= self._harm * fund_power,
        }
        hit = np.logical_and.reduce(list(checks.values()))
        return {
            "digit": digit,
            "hit": hit,
            "power": fund_power,
            "tone_row": tone_row,
            "tone_col": tone_col,
            "est_row": est[..., 0],
            "est_col": est[..., 1],
            "energy": energy,
            **checks,
        }

    # -- streaming ----------------------------------------------------------------------------------
    def feed(self, samples: np.ndarray) -> list[tuple[int, DtmfDigit]]:
        """Feed ``(C, n)`` samples (float, full scale 1.0); returns the digits that ended in them."""
        blocks, first = self._stream.push(samples)
        if blocks.shape[1] == 0:
            return []
        feats = self._features(blocks, full=False)
        digit, hit, power = feats["digit"], feats["hit"], feats["power"]
        if not hit.any() and self._active.max() < 0:
            # No digit sounding and no hit in any block: every step would only drop the candidates and
            # remember the block (what _step does for idle channels without a hit).
            self._cand.fill(-1)
            self._cand_count.fill(0)
            self._prev_digit = digit[:, -1]
            self._prev_power = power[:, -1]
            return []
        out: list[tuple[int, DtmfDigit]] = []
        for m in range(blocks.shape[1]):
            start = first + m * BLOCK
            out.extend(self._step(start, digit[:, m], hit[:, m], power[:, m]))
        return out

    def flush(self) -> list[tuple[int, DtmfDigit]]:
        """End of stream: report digits still sounding (their duration runs to the last full block)."""
        chans = np.nonzero(self._active >= 0)[0]
        out = [(int(ch), self._event(int(ch))) for ch in chans]
        self._active[chans] = -1
        self._cand[:] = -1
        self._cand_count[:] = 0
        return out

    # -- re-use of a channel for another line -------------------------------------------------------
    def quiet_channels(self) -> np.ndarray:
        """Per channel (bool): nothing in progress that :meth:`reset_channels` would lose.

        A channel is busy while a digit is sounding or ending (``_active``: from the block that confirms it
        until the pause after it is long enough and the digit is reported) and while a candidate is counting
        hits (``_cand``: one hit block so far, which the next block may turn into a digit).
        """
        return (self._active < 0) & (self._cand < 0)

    def reset_channels(self, channels: np.ndarray | list[int]) -> None:
        """Give ``channels`` to new lines: each is as a freshly constructed bank's channel started at the
        current clock (``t`` of its digits keeps counting on the bank's clock).

        The digit state machine restarts (no digit, no candidate, no previous block; onset and end times at
        the current sample) and the samples held back for the next 102-sample block are zeroed: a block
        that straddles the reset sees silence before it. Other channels are untouched. A digit sounding on
        a reset channel is dropped unreported (see :meth:`quiet_channels`).
        """
        rows = channel_rows(channels, self.channels)
        now = float(self._stream.position)
        self._active[rows] = -1
        self._onset[rows] = now
        self._end[rows] = now
        self._pause[rows] = 0.0
        self._ref_sum[rows] = 0.0
        self._ref_count[rows] = 0.0
        self._cand[rows] = -1
        self._cand_count[rows] = 0
        self._cand_onset[rows] = now
        self._cand_sum[rows] = 0.0
        self._prev_digit[rows] = -1
        self._prev_power[rows] = 0.0
        self._stream.reset_rows(rows)

    def _event(self, ch: int) -> DtmfDigit:
        onset = self._onset[ch]
        return DtmfDigit(
            t=round(onset / SAMPLE_RATE, 4),
            digit=DIGITS[self._active[ch]],
            duration_ms=int(round((self._end[ch] - onset) * 1000.0 / SAMPLE_RATE)),
        )

    def _step(self, start: int, digit: np.ndarray, hit: np.ndarray, power: np.ndarray):
        n = BLOCK
        events: list[tuple[int, DtmfDigit]] = []
        active = self._active
        # --- channels with a digit sounding: does this block carry it on, or add to the pause? ---
        on = active >= 0
        if on.any():
            same = on & (digit == active)
            ref = self._ref_sum / np.maximum(self._ref_count, 1)
            alpha = np.where(same, np.sqrt(np.clip(power / np.maximum(ref, 1e-20), 0.0, 1.0)), 0.0)
            full = same & (hit | (alpha >= 0.9))
            self._pause = np.where(full, 0.0, self._pause)
            self._end = np.where(full, start + n, self._end)
            take = full & hit
            self._ref_sum += np.where(take, power, 0.0)
            self._ref_count += take
            gap = on & ~full
            first_gap = gap & (self._pause == 0)
            # A partly covered block right after the tone: the tone stopped alpha·n into it.
            self._end = np.where(first_gap, start + alpha * n, self._end)
            self._pause = np.where(gap, self._pause + (1.0 - alpha) * n, self._pause)
            other_digit = on & hit & ~same
            done = gap & ((self._pause >= self._min_pause) | other_digit)
            for ch in np.nonzero(done)[0]:
                events.append((int(ch), self._event(int(ch))))
            active[done] = -1
            self._pause[done] = 0.0
        # --- channels without a digit: count successive hits of one digit -----------------------
        idle = active < 0
        cont = idle & hit & (digit == self._cand)
        new = idle & hit & ~cont
        alpha_prev = np.where(
            self._prev_digit == digit,
            np.sqrt(np.clip(self._prev_power / np.maximum(power, 1e-20), 0.0, 1.0)),
            0.0,
        )
        self._cand = np.where(new, digit, np.where(idle & ~hit, -1, self._cand))
        self._cand_count = np.where(new, 1, np.where(cont, self._cand_count + 1, self._cand_count))
        self._cand_count[idle & ~hit] = 0
        self._cand_onset = np.where(new, start - alpha_prev * n, self._cand_onset)
        self._cand_sum = np.where(new, power, np.where(cont, self._cand_sum + power, self._cand_sum))
        begin = idle & hit & (self._cand_count >= self.params.hits_to_begin)
        if begin.any():
            active[begin] = digit[begin]
            self._onset[begin] = self._cand_onset[begin]
            self._end[begin] = start + n
            self._pause[begin] = 0.0
            self._ref_sum[begin] = self._cand_sum[begin]
            self._ref_count[begin] = self._cand_count[begin]
            self._cand[begin] = -1
            self._cand_count[begin] = 0
        self._prev_digit = digit
        self._prev_power = power
        return events


class DtmfDetector:
    """One channel: ``DtmfDetector(twist="ntt").feed(samples) -> [DtmfDigit]`` (8 kHz float samples)."""

    def __init__(
        self,
        params: DtmfParams | None = None,
        *,
        twist: str = "att",
        tones: str | None = None,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self.params = params or DtmfParams.for_site(twist, tones=tones)
        self._bank = DtmfBank(1, self.params, sample_rate=sample_rate)

    def feed(self, samples: np.ndarray) -> list[DtmfDigit]:
        samples = np.asarray(samples, dtype=np.float32).reshape(1, -1)
        return [ev for _, ev in self._bank.feed(samples)]

    def flush(self) -> list[DtmfDigit]:
        return [ev for _, ev in self._bank.flush()]
