"""Block Goertzel/DFT energies in matrix form, levels in dBm0, and the streaming block splitter.

A Goertzel filter evaluated once per block is one bin of a DFT at an arbitrary frequency. Evaluating
F frequencies over M blocks of N samples is therefore one matrix product ``blocks(M, N) @ basis(N, 2F)``
with ``basis = [w·cos | w·sin]``; numpy hands that to BLAS, so C channels × M blocks cost one call.

Levels follow ITU-T G.711 (§ "Transmission characteristics" and Table 5/6 notes): a 0 dBm0 sine is
3.14 dB below the codec overload point, so a float sine of amplitude 1.0 (full scale) is +3.14 dBm0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SAMPLE_RATE = 8000
# G.711: the overload (full-scale) sine is +3.14 dBm0 (A-law; µ-law +3.17, treated alike here).
FULL_SCALE_SINE_DBM0 = 3.14
_FULL_SCALE_SINE_POWER = 0.5  # mean square of a sine of amplitude 1.0
_POWER_FLOOR = 1e-20


def dbm0_to_power(level_dbm0: float) -> float:
    """Mean square of a sine at ``level_dbm0`` (float full scale = 1.0)."""
    return _FULL_SCALE_SINE_POWER * 10.0 ** ((level_dbm0 - FULL_SCALE_SINE_DBM0) / 10.0)


def power_to_dbm0(power: np.ndarray | float) -> np.ndarray | float:
    """Inverse of :func:`dbm0_to_power`; ``power`` is a mean square."""
    return FULL_SCALE_SINE_DBM0 + 10.0 * np.log10(np.maximum(power, _POWER_FLOOR) / _FULL_SCALE_SINE_POWER)


def hann(n: int) -> np.ndarray:
    """Periodic-phase Hann window sampled at sample centres (symmetric, no zero end points)."""
    phase = 2.0 * np.pi * (np.arange(n) + 0.5) / n
    return 0.5 - 0.5 * np.cos(phase)


_BLACKMAN = (0.42, 0.5, 0.08)


def blackman(n: int) -> np.ndarray:
    """Classic Blackman window (sidelobes below −58 dB) sampled at sample centres."""
    a0, a1, a2 = _BLACKMAN
    phase = 2.0 * np.pi * (np.arange(n) + 0.5) / n
    return a0 - a1 * np.cos(phase) + a2 * np.cos(2.0 * phase)


def blackman_derivative(n: int) -> np.ndarray:
    """d/dn of :func:`blackman`, per sample: the second window of frequency reassignment."""
    _, a1, a2 = _BLACKMAN
    step = 2.0 * np.pi / n
    phase = step * (np.arange(n) + 0.5)
    return a1 * step * np.sin(phase) - 2.0 * a2 * step * np.sin(2.0 * phase)


def sinusoid_basis(
    freqs: Sequence[float], n: int, *, sample_rate: int = SAMPLE_RATE, window: np.ndarray | None = None
) -> np.ndarray:
    """``(n, 2F)`` float32 matrix ``[w·cos(2πf·k/fs) | w·sin(2πf·k/fs)]``, k = 0..n-1."""
    k = np.arange(n)[:, None]
    phase = 2.0 * np.pi * np.asarray(freqs, dtype=float)[None, :] * k / sample_rate
    w = np.ones((n, 1)) if window is None else np.asarray(window, dtype=float)[:, None]
    return np.concatenate([w * np.cos(phase), w * np.sin(phase)], axis=1).astype(np.float32)


def bin_power(cos_part: np.ndarray, sin_part: np.ndarray, n: int) -> np.ndarray:
    """Rectangular-window DFT magnitude as the mean square of the sine it represents.

    A sine of amplitude A at the bin frequency gives |X| = A·n/2, so A²/2 = 2|X|²/n².
    """
    return (cos_part * cos_part + sin_part * sin_part) * (2.0 / (n * n))


def reassigned_frequency(
    cos_w: np.ndarray,
    sin_w: np.ndarray,
    cos_dw: np.ndarray,
    sin_dw: np.ndarray,
    freqs: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Frequency of the dominant component near each analysed frequency (Auger–Flandrin reassignment).

    With X_w and X_dw the DFTs through the window and through its derivative at f0, the instantaneous
    frequency is f0 − Im(X_dw / X_w)·fs/2π. One block gives a sub-bin estimate (better than 0.5 Hz for a
    clean tone); this is the "second check" that lets a 102-sample block tell ±1.5 % from ±3.5 %.
    """
    denom = np.maximum(cos_w * cos_w + sin_w * sin_w, _POWER_FLOOR)
    im = (cos_dw * sin_w - sin_dw * cos_w) / denom
    return freqs - im * (sample_rate / (2.0 * np.pi))


