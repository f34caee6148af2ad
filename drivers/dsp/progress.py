"""Call-progress tones by country tone plan, plus silence and voice activity, for C channels at once.

Every 20 ms (a hop of 160 samples) each channel's last ``window`` samples (40 ms; 60 ms for the US plan,
whose 440 and 480 Hz must be told apart) are projected, Hann-windowed, onto the sinusoids of each tone
of the plan (least squares, so the two frequencies of a US tone are not counted twice). A frame is
"on" for a tone when that fit holds ≥ 70 % of the windowed energy (spandsp ``super_tone_rx`` asks for
the tone to be within 3 dB of the total) above the minimum level; on/off segments are then matched to
the plan's cadences with a tolerance (relative + absolute, for the 20 ms frames and the window).

Tone plans: telephony.md §6 (spandsp ``global-tones.xml``, Asterisk ``indications.conf``, ETSI ETR 187 /
TR 101 041 for the 425 Hz plan, as collected in ITU-T E.180 Supplement 2). Japan's congestion tone has
the same 400 Hz 0.5/0.5 s cadence as busy, so it is reported as busy.

Events (``Tone``): busy, congestion, ringback, dialtone once per episode (re-armed when the cadence
breaks), ``silence`` after ``silence_s`` of quiet line, ``voice`` after ``voice_s`` of speech-like
energy that is neither a plan tone nor DTMF — the raw material of answer and silence hang-up detection.
Each carries a confidence 0..1 from cadence timing error and tone purity (or level margin).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from drivers.dsp.events import Tone
from drivers.dsp.goertzel import (
    SAMPLE_RATE,
    BlockStream,
    channel_rows,
    dbm0_to_power,
    gram_inverse,
    hann,
    power_to_dbm0,
    projected_energy,
    sinusoid_basis,
)

HOP = 160  # 20 ms at 8 kHz
_NEAR = np.arange(-2, 3)  # spectrum bins within 2 of a cluster peak


@dataclass(frozen=True)
class ToneSpec:
    name: str  # busy | ringback | congestion | dialtone
    freqs: tuple[float, ...]
    on_s: float | None  # None: continuous
    off_s: float = 0.0
    cycles: int = 1  # on/off cycles to match before reporting


@dataclass(frozen=True)
class TonePlan:
    name: str
    tones: tuple[ToneSpec, ...]
    window: int = 320  # samples analysed per 20 ms hop

    def frequency_sets(self) -> list[tuple[float, ...]]:
        sets: list[tuple[float, ...]] = []
        for t in self.tones:
            if t.freqs not in sets:
                sets.append(t.freqs)
        return sets


PLANS: dict[str, TonePlan] = {
    # Japan (NTT): 400 Hz; ringback 400 Hz modulated by 16 Hz, 1 s on / 2 s off (telephony.md §6).
    "jp": TonePlan(
        "jp",
        (
            ToneSpec("dialtone", (400.0,), None),
            ToneSpec("busy", (400.0,), 0.5, 0.5, cycles=2),
            ToneSpec("ringback", (400.0,), 1.0, 2.0),
        ),
    ),
    # China: 450 Hz; busy 0.35/0.35, congestion 0.7/0.7, ringback 1/4 s (ITU tones-0203 via Asterisk [cn]).
    "cn": TonePlan(
        "cn",
        (
            ToneSpec("dialtone", (450.0,), None),
            ToneSpec("busy", (450.0,), 0.35, 0.35, cycles=2),
            ToneSpec("congestion", (450.0,), 0.7, 0.7, cycles=2),
            ToneSpec("ringback", (450.0,), 1.0, 4.0),
        ),
    ),
    # North America (precise tone plan): dial 350+440, ringback 440+480 2/4, busy 480+620 0.5/0.5,
    # reorder 480+620 0.25/0.25 (spandsp global-tones.xml "us").
    "us": TonePlan(
        "us",
        (
            ToneSpec("dialtone", (350.0, 440.0), None),
            ToneSpec("ringback", (440.0, 480.0), 2.0, 4.0),
            ToneSpec("busy", (480.0, 620.0), 0.5, 0.5, cycles=2),
            ToneSpec("congestion", (480.0, 620.0), 0.25, 0.25, cycles=2),
        ),
        window=480,
    ),
    # ETSI 425 Hz plan: busy 0.5/0.5, ringback 1/4, congestion 0.25/0.25 (ETR 187; TR 101 041).
    "etsi": TonePlan(
        "etsi",
        (
            ToneSpec("dialtone", (425.0,), None),
            ToneSpec("busy", (425.0,), 0.5, 0.5, cycles=2),
            ToneSpec("congestion", (425.0,), 0.25, 0.25, cycles=2),
            ToneSpec("ringback", (425.0,), 1.0, 4.0),
        ),
    ),
}


@dataclass(frozen=True)
class ProgressParams:
    min_level_dbm0: float = -40.0  # tone power (all its frequencies)
    tone_fraction: float = 0.7  # share of the windowed energy the tone fit must hold
    tolerance_rel: float = 0.15  # cadence: |measured − nominal| ≤ rel·nominal + abs
    tolerance_abs_s: float = 0.06
    dialtone_s: float = 1.0  # continuous tone this long → dial tone
    silence_dbm0: float = -50.0
    silence_s: float = 5.0  # BriSDK's default silence event
    voice_dbm0: float = -40.0
    voice_above_floor_db: float = 10.0
    voice_s: float = 0.2
    voice_rearm_s: float = 1.0  # quiet (or tone) this long ends a voice episode


def resolve_plan(plan: str | TonePlan) -> TonePlan:
    if isinstance(plan, TonePlan):
        return plan
    try:
        return PLANS[plan]
    except KeyError:
        raise ValueError(f"unknown tone plan {plan!r}; expected one of {sorted(PLANS)}") from None


class _Segments:
    """One channel's recent on/off history: (set index, on seconds, off seconds or None while off)."""

    __slots__ = ("history", "reported", "purity")

    def __init__(self) -> None:
        self.history: deque[list] = deque(maxlen=6)
        self.reported: str | None = None
        self.purity: deque[float] = deque(maxlen=6)


