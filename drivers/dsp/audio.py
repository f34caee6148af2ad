"""Read any WAV/FLAC/OGG file libsndfile knows as 8 kHz mono float samples for the line detectors."""

from __future__ import annotations

import os

import numpy as np
import soundfile
import soxr

from drivers.dsp.goertzel import SAMPLE_RATE


class AudioError(ValueError):
    """The file cannot be read as audio; the message names the file and the reason."""


def to_line_rate(samples: np.ndarray, rate: int, *, target: int = SAMPLE_RATE) -> np.ndarray:
    """Mix ``(n,)`` or ``(n, channels)`` samples to mono and resample to ``target`` Hz (soxr HQ)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != target and x.size:
        x = soxr.resample(x, rate, target, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def load_audio(path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples of ``path`` as float32 mono at ``sample_rate`` (full scale 1.0). Raises AudioError."""
    name = os.fspath(path)
    if not os.path.exists(name):  # libsndfile reports a missing file only as "System error."
        raise AudioError(f"{name}: no such file")
    if os.path.isdir(name):
        raise AudioError(f"{name}: is a directory, not an audio file")
    try:
        data, rate = soundfile.read(name, dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise AudioError(f"{name}: is a directory, not an audio file") from None
    except PermissionError:
        raise AudioError(f"{name}: permission denied") from None
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)
        raise AudioError(f"{name}: not a readable audio file ({reason})") from None
    return to_line_rate(data, rate, target=sample_rate)