def gram_inverse(basis: np.ndarray) -> np.ndarray:
    """Inverse Gram matrix of the basis columns, for least-squares projected energies."""
    basis64 = basis.astype(np.float64)
    return np.linalg.inv(basis64.T @ basis64).astype(np.float32)


def projected_energy(coeffs: np.ndarray, gram_inv: np.ndarray) -> np.ndarray:
    """Energy of the least-squares fit of a block onto a basis, from ``coeffs = block @ basis``.

    Unlike a sum of bin energies it does not count twice what two close frequencies share.
    """
    return np.einsum("...i,ij,...j->...", coeffs, gram_inv, coeffs)


def channel_rows(channels: np.ndarray | Sequence[int], count: int) -> np.ndarray:
    """Row indices (``intp``) of ``channels`` in a bank of ``count``: integer indices, or a bool mask of
    length ``count``. ``ValueError`` for an index outside ``0..count-1`` (negative indices do not wrap)."""
    idx = np.asarray(channels)
    if idx.dtype == bool:
        if idx.shape != (count,):
            raise ValueError(f"a channel mask must have shape ({count},), got {idx.shape}")
        return np.flatnonzero(idx)
    idx = idx.reshape(-1)
    if idx.size == 0:
        return np.zeros(0, dtype=np.intp)
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"channels must be integer indices, got dtype {idx.dtype}")
    bad = idx[(idx < 0) | (idx >= count)]
    if bad.size:
        raise ValueError(f"channel {int(bad[0])} is out of range: the bank has channels 0..{count - 1}")
    return idx.astype(np.intp)


class BlockStream:
    """Cuts C parallel streams fed in frames of any length into blocks of ``size`` every ``hop`` samples.

    ``push((C, n))`` returns ``(blocks (C, M, size), first_start)`` where ``first_start`` is the sample
    index (from the first sample pushed) where block 0 starts; M may be 0. The blocks are a read-only view
    of the stream's buffer, valid until the next ``push`` (copy them to keep them longer).
    """

    def __init__(self, channels: int, size: int, hop: int | None = None) -> None:
        self.size = size
        self.hop = size if hop is None else hop
        if not 0 < self.hop <= size:
            raise ValueError(f"hop must be in 1..{size}, got {self.hop}")
        self._channels = channels
        # Samples held back for the next block are _buf[:, _head:_tail]; new frames are appended after them
        # (the buffer is compacted or grown only when a frame does not fit), so no frame is copied twice.
        self._buf = np.zeros((channels, 4 * size + 2048), dtype=np.float32)
        self._head = 0
        self._tail = 0
        self._pending_start = 0  # sample index of _buf[:, _head]
        self._empty = np.zeros((channels, 0, size), dtype=np.float32)
        self._empty.setflags(write=False)

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def _pending(self) -> np.ndarray:
        """The samples held back for the next block (a view)."""
        return self._buf[:, self._head : self._tail]

    @property
    def position(self) -> int:
        """Samples pushed so far (per row; all rows share the clock): the index of the next sample."""
        return self._pending_start + self._tail - self._head

    def reset_rows(self, rows: np.ndarray | Sequence[int]) -> None:
        """Zero the samples of ``rows`` held back for the next block: the blocks that start before now see
        silence there, as for a line that was silent until now. The block phase is the stream's."""
        self._buf[channel_rows(rows, self.channels), self._head : self._tail] = 0.0

    def push(self, samples: np.ndarray) -> tuple[np.ndarray, int]:
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 2 or samples.shape[0] != self._channels:
            raise ValueError(f"expected samples of shape ({self.channels}, n), got {samples.shape}")
        n = samples.shape[1]
        head, tail = self._head, self._tail
        buf = self._buf
        if tail + n > buf.shape[1]:
            held = tail - head
            if held + n > buf.shape[1]:
                grown = np.zeros((self._channels, 2 * (held + n) + self.size), dtype=np.float32)
                grown[:, :held] = buf[:, head:tail]
                self._buf = buf = grown
            else:
                buf[:, :held] = buf[:, head:tail]
            head, tail = 0, held
        buf[:, tail : tail + n] = samples
        tail += n
        self._tail = tail
        start = self._pending_start
        length = tail - head
        size, hop = self.size, self.hop
        if length < size:
            self._head = head
            return self._empty, start
        count = (length - size) // hop + 1
        if hop == size:
            blocks = buf[:, head : head + count * size].reshape(self._channels, count, size)
        else:
            # The windows as numpy's sliding_window_view lays them out: row stride ``hop`` samples.
            item = buf.itemsize
            blocks = np.ndarray(
                (self._channels, count, size),
                dtype=np.float32,
                buffer=buf,
                offset=head * item,
                strides=(buf.strides[0], hop * item, item),
            )
        blocks.flags.writeable = False
        consumed = count * hop
        self._head = head + consumed
        self._pending_start = start + consumed
        return blocks, start
