"""The exchange side of one analogue line, frame by frame (20 ms at 8 kHz), for device simulators.

A device simulator (USB voice box, V.253 modem) sits on the subscriber side and consumes this API:

* ``set_hook(off_hook)`` when its hook relay moves, ``step(upstream) -> LineFrame`` once per 20 ms with
  the audio it sends to the line; the frame carries the exchange's audio and the line state (ring
  voltage, polarity, loop current).  The consumer's sample clock drives the line, as a real device's
  crystal does, so tests run as fast as the driver reads; ``run()`` clocks it on trio's clock instead
  for consumers without a clock of their own (a pty modem, a demo).
* The exchange: ``incoming_call(Caller(...), script=...)`` rings with the country's cadence and sends
  caller ID (Bell 202 after the first ring, ETSI V.23 or DTMF after a polarity reversal before it, or
  NTT Number Display with its CAR / silent off-hook / V.23 / on-hook handshake), then lets the caller
  speak, press keys and hang up once the line is answered.  ``expect_outgoing(outcome)`` says what a
  call the subscriber dials meets: dial tone, then busy, congestion, ringback without answer, or a far
  end that answers after N ring cycles (optionally with a polarity reversal).
* ``records`` and ``upstream_audio()`` keep what the subscriber side did, for assertions.

The exchange's behaviour is written as generator "programs" that wait on line time (frames), so a
call is reproducible to the sample whatever the host's speed.  Signals come from
``simulators.signals`` and ``simulators.callerid_gen``; nothing here imports ``drivers/`` or ``gateway/``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import trio

from simulators import callerid_gen as cid
from simulators.signals import cadence, dtmf_sequence, level_dbm0, speech_like, white_noise

RATE = 8000
FRAME = 160  # samples per 20 ms frame
FRAME_S = FRAME / RATE
RING_VOLTAGE_VRMS = 75.0  # typical ringing voltage (NTT 75 Vrms 16 Hz; GR-506 86 Vrms max)
LOOP_CURRENT_MA = 25.0
DISCONNECT_S = 0.5  # an on-hook shorter than this is a hook flash, longer is a clear-down
ACTIVE_DBM0 = -40.0  # upstream frames louder than this count as the subscriber sending (digits, voice)

CidStandard = Literal["bell202", "v23_etsi", "v23_ntt", "dtmf", "none"]
CID_STANDARDS = frozenset({"bell202", "v23_etsi", "v23_ntt", "dtmf"})  # those with a signal
Outcome = Literal["answer", "busy", "congestion", "no_answer"]


@dataclass(frozen=True)
class ToneDef:
    freqs: tuple[float, ...]
    on_s: float | None  # None: continuous
    off_s: float = 0.0
    level_dbm0: float = -15.0
    am_hz: float | None = None

    def cycle(self) -> np.ndarray:
        """One cadence period (1 s of a continuous tone: whole cycles of every frequency used here)."""
        period = 1.0 if self.on_s is None else self.on_s + self.off_s
        return cadence(self.freqs, self.on_s, self.off_s, period, self.level_dbm0, am_hz=self.am_hz)


@dataclass(frozen=True)
class CountryPlan:
    name: str
    ring: tuple[float, float]  # normal ringing on/off seconds
    cid: CidStandard  # caller-ID scheme of the country's exchanges
    dialtone: ToneDef
    busy: ToneDef
    ringback: ToneDef
    congestion: ToneDef
    car: tuple[float, float] | None = None  # NTT CAR cadence (Number Display alert), Japan only


# Cadences and tones: telephony.md §3 (NTT CAR 0.5/0.5, IR 1/2) and §6 (spandsp global-tones.xml,
# Asterisk indications.conf, ETSI ETR 187); ring cadences CN 1/4 (BriSDK), US 2/4 (GR-506), ETSI 1/4.
PLANS: dict[str, CountryPlan] = {
    "jp": CountryPlan(
        "jp", (1.0, 2.0), "v23_ntt",
        ToneDef((400.0,), None), ToneDef((400.0,), 0.5, 0.5), ToneDef((400.0,), 1.0, 2.0, am_hz=16.0),
        ToneDef((400.0,), 0.5, 0.5), car=(0.5, 0.5),
    ),
    "cn": CountryPlan(
        "cn", (1.0, 4.0), "bell202",
        ToneDef((450.0,), None), ToneDef((450.0,), 0.35, 0.35), ToneDef((450.0,), 1.0, 4.0),
        ToneDef((450.0,), 0.7, 0.7),
    ),
    "us": CountryPlan(
        "us", (2.0, 4.0), "bell202",
        ToneDef((350.0, 440.0), None, level_dbm0=-13.0), ToneDef((480.0, 620.0), 0.5, 0.5, -24.0),
        ToneDef((440.0, 480.0), 2.0, 4.0, -19.0), ToneDef((480.0, 620.0), 0.25, 0.25, -24.0),
    ),
    "etsi": CountryPlan(
        "etsi", (1.0, 4.0), "v23_etsi",
        ToneDef((425.0,), None), ToneDef((425.0,), 0.5, 0.5), ToneDef((425.0,), 1.0, 4.0),
        ToneDef((425.0,), 0.25, 0.25),
    ),
}


# ----------------------------------------------------------------------------------- scripts
@dataclass(frozen=True)
class Say:
    """The far end speaks: ``audio`` (8 kHz float) or ``seconds`` of synthetic speech."""

    seconds: float = 1.0
    audio: np.ndarray | None = None


@dataclass(frozen=True)
class Keys:
    digits: str
    on_ms: float = 80.0
    off_ms: float = 80.0


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class HangUp:
    pass


Action = Say | Keys | Pause | HangUp


@dataclass(frozen=True)
class Caller:
    number: str | None = None
    name: str | None = None
    presentation: Literal["allowed", "private", "unavailable"] = "allowed"
    cid: CidStandard | None = None  # None: the country's scheme
    datetime: str = "11271405"  # MMDDHHMM
    # Extra silence before an FSK caller-ID burst. The simulated exchange works in whole 20 ms frames,
    # so without it every burst starts on a frame boundary; a real exchange's timing has nothing to do
    # with the box's frames (benchmarks spread this over a frame to measure the box's buffering).
    cid_delay_ms: float = 0.0


# ------------------------------------------------------------------------------------- state
@dataclass(frozen=True, slots=True)
class LineState:
    off_hook: bool  # the subscriber side holds the loop closed
    ring_voltage: float  # Vrms, 0 when not ringing
    polarity: int  # +1 idle polarity, -1 reversed
    loop_current_ma: float  # 0 when on hook or the exchange opened the loop

    @property
    def ringing(self) -> bool:
        return self.ring_voltage > 0.0

    @property
    def loop_current(self) -> bool:
        return self.loop_current_ma > 0.0


@dataclass(frozen=True, slots=True)
class LineFrame:
    t: float  # line time at the start of the frame, seconds
    audio: np.ndarray  # FRAME samples from the exchange, float64, full scale 1.0
    state: LineState
    upstream: np.ndarray  # the FRAME samples the subscriber side sent during this frame


@dataclass(frozen=True, slots=True)
class LineRecord:
    t: float
    kind: str  # hook, flash, ring, car, cid, answered, missed, far_end_hangup, cpe_hangup, outgoing ...
    detail: str = ""


@dataclass
class _Wait:
    frames: int
    until: Callable[[], bool] | None = None


Program = Generator[_Wait, bool | None, None]


@dataclass
class _Outgoing:
    outcome: Outcome = "answer"
    answer_after_rings: int = 2
    script: tuple[Action, ...] = ()
    polarity_reversal: bool | None = None


def _frames(seconds: float) -> int:
    return max(0, int(round(seconds / FRAME_S)))


class PstnLine:
    """One analogue line as the exchange drives it. Thread-safe: device simulators step it from the
    worker threads their drivers use, tests configure it from the trio thread."""

    def __init__(
        self,
        country: str = "jp",
        *,
        polarity_reversal_on_answer: bool = False,
        hangup_signal: Sequence[Literal["busy", "polarity", "loop_break"]] = ("busy",),
        noise_dbm0: float | None = None,
        seed: int = 0,
    ) -> None:
        if country not in PLANS:
            raise ValueError(f"unknown country plan {country!r}; expected one of {', '.join(PLANS)}")
        self.plan = PLANS[country]
        self.polarity_reversal_on_answer = polarity_reversal_on_answer
        self.hangup_signal = tuple(hangup_signal)
        self.noise_dbm0 = noise_dbm0
        self._rng = np.random.default_rng(seed)
        self._lock = threading.RLock()
        self._cid_ready: dict[tuple[Caller, str], tuple[np.ndarray, float | None]] = {}  # synthesised ahead
        self._frame = 0
        self._off_hook = False
        self._on_hook_since = 0
        self._ringing = False
        self._polarity = 1
        self._loop_open = False
        self._queue: deque[np.ndarray] = deque()
        self._tone: np.ndarray | None = None
        self._tone_pos = 0
        self._program: Program | None = None
        self._wait: _Wait | None = None
        self._wake = 0
        self._cpe_owns_call = False  # the subscriber's on-hook clears the call
        self._last_active = -(10**9)
        self._upstream_buffer = np.zeros(0)
        self._read_buffer = np.zeros(0)
        self._upstream: list[np.ndarray] = []
        self._pending: list[Program] = []
        self._outgoing = _Outgoing()
        self.records: list[LineRecord] = []
        self.cid_data_ends: list[LineRecord] = []  # FSK caller ID: line time of each message's last bit
        self._cid_burst_s = 0.0  # length of the last caller-ID signal played (Bell 202 timing)

    # ---------------------------------------------------------------------------- subscriber side
    @property
    def t(self) -> float:
        return self._frame * FRAME_S

    @property
    def state(self) -> LineState:
        with self._lock:
            return self._state()

    def _state(self) -> LineState:
        fed = self._off_hook and not self._loop_open
        return LineState(
            self._off_hook,
            RING_VOLTAGE_VRMS if self._ringing and not self._off_hook else 0.0,
            self._polarity,
            LOOP_CURRENT_MA if fed else 0.0,
        )

    @property
    def busy(self) -> bool:
        """True while a call (or a caller-ID handshake) is in progress."""
        return self._program is not None

    def set_hook(self, off_hook: bool) -> None:
        with self._lock:
            if off_hook == self._off_hook:
                return
            self._off_hook = off_hook
            if off_hook:
                gone = self._frame - self._on_hook_since
                if self._cpe_owns_call and gone < _frames(DISCONNECT_S):
                    self._record("flash", f"{round(gone * FRAME_S * 1000)} ms")
                else:
                    self._record("hook", "off")
                if self._program is None:
                    self._start(self._outgoing_call())
            else:
                self._on_hook_since = self._frame
                self._record("hook", "on")

    def write(self, samples: np.ndarray) -> None:
        """Queue audio towards the exchange, for consumers that call ``step()`` without audio."""
        with self._lock:
            self._upstream_buffer = np.concatenate((self._upstream_buffer, np.asarray(samples, float)))

    def step(self, upstream: np.ndarray | None = None) -> LineFrame:
        """Advance 20 ms: take the subscriber's audio, run the exchange, return its audio and state."""
        with self._lock:
            if upstream is None:
                upstream, self._upstream_buffer = self._upstream_buffer[:FRAME], self._upstream_buffer[FRAME:]
            up = np.zeros(FRAME)
            src = np.asarray(upstream, dtype=float).reshape(-1)[:FRAME]
            up[: src.size] = src
            if self._off_hook:
                self._upstream.append(up)
                if level_dbm0(up) > ACTIVE_DBM0:
                    self._last_active = self._frame
            if (
                self._cpe_owns_call
                and not self._off_hook
                and self._frame - self._on_hook_since >= _frames(DISCONNECT_S)
            ):
                self._end_program("cpe_hangup")
            self._run_programs()
            frame = LineFrame(self.t, self._mix(), self._state(), up)
            self._frame += 1
            return frame

    def read(self, n: int) -> np.ndarray:
        """``n`` samples from the exchange, stepping whole frames as needed: the shape of a voice modem
        simulator's ``set_audio_source(fn)`` hook (state follows in ``state``)."""
        with self._lock:
            while self._read_buffer.size < n:
                self._read_buffer = np.concatenate((self._read_buffer, self.step().audio))
            out, self._read_buffer = self._read_buffer[:n], self._read_buffer[n:]
            return out

    def upstream_audio(self) -> np.ndarray:
        """Everything the subscriber side sent while off hook (for DTMF/voice assertions)."""
        with self._lock:
            return np.concatenate(self._upstream) if self._upstream else np.zeros(0)

    def kinds(self, kind: str) -> list[LineRecord]:
        return [r for r in self.records if r.kind == kind]

    async def run(self, frames: trio.MemorySendChannel, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Clock the line on trio's clock: one ``step()`` every 20 ms, each frame sent to ``frames``
        (upstream audio comes from ``write()``). Runs until cancelled or the receiver closes."""
        deadline = trio.current_time()
        task_status.started()
        async with frames:
            while True:
                deadline += FRAME_S
                await trio.sleep_until(deadline)
                try:
                    await frames.send(self.step())
                except trio.BrokenResourceError:
                    return

    # ---------------------------------------------------------------------------- exchange side
    def incoming_call(self, caller: Caller, *, script: Sequence[Action] = (), max_rings: int = 8) -> None:
        """Start ringing now (queued behind a call in progress). ``script`` runs once it is answered.
        The caller-ID signal is synthesised here, by the caller's thread, not when the line is stepped (on
        a simulated box's read path, which a benchmark charges to the gateway)."""
        standard = caller.cid or self.plan.cid
        signal = self._cid_signal(caller, standard) if standard in CID_STANDARDS else None
        with self._lock:
            if signal is not None:
                self._cid_ready[(caller, standard)] = signal
            self._start(self._incoming_call(caller, tuple(script), max_rings))

    def expect_outgoing(
        self,
        outcome: Outcome = "answer",
        *,
        answer_after_rings: int = 2,
        script: Sequence[Action] = (),
        polarity_reversal: bool | None = None,
    ) -> None:
        """What the next call the subscriber dials meets (after dial tone and digits)."""
        with self._lock:
            self._outgoing = _Outgoing(outcome, answer_after_rings, tuple(script), polarity_reversal)

    # ---------------------------------------------------------------------------- internals
    def _record(self, kind: str, detail: str = "") -> None:
        self.records.append(LineRecord(round(self.t, 3), kind, detail))

    def _start(self, program: Program) -> None:
        if self._program is None:
            self._program, self._wait = program, None
        else:
            self._pending.append(program)

    def _end_program(self, why: str) -> None:
        if self._program is not None:
            self._program.close()
        self._record(why)
        self._idle()

    def _idle(self) -> None:
        self._program, self._wait = None, None
        self._ringing = self._loop_open = self._cpe_owns_call = False
        self._polarity = 1
        self._tone = None
        self._queue.clear()
        if self._pending:
            self._program = self._pending.pop(0)

    def _run_programs(self) -> None:
        for _ in range(1000):  # a program that never waits is a bug: stop rather than hang the device
            if self._program is None:
                return
            w = self._wait
            if w is None:
                result = None
            elif w.until is not None and w.until():
                result = True
            elif self._frame >= self._wake:
                result = False
            else:
                return
            try:
                self._wait = self._program.send(result)
            except StopIteration:
                self._idle()
                continue
            self._wake = self._frame + self._wait.frames
        raise RuntimeError("line program did not wait for line time")

    def _mix(self) -> np.ndarray:
        out = np.zeros(FRAME)
        filled = 0
        while filled < FRAME and self._queue:
            head = self._queue[0]
            take = min(FRAME - filled, head.size)
            out[filled : filled + take] = head[:take]
            filled += take
            if take == head.size:
                self._queue.popleft()
            else:
                self._queue[0] = head[take:]
        if self._tone is not None and self._off_hook:
            idx = (self._tone_pos + np.arange(FRAME)) % self._tone.size
            out += self._tone[idx]
            self._tone_pos = (self._tone_pos + FRAME) % self._tone.size
        if self.noise_dbm0 is not None:
            out += white_noise(FRAME, self.noise_dbm0, self._rng)
        return out

    def _set_tone(self, tone: ToneDef | None) -> None:
        self._tone = None if tone is None else tone.cycle()
        self._tone_pos = 0

    # -- program building blocks (each ``yield`` waits on line time)
    def _sleep(self, seconds: float, until: Callable[[], bool] | None = None) -> Generator[_Wait, bool, bool]:
        return (yield _Wait(_frames(seconds), until))

    def _play(
        self, audio: np.ndarray, until: Callable[[], bool] | None = None
    ) -> Generator[_Wait, bool, bool]:
        """Queue ``audio`` and wait until it has been sent (or ``until`` holds)."""
        self._queue.append(np.asarray(audio, dtype=float))
        yield _Wait(10**9, lambda: not self._queue or (until is not None and until()))
        return until is not None and until()

    def _is_off_hook(self) -> bool:
        return self._off_hook

    def _is_on_hook(self) -> bool:
        return not self._off_hook

    # -- caller ID signals (GR-30-CORE / EN 300 659-3 messages, NTT frames, EN 300 659-1 Annex B DTMF)
    def _cid_signal(self, caller: Caller, standard: str) -> tuple[np.ndarray, float | None]:
        """The caller-ID signal, and for FSK the time from its start to the message's last bit (its last
        byte's first stop bit)."""
        reason = {"private": "P", "unavailable": "O"}.get(caller.presentation)
        number = None if reason else caller.number
        if standard == "dtmf":
            digits = cid.dtmf_callerid_digits(number, reason=reason)
            return cid.dtmf_waveform(digits, on_ms=70, off_ms=70), None
        if standard == "v23_ntt":
            msg, fsk = cid.ntt_callerid(number, reason_absent=reason), "ntt"
        else:
            msg = cid.mdmf_callerid(
                datetime_mmddhhmm=caller.datetime, number=number, name=caller.name, reason_absent=reason
            )
            fsk = "bell202" if standard == "bell202" else "etsi"
        lead_ms = 100.0 + caller.cid_delay_ms
        data_end_s = cid.burst_message_end(msg, standard=fsk, lead_silence_ms=lead_ms)
        return cid.callerid_burst(msg, standard=fsk, lead_silence_ms=lead_ms), data_end_s

    def _play_cid(self, caller: Caller, standard: str, until: Callable[[], bool] | None = None):
        """Play a caller-ID signal; for FSK, note in ``cid_data_ends`` when its last data bit is on the line
        (exact line time, for latency measurements; noted when queued, whether or not it is all sent)."""
        ready = self._cid_ready.pop((caller, standard), None)
        signal, data_end_s = ready if ready is not None else self._cid_signal(caller, standard)
        self._cid_burst_s = signal.size / RATE
        if data_end_s is not None:  # queued now: mixed from this frame's first sample
            end = round(self.t + data_end_s, 6)
            self.cid_data_ends.append(LineRecord(end, "cid_data_end", standard))
        return (yield from self._play(signal, until))

    def _ntt_number_display(self, caller: Caller) -> Generator[_Wait, bool, str]:
        """NTT: CAR (0.5/0.5 s ringing) until the terminal closes the loop (primary response, ≤ 6 s),
        then V.23 caller ID, then wait for the reception-complete on-hook (telephony.md §3)."""
        on, off = self.plan.car or (0.5, 0.5)
        deadline = self._frame + _frames(6.0)
        responded = False
        while self._frame < deadline and not responded:
            self._ringing = True
            self._record("car")
            responded = yield from self._sleep(on, self._is_off_hook)
            self._ringing = False
            if not responded:
                responded = yield from self._sleep(off, self._is_off_hook)
        if not responded:
            self._record("cid", "no primary response: ringing without caller ID")
            return "no_response"
        yield from self._sleep(0.2)  # the terminal ignores the first 100 ms after closing the loop
        yield from self._play_cid(caller, "v23_ntt", self._is_on_hook)
        self._record("cid", "v23_ntt")
        released = yield from self._sleep(5.0, self._is_on_hook)
        if not released:
            self._record("cid", "terminal stayed off hook after caller ID")
            return "stayed_off_hook"
        yield from self._sleep(0.4)  # the terminal waits ≥ 0.3 s after release before the IR
        return "done"

    def _incoming_call(self, caller: Caller, script: tuple[Action, ...], max_rings: int) -> Program:
        standard = caller.cid or self.plan.cid
        self._record("incoming", f"{caller.number or caller.presentation} via {standard}")
        if standard == "v23_ntt":
            if (yield from self._ntt_number_display(caller)) == "stayed_off_hook":
                self._record("answered", "during the caller-ID handshake")
                return (yield from self._connected(script))
        elif standard in ("v23_etsi", "dtmf"):
            # EN 300 659-1: line reversal wakes the receiver, data follows before the first ring.
            self._polarity = -1
            yield from self._sleep(0.3)
            yield from self._play_cid(caller, standard)
            self._record("cid", standard)
            yield from self._sleep(0.5)
        on, off = self.plan.ring
        for ring in range(1, max_rings + 1):
            self._ringing = True
            self._record("ring", str(ring))
            answered = yield from self._sleep(on, self._is_off_hook)
            self._ringing = False
            if answered:
                break
            pause = off
            if ring == 1 and standard == "bell202":
                # GR-30-CORE: data ≥ 500 ms after the first ring, ending ≥ 200 ms before the second.
                answered = yield from self._sleep(0.5, self._is_off_hook)
                if not answered:
                    answered = yield from self._play_cid(caller, standard, self._is_off_hook)
                    self._record("cid", standard)
                    pause = max(0.0, off - 0.5 - self._cid_burst_s)
            if not answered:
                answered = yield from self._sleep(pause, self._is_off_hook)
            if answered:
                break
        if not answered:
            self._record("missed", f"after {max_rings} rings")
            return
        self._record("answered")
        yield from self._connected(script)

    def _connected(self, script: tuple[Action, ...]) -> Program:
        self._cpe_owns_call = True
        self._queue.clear()
        for action in script:
            if isinstance(action, Say):
                audio = action.audio if action.audio is not None else speech_like(action.seconds, self._rng)
                yield from self._play(audio)
            elif isinstance(action, Keys):
                yield from self._play(dtmf_sequence(action.digits, action.on_ms, action.off_ms))
            elif isinstance(action, Pause):
                yield from self._sleep(action.seconds)
            elif isinstance(action, HangUp):
                yield from self._far_end_cleared()
                return
        yield _Wait(10**9)  # the far end stays on the line until the subscriber hangs up

    def _far_end_cleared(self) -> Program:
        self._record("far_end_hangup", ",".join(self.hangup_signal))
        if "polarity" in self.hangup_signal:
            self._polarity = -self._polarity
        if "loop_break" in self.hangup_signal:
            self._loop_open = True
            yield from self._sleep(0.6)
            self._loop_open = False
        if "busy" in self.hangup_signal:
            self._set_tone(self.plan.busy)
        yield _Wait(10**9)

    def _outgoing_call(self) -> Program:
        self._cpe_owns_call = True
        plan = self._outgoing
        self._set_tone(self.plan.dialtone)
        if not (yield from self._sleep(10.0, lambda: self._last_active >= self._frame - 1)):
            self._record("outgoing", "no digits: permanent signal")
            self._set_tone(self.plan.busy)
            yield _Wait(10**9)
        self._set_tone(None)
        yield from self._sleep(30.0, lambda: self._frame - self._last_active >= _frames(1.5))
        self._record("outgoing", plan.outcome)
        if plan.outcome in ("busy", "congestion"):
            self._set_tone(self.plan.busy if plan.outcome == "busy" else self.plan.congestion)
            yield _Wait(10**9)
        self._set_tone(self.plan.ringback)
        if plan.outcome == "no_answer":
            yield _Wait(10**9)
        on, off = self.plan.ringback.on_s or 1.0, self.plan.ringback.off_s
        yield from self._sleep(plan.answer_after_rings * (on + off) - off)
        self._set_tone(None)
        reverse = plan.polarity_reversal
        if reverse is None:
            reverse = self.polarity_reversal_on_answer
        if reverse:
            self._polarity = -1
        self._record("answered", "far end")
        yield from self._connected(plan.script)


__all__ = [
    "FRAME",
    "FRAME_S",
    "PLANS",
    "RATE",
    "Caller",
    "CountryPlan",
    "HangUp",
    "Keys",
    "LineFrame",
    "LineRecord",
    "LineState",
    "Pause",
    "PstnLine",
    "Say",
]