class ProgressBank:
    """Call progress for C channels fed in lockstep: ``feed((C, n)) -> [(channel, Tone)]``."""

    def __init__(
        self,
        channels: int,
        plan: str | TonePlan = "jp",
        params: ProgressParams | None = None,
        *,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"call progress runs at {SAMPLE_RATE} Hz, got {sample_rate}: resample first")
        self.plan = resolve_plan(plan)
        self.params = params or ProgressParams()
        self.channels = channels
        w = self.plan.window
        self._stream = BlockStream(channels, w, HOP)
        self._window = hann(w).astype(np.float32)
        self._window_power = float(np.sum(self._window**2))
        self._sets = self.plan.frequency_sets()
        parts, self._slices, self._ginv = [], [], []
        col = 0
        for freqs in self._sets:
            # Least squares of the windowed signal w·x onto windowed sinusoids w·cos, w·sin: the
            # coefficients are x·(w²·cos), x·(w²·sin); the Gram matrix is that of w·cos, w·sin.
            b = sinusoid_basis(freqs, w, window=self._window**2)
            parts.append(b)
            self._slices.append(slice(col, col + b.shape[1]))
            self._ginv.append(gram_inverse(sinusoid_basis(freqs, w, window=self._window)))
            col += b.shape[1]
        self._basis = np.ascontiguousarray(np.concatenate(parts, axis=1))
        self._set_of_tone = [self._sets.index(t.freqs) for t in self.plan.tones]
        # A continuous tone is dial tone once it outlasts every cadenced tone of the same frequencies.
        self._dial_after = []
        for set_idx in range(len(self._sets)):
            longest = [
                t.on_s
                for i, t in enumerate(self.plan.tones)
                if t.on_s is not None and self._set_of_tone[i] == set_idx
            ]
            limit = max((on + self._tol(on) + 0.1 for on in longest), default=0.0)
            self._dial_after.append(max(self.params.dialtone_s, limit))
        p = self.params
        self._min_power = dbm0_to_power(p.min_level_dbm0)
        c = channels
        self._state = np.full(c, -1)  # set index sounding, -1 off
        self._cand_state = np.full(c, -1)  # this frame's raw decision, before debouncing
        self._cand_count = np.zeros(c, dtype=int)
        self._cand_since = np.zeros(c)
        self._since = np.zeros(c)  # sample time of the last state change
        self._peak = np.zeros(c)  # tone power of the current/last on segment
        self._frac_sum = np.zeros(c)
        self._frac_n = np.zeros(c)
        self._due = np.full(c, np.inf)  # sample time a pending confirmation fires
        self._due_tone = np.full(c, -1)
        self._silence_run = np.zeros(c)
        self._silence_sent = np.zeros(c, dtype=bool)
        self._silence_level = np.zeros(c)
        self._voice_score = np.zeros(c)
        self._floor = np.full(c, np.inf)
        self._voice_sent = np.zeros(c, dtype=bool)
        self._quiet_run = np.zeros(c)
        self._segments = [_Segments() for _ in range(c)]
        self._rows = np.arange(c)
        self._zero_rows = np.zeros(c, dtype=np.intp)
        self._grids: dict[tuple[int, ...], tuple[np.ndarray, ...]] = {}
        # True when no channel has a tone sounding or starting and no confirmation is pending: a hop
        # whose windows are "on" for no tone then changes nothing but the debounce counters.
        self._tone_idle = True
        self._need_f64 = np.float64(self.params.tone_fraction)
        self._min_power_f64 = np.float64(max(self._min_power, 0.0))

    def analyse(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """Per-window features: tone power and energy share per frequency set, DTMF share, level."""
        coeffs = windows @ self._basis
        weighted = windows * self._window
        energy = np.maximum(np.einsum("...i,...i->...", weighted, weighted), 1e-20)
        if len(self._slices) == 1:
            e = projected_energy(coeffs[..., self._slices[0]], self._ginv[0])[..., None]
        else:
            shares = []
            for sl, ginv in zip(self._slices, self._ginv, strict=True):
                shares.append(projected_energy(coeffs[..., sl], ginv))
            e = np.stack(shares, axis=-1)  # (..., sets)
        # Tonality for the voice detector: share of the energy in the two strongest 3-bin clusters
        # of the windowed spectrum. Tones and DTMF put nearly all of it there, speech spreads it over
        # its harmonics and formants.
        spec = np.fft.rfft(weighted, axis=-1)
        pw = spec.real**2 + spec.imag**2
        cluster = pw[..., :-2] + pw[..., 1:-1] + pw[..., 2:]
        top = np.argmax(cluster, axis=-1)
        first = cluster.max(axis=-1)  # the value at ``top``
        # The second cluster: the strongest at least 3 bins from the first (those within 2 are zeroed;
        # clipping at the ends only repeats bins that are within 2).
        masked = cluster.copy()
        lead = cluster.shape[:-1]
        grid = self._grids.get(lead)
        if grid is None:
            grid = self._grids[lead] = tuple(
                np.arange(size).reshape([size if a == axis else 1 for a in range(len(lead))] + [1])
                for axis, size in enumerate(lead)
            )
        near = np.minimum(np.maximum(top[..., None] + _NEAR, 0), cluster.shape[-1] - 1)
        masked[(*grid, near)] = 0.0
        second = masked.max(axis=-1)
        total = np.maximum(pw.sum(axis=-1), 1e-20)
        return {
            "tone_frac": e / energy[..., None],
            "tone_power": e / self._window_power,
            "tonality": (first + second) / total,
            "power": energy / self._window_power,
        }

    def feed(self, samples: np.ndarray) -> list[tuple[int, Tone]]:
        windows, first = self._stream.push(samples)
        if windows.shape[1] == 0:
            return []
        f = self.analyse(windows)
        out: list[tuple[int, Tone]] = []
        centre = first + self.plan.window / 2
        tone_frac, tone_power, tonality, power = f["tone_frac"], f["tone_power"], f["tonality"], f["power"]
        for k in range(windows.shape[1]):
            now = centre + k * HOP
            out.extend(self._step(now, tone_frac[:, k], tone_power[:, k], tonality[:, k], power[:, k]))
        return out

    # -- re-use of a channel for another line -------------------------------------------------------
    def quiet_channels(self) -> np.ndarray:
        """Per channel (bool): nothing in progress that :meth:`reset_channels` would lose.

        A channel is busy while a tone is sounding (``_state``: debounced, including the 3 frames an end
        takes to settle), while its last frame was "on" for a tone (``_cand_state``: a tone may be starting
        or is carrying on through a trough), and while a confirmation is pending (``_due``: a cadence whose
        last on segment matched waits out the minimum off time, a continuous tone waits to become dial
        tone). Not in progress: on/off segments that matched no cadence, and the silence and voice counters,
        none of which gives an event on a line that stays quiet.
        """
        return (self._state < 0) & (self._cand_state < 0) & np.isinf(self._due)

    def reset_channels(self, channels: np.ndarray | list[int]) -> None:
        """Give ``channels`` to new lines: each is as a freshly constructed bank's channel started at the
        current clock (``t`` keeps counting on the bank's clock).

        Tone, candidate and confirmation state, cadence history, silence and voice counters and the noise
        floor restart (state-change times at the current sample). The samples held back for the next
        windows are zeroed: the windows that straddle the reset see silence before it, as on a line that was
        silent until now. So the channel analyses hops that a bank started now would not (one for a 40 ms
        window when the reset falls on the 20 ms hop grid, as with 20 ms frames; two for the 60 ms US
        window; one more off the grid). None of them gives an event by itself; a tone that starts at the
        reset is seen up to a hop earlier than by a new bank, and when the new line starts with a window of
        silence they only lengthen its silence run. Other channels are untouched."""
        rows = channel_rows(channels, self.channels)
        now = float(self._stream.position)
        self._state[rows] = -1
        self._cand_state[rows] = -1
        self._cand_count[rows] = 0
        self._cand_since[rows] = now
        self._since[rows] = now
        self._peak[rows] = 0.0
        self._frac_sum[rows] = 0.0
        self._frac_n[rows] = 0.0
        self._due[rows] = np.inf
        self._due_tone[rows] = -1
        self._silence_run[rows] = 0.0
        self._silence_sent[rows] = False
        self._silence_level[rows] = 0.0
        self._voice_score[rows] = 0.0
        self._floor[rows] = np.inf
        self._voice_sent[rows] = False
        self._quiet_run[rows] = 0.0
        for ch in rows.tolist():
            self._segments[ch] = _Segments()
        self._stream.reset_rows(rows)

    # -- per hop, vectorised over channels ------------------------------------------------------------
    def _tol(self, nominal: float) -> float:
        return self.params.tolerance_rel * nominal + self.params.tolerance_abs_s

    def _step(self, now, tone_frac, tone_power, tonality, power) -> list[tuple[int, Tone]]:
        p = self.params
        events: list[tuple[int, Tone]] = []
        if tone_frac.shape[-1] == 1:
            best = self._zero_rows  # the only set
            best_frac = tone_frac[:, 0]
            best_power = tone_power[:, 0]
        else:
            best = np.argmax(tone_frac, axis=-1)
            best_frac = tone_frac[self._rows, best]
            best_power = tone_power[self._rows, best]
        on = None
        if self._tone_idle:
            # Nothing sounding, starting or pending: no channel is "going" (floor 0, full test).
            on = (best_frac >= self._need_f64) & (best_power >= self._min_power_f64)
            if not on.any():
                # No channel "on" either: the debounce counts another off frame; nothing else changes.
                self._cand_count = self._cand_count + 1
        if on is None or on.any():
            on = self._tone_step(now, best, best_frac, best_power, events)

        # Silence and voice activity.
        level = power_to_dbm0(power)
        silent = level < p.silence_dbm0
        self._silence_run = np.where(silent, self._silence_run + HOP, 0.0)
        self._silence_level = np.where(silent, np.maximum(self._silence_level, level), -200.0)
        self._silence_sent &= silent
        fire = silent & ~self._silence_sent & (self._silence_run >= p.silence_s * SAMPLE_RATE)
        for ch in np.nonzero(fire)[0]:
            margin = float(p.silence_dbm0 - self._silence_level[ch])
            events.append(
                (
                    int(ch),
                    Tone(
                        t=round(now / SAMPLE_RATE, 3),
                        name="silence",
                        confidence=round(min(1.0, 0.5 + margin / 20.0), 2),
                    ),
                )
            )
        self._silence_sent |= fire
        # Noise floor: follows the level down at once, up by 0.5 dB/s; voice must stand 10 dB above it.
        self._floor = np.where(level < self._floor, level, self._floor + 0.5 * HOP / SAMPLE_RATE)
        loud = level >= np.maximum(p.voice_dbm0, self._floor + p.voice_above_floor_db)
        voiced = loud & (best_frac < 0.5) & (tonality < 0.8) & ~on
        need = p.voice_s * SAMPLE_RATE / HOP
        if not voiced.any():
            self._voice_score = np.maximum(self._voice_score - 0.5, 0.0)
            self._quiet_run = self._quiet_run + HOP
            rearm = self._quiet_run >= p.voice_rearm_s * SAMPLE_RATE
            self._voice_sent &= ~rearm
            self._voice_score[rearm] = 0.0
            return events
        self._voice_score = np.where(
            voiced, np.minimum(self._voice_score + 1.0, 2 * need), np.maximum(self._voice_score - 0.5, 0.0)
        )
        self._quiet_run = np.where(voiced, 0.0, self._quiet_run + HOP)
        rearm = self._quiet_run >= p.voice_rearm_s * SAMPLE_RATE
        self._voice_sent &= ~rearm
        self._voice_score[rearm] = 0.0
        fire = voiced & ~self._voice_sent & (self._voice_score >= need)
        for ch in np.nonzero(fire)[0]:
            conf = min(1.0, 0.5 + 0.5 * float(self._voice_score[ch]) / (2 * need))
            events.append(
                (int(ch), Tone(t=round(now / SAMPLE_RATE, 3), name="voice", confidence=round(conf, 2)))
            )
        self._voice_sent |= fire
        return events

    def _tone_step(self, now, best, best_frac, best_power, events: list) -> np.ndarray:
        """Tone on/off decision, debounce, state changes and due confirmations of one hop; returns "on"."""
        p = self.params
        # Hysteresis: a sounding tone carries on through the troughs of Japan's 16 Hz modulated ringback
        # (lower share and level); a new one must pass the full test. A window that only grazes the tone
        # (power < 30 % of its peak) is off.
        going = self._cand_state == best
        floor = np.where(going, 0.1 * self._peak, 0.0)
        need = np.where(going, p.tone_fraction - 0.25, p.tone_fraction)
        on = (best_frac >= need) & (best_power >= np.maximum(self._min_power, floor))
        cand = np.where(on, best, -1)
        # Debounce: a state counts after 2 frames on / 3 frames off, back-dated to its first frame.
        same = cand == self._cand_state
        self._cand_count = np.where(same, self._cand_count + 1, 1)
        self._cand_since = np.where(same, self._cand_since, now)
        self._cand_state = cand
        settle = np.where(cand >= 0, 2, 3)
        new_state = np.where(self._cand_count >= settle, cand, self._state)
        self._peak = np.where(
            on & going, np.maximum(self._peak, best_power), np.where(on, best_power, self._peak)
        )

        changed = new_state != self._state
        for ch in np.nonzero(changed)[0]:
            events.extend(self._transition(int(ch), float(self._cand_since[ch]), int(new_state[ch])))
        self._state = new_state
        starts = changed & (new_state >= 0)
        self._frac_sum = np.where(starts, 0.0, self._frac_sum) + np.where(
            on & (new_state >= 0), best_frac, 0.0
        )
        self._frac_n = np.where(starts, 0, self._frac_n) + (on & (new_state >= 0))

        fire = self._due <= now
        for ch in np.nonzero(fire)[0]:
            events.extend(self._confirm(int(ch), now))
        self._tone_idle = bool(
            self._state.max() < 0 and self._cand_state.max() < 0 and self._due.min() == np.inf
        )
        return on

    # -- per channel, only on a state change or a due confirmation -------------------------------------
    def _transition(self, ch: int, now: float, new: int) -> list[tuple[int, Tone]]:
        seg = self._segments[ch]
        old = int(self._state[ch])
        dur = (now - self._since[ch]) / SAMPLE_RATE
        self._since[ch] = now
        self._due[ch] = np.inf
        if old >= 0:  # an on segment ended
            seg.history.append([old, dur, None])
            seg.purity.append(float(self._frac_sum[ch] / max(self._frac_n[ch], 1)))
        elif seg.history and seg.history[-1][2] is None:
            seg.history[-1][2] = dur
        if new >= 0 and old >= 0 and seg.history:  # direct change from one tone to another
            seg.history[-1][2] = 0.0
        if new < 0 and old >= 0:
            self._schedule_cadence(ch)
        elif new >= 0:
            if seg.reported is not None and not self._still_matches(seg):
                seg.reported = None
            spec_idx = self._dial_index(new)
            if spec_idx is not None:
                self._due[ch] = now + self._dial_after[new] * SAMPLE_RATE
                self._due_tone[ch] = spec_idx
        return []

    def _dial_index(self, set_idx: int) -> int | None:
        for i, t in enumerate(self.plan.tones):
            if t.on_s is None and self._set_of_tone[i] == set_idx:
                return i
        return None

    def _matches(self, seg: _Segments, i: int) -> float | None:
        """Timing score (0..1) if the history ends with the on/off pattern of tone i, else None."""
        spec = self.plan.tones[i]
        if spec.on_s is None:
            return None
        hist = list(seg.history)
        if len(hist) < spec.cycles:
            return None
        errors = []
        for j, (set_idx, on, off) in enumerate(hist[-spec.cycles :]):
            if set_idx != self._set_of_tone[i]:
                return None
            e_on = abs(on - spec.on_s) / self._tol(spec.on_s)
            if e_on > 1:
                return None
            errors.append(e_on)
            if j < spec.cycles - 1:
                if off is None:
                    return None
                e_off = abs(off - spec.off_s) / self._tol(spec.off_s)
                if e_off > 1:
                    return None
                errors.append(e_off)
        return 1.0 - float(np.mean(errors))

    def _still_matches(self, seg: _Segments) -> bool:
        """The cadence reported last is still going: last on and last off within its tolerance."""
        name = seg.reported
        for i, spec in enumerate(self.plan.tones):
            if spec.name == name and spec.on_s is not None and seg.history:
                set_idx, on, off = seg.history[-1]
                if set_idx != self._set_of_tone[i] or abs(on - spec.on_s) > self._tol(spec.on_s):
                    return False
                return off is None or abs(off - spec.off_s) <= self._tol(spec.off_s)
        return False

    def _schedule_cadence(self, ch: int) -> None:
        seg = self._segments[ch]
        best_i, best_score = None, -1.0
        for i in range(len(self.plan.tones)):
            score = self._matches(seg, i)
            if score is not None and score > best_score:
                best_i, best_score = i, score
        if best_i is None:
            if seg.reported is not None and not self._still_matches(seg):
                seg.reported = None
            return
        spec = self.plan.tones[best_i]
        off_min = spec.off_s - self._tol(spec.off_s)
        self._due[ch] = self._since[ch] + max(off_min, 0.0) * SAMPLE_RATE
        self._due_tone[ch] = best_i

    def _confirm(self, ch: int, now: float) -> list[tuple[int, Tone]]:
        self._due[ch] = np.inf
        i = int(self._due_tone[ch])
        spec = self.plan.tones[i]
        seg = self._segments[ch]
        if spec.on_s is None:
            if int(self._state[ch]) != self._set_of_tone[i]:
                return []
            purity = float(self._frac_sum[ch] / max(self._frac_n[ch], 1))
            timing = 1.0
        else:
            if int(self._state[ch]) != -1:
                return []
            score = self._matches(seg, i)
            if score is None:
                return []
            timing = score
            purity = float(np.mean(list(seg.purity)[-spec.cycles :])) if seg.purity else 0.7
        if seg.reported == spec.name:
            return []
        seg.reported = spec.name
        self._voice_sent[ch] = False
        self._voice_score[ch] = 0.0
        pf = self.params.tone_fraction
        purity_score = float(np.clip((purity - pf) / (1.0 - pf), 0.0, 1.0))
        conf = round(0.5 + 0.25 * timing + 0.25 * purity_score, 2)
        return [(ch, Tone(t=round(now / SAMPLE_RATE, 3), name=spec.name, confidence=conf))]


class ProgressDetector:
    """One channel: ``ProgressDetector("jp").feed(samples) -> [Tone]`` (8 kHz float samples)."""

    def __init__(
        self,
        plan: str | TonePlan = "jp",
        params: ProgressParams | None = None,
        *,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self._bank = ProgressBank(1, plan, params, sample_rate=sample_rate)

    def feed(self, samples: np.ndarray) -> list[Tone]:
        samples = np.asarray(samples, dtype=np.float32).reshape(1, -1)
        return [ev for _, ev in self._bank.feed(samples)]
