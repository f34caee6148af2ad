"""Telephone-line test signals: DTMF and progress tones, speech- and music-like sound, and a line model.

Written on its own from the standards (no import from drivers/ or gateway/), so a misreading of a spec in
a detector cannot hide in its test signal too. All signals are float64 at 8 kHz, full scale 1.0.

Levels (ITU-T G.711): full scale is the codec overload; a sine reaching it is +3.14 dBm0, so a sine at
L dBm0 has amplitude 10^((L − 3.14)/20).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RATE = 8000
OVERLOAD_DBM0 = 3.14

# ITU-T Q.23 keypad frequencies.
_LOW = {
    "1": 697,
    "2": 697,
    "3": 697,
    "A": 697,
    "4": 770,
    "5": 770,
    "6": 770,
    "B": 770,
    "7": 852,
    "8": 852,
    "9": 852,
    "C": 852,
    "*": 941,
    "0": 941,
    "#": 941,
    "D": 941,
}
_HIGH = {
    "1": 1209,
    "4": 1209,
    "7": 1209,
    "*": 1209,
    "2": 1336,
    "5": 1336,
    "8": 1336,
    "0": 1336,
    "3": 1477,
    "6": 1477,
    "9": 1477,
    "#": 1477,
    "A": 1633,
    "B": 1633,
    "C": 1633,
    "D": 1633,
}


def amplitude(level_dbm0: float) -> float:
    """Peak amplitude of a sine at ``level_dbm0``."""
    return 10.0 ** ((level_dbm0 - OVERLOAD_DBM0) / 20.0)


def level_dbm0(x: np.ndarray) -> float:
    """Level of a signal in dBm0 from its mean square (a sine of mean square 0.5 is +3.14 dBm0)."""
    ms = float(np.mean(np.square(x)))
    return OVERLOAD_DBM0 + 10.0 * np.log10(max(ms, 1e-30) / 0.5)


def dtmf_frequencies(digit: str) -> tuple[int, int]:
    try:
        return _LOW[digit.upper()], _HIGH[digit.upper()]
    except KeyError:
        raise ValueError(f"not a DTMF digit: {digit!r}") from None


def tone(
    freqs: Sequence[float],
    seconds: float,
    level_dbm0: float | Sequence[float] = -10.0,
    *,
    rate: int = RATE,
    phases: Sequence[float] | None = None,
) -> np.ndarray:
    """Sum of sines, each at its own level (a scalar level applies to every component)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    levels = np.broadcast_to(np.asarray(level_dbm0, dtype=float), (len(freqs),))
    ph = np.zeros(len(freqs)) if phases is None else np.asarray(phases, dtype=float)
    out = np.zeros(n)
    for f, lv, p in zip(freqs, levels, ph, strict=True):
        out += amplitude(lv) * np.cos(2.0 * np.pi * f * t + p)
    return out


def silence(seconds: float, *, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(round(seconds * rate)))


def dtmf_tone(
    digit: str,
    seconds: float,
    level_dbm0: float = -10.0,
    *,
    twist_db: float = 0.0,
    low_offset: float = 0.0,
    high_offset: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One key: low + high tone. ``twist_db`` > 0 makes the high group louder (normal twist);
    offsets are relative frequency errors (0.015 = +1.5 %). ``level_dbm0`` is per tone, the high tone
    at ``level + twist/2`` and the low at ``level − twist/2``."""
    low, high = dtmf_frequencies(digit)
    phases = None if rng is None else rng.uniform(0, 2 * np.pi, 2)
    return tone(
        [low * (1 + low_offset), high * (1 + high_offset)],
        seconds,
        [level_dbm0 - twist_db / 2, level_dbm0 + twist_db / 2],
        phases=phases,
    )


def dtmf_sequence(
    digits: str,
    on_ms: float = 50.0,
    off_ms: float = 50.0,
    level_dbm0: float = -10.0,
    *,
    lead_ms: float = 0.0,
    rng: np.random.Generator | None = None,
    **tone_kw,
) -> np.ndarray:
    """Digits separated by ``off_ms`` of silence, starting after ``lead_ms``, ending with one pause."""
    parts = [silence(lead_ms / 1000)]
    for d in digits:
        parts.append(dtmf_tone(d, on_ms / 1000, level_dbm0, rng=rng, **tone_kw))
        parts.append(silence(off_ms / 1000))
    return np.concatenate(parts)


def cadence(
    freqs: Sequence[float],
    on_s: float | None,
    off_s: float,
    seconds: float,
    level_dbm0: float = -15.0,
    *,
    am_hz: float | None = None,
    am_depth: float = 1.0,
    rate: int = RATE,
) -> np.ndarray:
    """A call-progress tone: ``freqs`` sounding ``on_s`` then silent ``off_s``, repeated for ``seconds``.

    ``on_s=None`` is a continuous tone. ``am_hz`` amplitude-modulates it (Japanese ringback: 400 Hz
    modulated by 16 Hz, energy at 384/400/416 Hz). Levels are those of the unmodulated carrier.
    """
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    x = tone(freqs, seconds, level_dbm0, rate=rate)
    if am_hz:
        x = x * (1.0 + am_depth * np.cos(2.0 * np.pi * am_hz * t)) / (1.0 + am_depth)
    if on_s is not None:
        period = on_s + off_s
        x = x * ((t % period) < on_s)
    return x


# --- G.711 companding, implemented from the recommendation's segment tables --------------------------
# µ-law (G.711 Table 2): 14-bit magnitudes, bias 33, 8 segments of 16 steps, all bits inverted.
_MU_FULL_SCALE = 8159.0  # 14-bit overload: float 1.0
# A-law (G.711 Table 1): 13-bit magnitudes, segment 0/1 linear, even bits inverted (XOR 0x55).
_A_FULL_SCALE = 4096.0  # 13-bit overload: float 1.0


def mulaw_encode(x: np.ndarray) -> np.ndarray:
    """Float samples → G.711 µ-law code bytes (uint8)."""
    v = np.round(np.asarray(x, dtype=float) * _MU_FULL_SCALE)
    negative = v < 0
    mag = np.minimum(np.abs(v), 8158).astype(np.int64) + 33  # 33..8191
    seg = np.floor(np.log2(mag)).astype(np.int64) - 5  # 0..7
    mant = (mag >> (seg + 1)) & 0x0F
    code = (seg << 4) | mant
    return np.where(negative, code ^ 0x7F, code ^ 0xFF).astype(np.uint8)


def mulaw_decode(code: np.ndarray) -> np.ndarray:
    """G.711 µ-law code bytes → float samples."""
    c = (~np.asarray(code, dtype=np.uint8)).astype(np.int64) & 0xFF
    seg = (c >> 4) & 0x07
    mant = c & 0x0F
    mag = (((mant << 1) + 33) << seg) - 33
    return np.where(c & 0x80, -mag, mag) / _MU_FULL_SCALE


def alaw_encode(x: np.ndarray) -> np.ndarray:
    """Float samples → G.711 A-law code bytes (uint8)."""
    v = np.floor(np.asarray(x, dtype=float) * _A_FULL_SCALE)
    negative = v < 0
    mag = np.minimum(np.where(negative, -v - 1, v), 4095).astype(np.int64)
    seg = np.where(mag < 32, 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int64) - 4)
    mant = np.where(seg == 0, mag >> 1, (mag >> np.maximum(seg, 1)) & 0x0F)
    code = (seg << 4) | mant
    code = np.where(negative, code, code | 0x80)
    return (code ^ 0x55).astype(np.uint8)


def alaw_decode(code: np.ndarray) -> np.ndarray:
    """G.711 A-law code bytes → float samples (decision values at segment mid-steps)."""
    c = np.asarray(code, dtype=np.int64) ^ 0x55
    seg = (c >> 4) & 0x07
    mant = c & 0x0F
    mag = np.where(seg == 0, (mant << 1) + 1, ((mant << 1) + 33) << np.maximum(seg - 1, 0))
    return np.where(c & 0x80, mag, -mag) / _A_FULL_SCALE


def g711_roundtrip(x: np.ndarray, law: str) -> np.ndarray:
    """``x`` through a G.711 encoder and decoder (``law`` = "ulaw" | "alaw")."""
    if law == "ulaw":
        return mulaw_decode(mulaw_encode(x))
    if law == "alaw":
        return alaw_decode(alaw_encode(x))
    raise ValueError(f"unknown G.711 law {law!r}; expected 'ulaw' or 'alaw'")


# --- line impairments ---------------------------------------------------------------------------------
def white_noise(n: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise over 0–4 kHz at ``level`` dBm0."""
    return rng.standard_normal(n) * np.sqrt(0.5 * 10.0 ** ((level - OVERLOAD_DBM0) / 10.0))


def add_noise_snr(
    x: np.ndarray, snr_db: float, rng: np.random.Generator, *, signal_dbm0: float | None = None
):
    """Add white noise ``snr_db`` below the signal. The signal level is ``signal_dbm0`` when given (e.g.
    the level of the tones while they sound) or the mean square of the non-silent samples of ``x``."""
    if signal_dbm0 is None:
        active = x[np.abs(x) > 1e-9]
        signal_dbm0 = level_dbm0(active) if active.size else -100.0
    return x + white_noise(x.size, signal_dbm0 - snr_db, rng)


def shift_frequency(x: np.ndarray, hz: float, *, rate: int = RATE) -> np.ndarray:
    """Shift every component by ``hz`` (single-sideband shift as on an FDM carrier link)."""
    n = x.size
    spectrum = np.fft.fft(x)
    h = np.zeros(n)
    h[0] = 1.0
    if n % 2 == 0:
        h[n // 2] = 1.0
        h[1 : n // 2] = 2.0
    else:
        h[1 : (n + 1) // 2] = 2.0
    analytic = np.fft.ifft(spectrum * h)
    return np.real(analytic * np.exp(2j * np.pi * hz * np.arange(n) / rate))


def line(
    x: np.ndarray,
    *,
    gain_db: float = 0.0,
    snr_db: float | None = None,
    noise_dbm0: float | None = None,
    shift_hz: float = 0.0,
    law: str | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Telephone line model: gain, frequency shift, white noise (relative or absolute), G.711 codec."""
    rng = rng or np.random.default_rng(0)
    y = x * 10.0 ** (gain_db / 20.0)
    if shift_hz:
        y = shift_frequency(y, shift_hz)
    if snr_db is not None:
        y = add_noise_snr(y, snr_db, rng)
    if noise_dbm0 is not None:
        y = y + white_noise(y.size, noise_dbm0, rng)
    y = np.clip(y, -1.0, 1.0)
    if law:
        y = g711_roundtrip(y, law)
    return y


# --- speech- and music-like signals for talk-off tests -------------------------------------------------
_VOWEL_FORMANTS = (  # (F1, F2, F3) Hz of a, i, u, e, o: textbook averages
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
)


def speech_like(seconds: float, rng: np.random.Generator, *, level: float = -15.0, f0: float = 140.0):
    """Voiced speech stand-in: glottal harmonic series with vibrato and drifting pitch, shaped by moving
    vowel formants, with syllabic (≈ 4 Hz) on/off envelope and pauses. Level in dBm0 while voiced."""
    n = int(round(seconds * RATE))
    t = np.arange(n) / RATE
    # Pitch contour: slow declination + random intonation + 5.5 Hz vibrato.
    knots = rng.uniform(0.75, 1.3, int(seconds * 3) + 2)
    contour = np.interp(t, np.linspace(0, seconds, knots.size), knots)
    pitch = f0 * contour * (1.0 + 0.02 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2.0 * np.pi * np.cumsum(pitch) / RATE
    # Vowel sequence, one per syllable (≈ 200 ms), formants interpolated between syllables.
    syll = int(seconds / 0.2) + 2
    choice = rng.integers(0, len(_VOWEL_FORMANTS), syll)
    formants = np.array(_VOWEL_FORMANTS, dtype=float)[choice]  # (syll, 3)
    ft = np.linspace(0, seconds, syll)
    f_track = np.stack([np.interp(t, ft, formants[:, k]) for k in range(3)], axis=0)  # (3, n)
    out = np.zeros(n)
    kmax = int(3400 / (f0 * 0.75))
    for k in range(1, kmax + 1):
        fk = k * pitch
        # Resonance gain of each formant (bandwidth 80–120 Hz) and a −12 dB/oct glottal tilt.
        gain = np.zeros(n)
        for j, bw in enumerate((80.0, 100.0, 120.0)):
            gain += 1.0 / (1.0 + ((fk - f_track[j]) / bw) ** 2)
        gain *= (1.0 / k) * (fk < 3800)
        out += gain * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    # Syllables: raised-cosine bursts, some silent gaps.
    env = 0.5 - 0.5 * np.cos(2 * np.pi * 5.0 * t)
    gaps = np.repeat(rng.random(int(seconds / 0.6) + 2) < 0.2, int(0.6 * RATE))[:n]
    env = env * ~gaps
    out = out * env
    voiced = out[env > 0.5]
    if voiced.size:
        out *= amplitude(level) / np.sqrt(2 * np.mean(voiced**2))
    return out


def music_like(seconds: float, rng: np.random.Generator, *, level: float = -15.0) -> np.ndarray:
    """Hold-music stand-in: chords of equal-tempered notes (C4–C7) with harmonics, changing every
    0.25–1 s, plus a melody line. Equal temperament puts notes within ±2 % of several DTMF tones
    (F5 = 698.5 Hz, E6 = 1318.5 Hz), which is what makes music a talk-off hazard."""
    n = int(round(seconds * RATE))
    out = np.zeros(n)
    pos = 0
    while pos < n:
        length = min(n - pos, int(rng.uniform(0.25, 1.0) * RATE))
        t = np.arange(length) / RATE
        notes = rng.integers(60, 97, rng.integers(1, 4))  # MIDI numbers, 1–3 notes
        seg = np.zeros(length)
        for note in notes:
            f = 440.0 * 2.0 ** ((note - 69) / 12.0)
            for h, a in ((1, 1.0), (2, 0.5), (3, 0.3), (4, 0.15)):
                if h * f < 3800:
                    seg += a * np.sin(2 * np.pi * h * f * t + rng.uniform(0, 2 * np.pi))
        seg *= np.minimum(1.0, np.minimum(t / 0.01, (t[-1] - t + 1 / RATE) / 0.02))  # attack/release
        out[pos : pos + length] = seg
        pos += length
    out *= amplitude(level) / np.sqrt(2 * max(np.mean(out**2), 1e-20))
    return out
