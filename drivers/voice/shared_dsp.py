"""One batched line DSP for every USB voice box of a process: ``LineAnalyzerBank`` calls per 20 ms tick
for groups of lines instead of one ``LineAnalyzer.feed`` per line (issue 5: 32 lines on 2 cores).

Why cohorts, not one bank with subset feeding
=============================================
The detector banks (DTMF blocks of 102 samples, 20 ms progress hops, the FSK gate and receivers) keep one
sample clock for all their channels, so a bank channel only gives the events of a per-line
``LineAnalyzer`` when it is fed in lockstep with the others.  A line therefore gets a channel in a
*cohort*: a bank fed one batch whenever every live member has audio queued.  A channel can be reset at the
bank's clock (``LineAnalyzerBank.reset_channels``) once nothing is in progress on it, so a line can take a
free channel of a running bank: its detectors start afresh, its events keep the line's own time
(``SharedLine.offset``: line sample = bank sample + offset).

Phase pairing and phase groups
==============================
Lockstep costs latency: a cohort's batch runs when its *last* member's frame has arrived, and boxes deliver
their 20 ms frames at phases spread over the frame period, so a line whose box delivers early waits for the
others.  Each line's arrival phase is estimated from its own submissions (``_epoch``: the earliest
``arrival - samples/rate`` seen, creeping later by ``CREEP`` so that a box that runs slow is followed; host
lag only ever makes arrivals later, so the minimum is the box's clock), and lines are paired frame to
frame so that the frames analysed together are the ones that arrive together, the batch waiting at most
for the latest phase: a member may be given a few frames of silence before its audio (*lead in*) or have
frames discarded (*skip*) when it is seated.

Cohorts can also be *phase groups* (``width_s``: members' frames arrive within that of each other, so the
lockstep wait is at most ``width_s``).  Measured on the 2-core bench host (issue 5, docs/performance.md):
groups of 5 ms cut the lockstep wait of a 32-line caller-ID burst from 13 ms to 5.5 ms (median), but the
burst's events then reach the store in one commit per group, each queued behind the previous one, and a
bank's fixed cost per tick is paid per group: the screen pop got slower (p99 59-143 ms with two or four
groups against 50-69 ms with one) and CPU rose by 5-10 points.  So the default is one group per frame
period (``width_s = frame_s``): one bank, with the pairing above.

A cohort is formed from the lines without a channel: from the first frame of such a line, for at most
``form_s`` (or until every registered line without a channel is streaming, has been seen for
``ESTIMATE_FRAMES`` frames and has caught up with its box, i.e. its arrivals have settled at the frame
rate, see ``SharedLine._ready_to_place``) their audio is counted but not analysed (warm-up), then they are
clustered by
phase (on the circle of one frame period, cut at the largest gap, greedily into arcs no wider than
``width_s``) into banks sized with spare channels.  A line that comes later (hot-plug, eviction) takes a
quiet free channel of a running cohort that fits its phase (lossless only, unless the line is idle), or
forms a cohort of its own -- as a line reading a backlog after a stall does, to catch up there; once idle
it is moved into a running cohort (a bank saved).

Aligned boxes (FRAME_PHASE)
===========================
Pairing cannot remove the wait itself: with boxes delivering at phases spread over the 20 ms, the
earliest line's frame waits for the latest one's on every batch (10 ms on average, caller ID included).
A box of the open profile can move its frame boundaries (``FRAME_PHASE``, docs/usb-box-protocol.md: one
longer or shorter frame, no sample lost). The first line whose phase is known (``SHIFT_ESTIMATE_FRAMES``
frames, arrivals settled) sets the common phase; every later line's box is asked, through its driver
(``SharedLine.take_phase_shift``, sent before its next read), to move onto it before the line is first
placed, so a cohort's frames all come in together and a batch runs as soon as they have. Every
``CHECK_BATCHES`` batches an idle member (``movable``, quiet channel) more than ``REALIGN_S`` off the
cohort's median phase (a box placed before it could be asked, e.g. behind at startup, or one that
drifts) is asked again and, once its shifted frame is in, seated anew. The common phase follows the
cohort's median, so a bias shared by every estimate (the host's read latency) moves nobody. ``REALIGN_S``
(2.5 ms) is above the estimates' own noise: a line's reads can come back 1-2 ms late for seconds (the
host's load, the order of 32 reads), which its estimate follows (``CREEP``); with 1 ms, 32 boxes on one
phase were asked to shift back and forth by 1-2 ms four times a second (measured, issue 5). Boxes of
profiles without the command keep their phases (``can_shift_phase`` False) and the pairing above.

Drift: boxes with their own crystals drift apart (±50 ppm is 1 ms every 20 s).  A cohort runs at the pace
of its slowest member, so the surplus of the faster boxes queues in the boxes (a reader waits for its
frame's events before it reads again).  Every ``CHECK_BATCHES`` batches a cohort whose spread exceeds
``2 * width_s`` re-seats the member farthest from the others (in the cohort that fits it, possibly the same
one): a slow line gets a frame of lead-in silence (the cohort catches up a frame), a fast one has a frame
skipped, so the queues drain.  Only an idle line is moved (``SharedLine.movable``: the driver says on hook,
not ringing for a while, no handshake) and only from a quiet channel, so nothing in progress is lost.

Stalls: within a cohort a line that is late holds the batch back; a line late by more than ``stall_s`` is
*evicted*: its channel is retired (fed silence, events dropped) and its next audio places it afresh (a
digit sounding then may be lost).

Known limits
============
A line in a call is never moved: in a call of more than about half an hour a box 50 ppm faster than its
cohort's slowest can overflow its buffer (100 ms) and lose audio (the driver reports the gap).  The
simulated boxes share one clock, so only the unit tests (which give lines their own clocks) show drift.

No task of its own
==================
There is no background task to own: the reader task whose frame completes a batch runs the bank
(synchronously, ~0.4 ms for 32 lines), and a reader waiting for its frame's events runs the pending
formation or eviction itself when its deadline (a cancel scope) expires.  Every waiter has its own
deadline, so no batch depends on one particular task staying alive; a cancelled reader's line is closed by
its owner (``SharedLine.close``), which retires its channel.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import trio

from drivers.dsp.pipeline import Event, LineAnalyzerBank

__all__ = ["Analysis", "SharedLine", "SharedLineDsp"]

CREEP = 0.001  # s per s: how fast a line's phase estimate may move later (crystals drift 50 us/s)
WAITED_S = 0.002  # a read that blocked this long shows the box's timing (a buffered frame returns sooner)
ESTIMATE_FRAMES = 2  # frames of a line seen before its phase is trusted enough to place it
MIN_SHIFT_S = 0.0005  # a box off the common phase by less than this is not asked to move
REALIGN_S = 0.0025  # an idle placed line this far off the common phase is moved back (beyond estimate noise)
SHIFT_ESTIMATE_FRAMES = 10  # frames of a line seen before its box is asked to move (its phase settles)
SHIFT_WAIT_FRAMES = 10  # frames after a phase shift was asked for, before the line is placed without it
JITTER_S = 0.005  # a box may deliver this much later than its frame clock (USB scheduling)
BACKLOG_FRAMES = 8  # more than a box buffers (100 ms): reads that never wait are an unpaced box's
CHECK_BATCHES = 50  # a cohort checks its spread once a second (20 ms frames)


def _centred(delta: float, period: float) -> float:
    """``delta`` modulo ``period``, in (-period/2, period/2]: how far apart two phases are on the circle."""
    delta %= period
    return delta - period if delta > period / 2 else delta


@dataclass(eq=False)
class Analysis:
    """A submitted frame (``SharedLine.submit``): its events once its batch has run."""

    samples: np.ndarray
    at: float  # trio time it was queued
    used: int = 0
    events: list[Event] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False)
class _Cohort:
    key: tuple
    bank: LineAnalyzerBank
    members: list[SharedLine | None]  # channel -> line; None: free (retired channels are fed silence)
    clock: int = 0  # samples fed to the bank so far
    batches: int = 0
    waiting_for: SharedLine | None = None  # a member that had nothing queued at the last look

    def live(self) -> list[tuple[int, SharedLine]]:
        return [(ch, m) for ch, m in enumerate(self.members) if m is not None]

    def epochs(self) -> list[float]:
        """Each live member's *bank epoch*: when its audio of bank sample 0 arrived (or would have)."""
        return [m._bank_epoch for _, m in self.live()]


@dataclass(eq=False)
class _Forming:
    key: tuple
    lines: list[SharedLine]
    deadline: float


class SharedLine:
    """One line's handle on the shared DSP: ``await analyse(samples) -> [event]`` (sorted by ``t``, on the
    line's own sample clock, as ``LineAnalyzer.feed`` returns them)."""

    def __init__(self, dsp: SharedLineDsp, key: tuple, sample_rate: int) -> None:
        self._dsp = dsp
        self.key = key
        self.sample_rate = sample_rate
        self._queue: deque[Analysis] = deque()
        self._pending = 0  # samples queued, not yet analysed
        self._last: Analysis | None = None  # where the last batch's samples ended
        self._cohort: _Cohort | None = None
        self._channel = -1
        self._analysed = 0  # samples of this line consumed so far (analysed, warm-up or skipped)
        self._offset = 0  # line sample = bank sample + offset (for the current channel)
        self._lead_in = 0  # samples of silence the channel gets before this line's audio
        self._skip = 0  # samples of this line to discard before its channel's first sample
        self._received = 0  # samples handed in so far
        self._epoch = math.inf  # trio time at which the line's sample 0 arrived (estimate, see module doc)
        self._crept_at = 0.0  # when the estimate was last allowed to creep
        self._seen = 0  # submissions so far
        self._behind = 0  # consecutive arrivals faster than the box's frame rate: reading a backlog
        self._last_e = math.inf  # the epoch shown by the last arrival
        self._was_placed = False  # it has had a channel
        # Frame phase (see "Aligned boxes" in the module docstring): set by the driver when its box can move
        # its frame boundaries; the shift asked for, and whether the line waits for it to show.
        self.can_shift_phase = False
        self._shift_asked: int | None = None  # None: not decided yet; 0: none needed (or given up)
        self._shift_sent = False
        self._shift_wait = 0  # frames seen since the shift was sent
        self._reseat = False  # its box moved while it had a channel: its pairing is stale
        # Where the current channel started (bank clock, first line sample fed, silence before it).
        self._seat_clock = self._seat_start = self._seat_lead_in = 0
        self.movable = False  # set by the driver: idle line (on hook, not ringing), may change cohort
        self.closed = False

    async def analyse(self, samples: np.ndarray, *, read_started: float | None = None) -> list[Event]:
        """``read_started``: when the read that returned ``samples`` was issued (trio time). A read that
        blocked shows when the box delivered; one that returned at once (the frame was waiting in the box,
        the reader was late) or an unknown one only bounds it (see ``_observe``)."""
        return await self.events_of(self.submit(samples, read_started=read_started))

    def submit(self, samples: np.ndarray, *, read_started: float | None = None) -> Analysis:
        """Queue ``samples`` for analysis at once (see ``analyse``); ``await events_of(...)`` for the events
        (submissions of one line are analysed in order, so a reader may submit more before awaiting)."""
        if self.closed:
            raise RuntimeError("this line has left the shared DSP")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        now = trio.current_time()
        sub = Analysis(x, now)
        if x.size == 0:
            sub.done.set()
            return sub
        self._observe(now, x.size, read_started)
        self._queue.append(sub)
        self._pending += x.size
        self._dsp._submitted(self)
        return sub

    async def events_of(self, sub: Analysis) -> list[Event]:
        """The events of a submission (sorted by ``t``, on the line's own sample clock), once its batch
        has run."""
        if sub.done.is_set():
            # Its batch ran already: when this frame completed its cohort's batch, which woke the cohort's
            # other readers: yield once so that every line's events of the batch go on together (one store
            # commit, not this line's alone followed by the others').
            await trio.lowlevel.checkpoint()
        while not sub.done.is_set():
            with trio.move_on_after(max(0.0, self._dsp._deadline_of(self) - trio.current_time())):
                await sub.done.wait()
            if not sub.done.is_set():
                self._dsp._expired(self)
        return sorted(sub.events, key=lambda e: e.t)

    def close(self) -> None:
        """The line leaves (its box is gone or its monitor is replaced): retire its channel."""
        if self.closed:
            return
        self.closed = True
        self._dsp._leave(self)

    @property
    def offset(self) -> int:
        """Line sample index of the current channel's bank sample 0 (events are shifted by it)."""
        return self._offset

    # -- phase
    def _observe(self, now: float, size: int, read_started: float | None) -> None:
        """Every arrival bounds the epoch from above (audio never arrives before the box captured it).
        Only an arrival the reader waited for is the box's own timing: then the estimate may also move
        later (by up to ``CREEP``), following a box that runs slow. A late reader's arrivals must not move
        it (a line read at its cohort's pace would otherwise look as slow as the cohort's slowest box).
        A read that took longer than the frame's own duration did not wait for the box all that time: the
        host was busy (a stall), and the frame was most likely waiting; it counts as a read at once."""
        self._received += size
        e = now - self._received / self.sample_rate
        took = None if read_started is None else now - read_started
        waited = took is not None and WAITED_S <= took <= size / self.sample_rate + JITTER_S
        if self._seen == 0:
            self._epoch = e
        elif waited:
            self._epoch = min(e, self._epoch + CREEP * max(0.0, now - self._crept_at))
        else:
            self._epoch = min(e, self._epoch)
        if waited or self._seen == 0:
            self._crept_at = now
        self._seen += 1
        # Arrivals at the box's frame rate (the same epoch as the last one's) are live; arrivals closer
        # together are a backlog being read (an unplaced line's reads are not held back).
        steady = abs(e - self._last_e) <= JITTER_S
        self._behind = 0 if steady else self._behind + 1
        self._last_e = e
        if self._shift_sent and self._shift_asked:
            self._shift_wait += 1
            if size == self._dsp._frame(self.key) + self._shift_asked or self._shift_wait > SHIFT_WAIT_FRAMES:
                self._shift_asked = 0  # the box moved (its longer or shorter frame is in), or it never will
                self._reseat = self._cohort is not None  # placed: pair it anew (SharedLineDsp._submitted)

    def take_phase_shift(self) -> int:
        """For the driver, after each frame: samples by which its box should move its frame boundaries
        (``FramePhase``), once; 0 for nothing to do."""
        if self._shift_asked and not self._shift_sent:
            self._shift_sent = True
            return self._shift_asked
        return 0

    def _ready_to_place(self) -> bool:
        """Its phase can be trusted: seen for a few frames, and not reading a backlog.  A reader behind its
        box (a daemon busy starting up) reads frames that waited there, so their arrivals are late; paired
        on them, the line would be analysed that much late and, its reads gated by its cohort's batches,
        stay behind for good.  While it is unplaced its reads are not held back, so it catches up within a
        few reads (a box buffers less than ``BACKLOG_FRAMES``), and its arrivals settle at the frame rate.
        How long a read took does not tell: reading a waiting frame takes milliseconds when the process is
        busy.  A line whose arrivals never settle is a box that is not paced in real time (a test's
        simulator, clocked by the host's reads): it is placed after ``BACKLOG_FRAMES`` reads.
        Only a line's first placement waits so (its audio before it is warm-up): one that had a channel
        and lost it (evicted after a stall) is placed at once and catches up in a cohort of its own,
        losing nothing."""
        if self._seen < ESTIMATE_FRAMES:
            return False
        if self._was_placed:
            return True
        if 0 < self._behind < BACKLOG_FRAMES:
            return False
        if self._shift_asked is None:
            if self.can_shift_phase and not self._behind and self._seen < SHIFT_ESTIMATE_FRAMES:
                return False  # a few more frames for a good phase estimate first
            self._dsp._decide_shift(self)
        return not self._shift_asked

    @property
    def _boundary(self) -> float:
        """When its last frame was complete in the box (estimate, trio time): its frames' phase."""
        return self._epoch + self._received / self.sample_rate

    def _next_arrival(self, frame: int) -> float:
        """When the frame after the audio consumed and queued so far is expected (trio time)."""
        return self._epoch + (self._analysed + self._pending + frame) / self.sample_rate

    @property
    def _bank_epoch(self) -> float:
        return self._epoch + self._offset / self.sample_rate

    # -- used by SharedLineDsp
    @property
    def _since(self) -> float:
        """When the oldest audio still waiting for analysis arrived (inf: none waits)."""
        return self._queue[0].at if self._queue else math.inf

    @property
    def _available(self) -> int:
        return self._lead_in + self._pending

    def _take(self, n: int, out: np.ndarray) -> None:
        """The channel's next ``n`` samples into ``out`` (zeros): lead-in silence first, then queued audio."""
        silent = min(n, self._lead_in)
        self._lead_in -= silent
        self._advance(n - silent, out[silent:])

    def _consume(self, n: int) -> None:
        """Discard ``n`` queued samples unanalysed (warm-up, skip): their submissions complete empty."""
        self._advance(n)
        self._release()

    def _advance(self, n: int, out: np.ndarray | None = None) -> None:
        """Move past ``n`` queued samples (copied into ``out`` when given)."""
        done = 0
        for sub in self._queue:
            if done == n:
                break
            k = min(n - done, sub.samples.size - sub.used)
            if k == 0:
                continue
            if out is not None:
                out[done : done + k] = sub.samples[sub.used : sub.used + k]
            sub.used += k
            done += k
            self._last = sub
        self._pending -= done
        self._analysed += done

    def _deliver(self, events: list[Event]) -> None:
        """Events of the last batch go with the submission the batch ended in (as LineAnalyzer.feed
        returns what a call's samples completed); finished submissions are released in order."""
        if events and self._last is not None:  # (a batch of lead-in silence alone gives none)
            if self._offset:
                shift = self._offset / self.sample_rate
                events = [dataclasses.replace(e, t=round(float(e.t) + shift, 4)) for e in events]
            self._last.events.extend(events)
        self._release()

    def _release(self) -> None:
        while self._queue and self._queue[0].used == self._queue[0].samples.size:
            self._queue.popleft().done.set()


class SharedLineDsp:
    """DTMF, caller ID and call progress for every line of the process, batched (see module docstring).

    ``line(tones=..., cid=...)`` registers a line; lines with the same options share banks."""

    def __init__(self, *, form_s: float = 1.0, stall_s: float = 0.5, width_s: float | None = None,
                 frame_s: float = 0.02) -> None:
        width_s = frame_s if width_s is None else width_s  # one phase group (see the module docstring)
        if form_s <= 0 or stall_s <= 0 or frame_s <= 0 or not 0 < width_s <= frame_s:
            raise ValueError(f"need form_s > 0, stall_s > 0, frame_s > 0 and 0 < width_s <= frame_s, got "
                             f"form_s={form_s}, stall_s={stall_s}, width_s={width_s}, frame_s={frame_s}")
        self.form_s = form_s
        self.stall_s = stall_s
        self.width_s = width_s
        self.frame_s = frame_s
        self._cohorts: list[_Cohort] = []
        self._forming: dict[tuple, _Forming] = {}
        self._unplaced: dict[tuple, set[SharedLine]] = {}  # registered lines without a channel
        self.batches = 0  # bank calls so far
        self.evictions = 0
        self.moves = 0  # drifted lines moved to a better phase group
        self.joins = 0  # lines placed on a free channel of a running cohort
        self.cohorts_formed = 0
        self.phase_shifts = 0  # boxes asked to move their frame boundaries to the common phase
        self._phase_ref: float | None = None  # the common phase: a frame boundary (trio time), modulo frame_s

    @property
    def cohorts(self) -> int:
        return len(self._cohorts)

    def _phase_off(self, line: SharedLine) -> float:
        """How far the line's frame boundaries are from the common phase (s, -frame/2 .. frame/2]: positive
        means they come earlier than the common phase (a shift by that much moves them onto it)."""
        boundary = line._boundary
        if self._phase_ref is None:
            self._phase_ref = boundary
        return _centred(self._phase_ref - boundary, self.frame_s)

    def _ask_shift(self, line: SharedLine) -> bool:
        """Ask the line's box (through its driver: ``take_phase_shift``) to move its frame boundaries onto
        the common phase; False when it is close enough already or cannot move."""
        if not line.can_shift_phase:
            return False
        delta = self._phase_off(line)
        shift = round(delta * line.sample_rate)
        frame = self._frame(line.key)
        if abs(delta) < MIN_SHIFT_S or not -frame < shift < frame:
            return False
        line._shift_asked, line._shift_sent, line._shift_wait = shift, False, 0
        self.phase_shifts += 1
        return True

    def _decide_shift(self, line: SharedLine) -> None:
        """Before a line is first placed: the first line whose phase is known sets the common phase, every
        later one whose box can move is asked to move onto it (at most half a frame either way)."""
        line._shift_asked = 0
        if not line._behind:  # (a line placed while its reads never settle is not paced: not asked)
            self._ask_shift(line)

    def line(self, *, tones: str = "jp", cid: str | None = "auto", sample_rate: int = 8000) -> SharedLine:
        key = (tones, cid, sample_rate)
        LineAnalyzerBank(1, tones=tones, cid=cid, sample_rate=sample_rate)  # bad options fail here
        handle = SharedLine(self, key, sample_rate)
        self._unplaced.setdefault(key, set()).add(handle)
        return handle

    # -- scheduling
    def _submitted(self, line: SharedLine) -> None:
        if line._skip:
            k = min(line._skip, line._pending)
            line._skip -= k
            line._consume(k)
        if line._cohort is not None:
            cohort = line._cohort
            if line._reseat:
                line._reseat = False
                if line.movable and cohort.bank.quiet_channels()[line._channel]:
                    self._move(cohort, line._channel)
                    self._run_ready(cohort)  # it may have waited only for this line
                    cohort = line._cohort
            if cohort is not None:
                self._run_ready(cohort)
            return
        forming = self._forming.get(line.key)
        if line._ready_to_place() and self._join_running(line, lossy=line.movable):
            if forming is not None and line in forming.lines:
                forming.lines.remove(line)
                if not forming.lines:
                    del self._forming[line.key]
            return
        if forming is None:
            forming = self._forming[line.key] = _Forming(line.key, [], trio.current_time() + self.form_s)
        if line not in forming.lines:
            forming.lines.append(line)
        everyone = len(forming.lines) == len(self._unplaced[line.key])
        estimated = all(ln._ready_to_place() for ln in forming.lines)
        if (everyone and estimated) or trio.current_time() >= forming.deadline:
            self._form(forming)  # every registered line is streaming, or the others are too late
        elif line._pending:  # warm-up: this audio is not analysed, the line's clock moves on
            line._consume(line._pending)

    def _deadline_of(self, line: SharedLine) -> float:
        """A waiting line's own oldest audio sets its deadline; the earliest waiter of a stalled batch
        expires first and evicts the laggards for everyone."""
        if line._cohort is None:  # not reached: a line without a channel never waits (see _submitted)
            return trio.current_time()
        return line._since + self.stall_s

    def _expired(self, line: SharedLine) -> None:
        now = trio.current_time()
        if line._cohort is None:
            self._submitted(line)
            return
        cohort = line._cohort
        if line._since + self.stall_s > now:
            return
        for ch, member in cohort.live():
            if member._available == 0:
                self._retire(cohort, ch)
                self.evictions += 1
        self._run_ready(cohort)

    # -- placing lines
    def _frame(self, key: tuple) -> int:
        return max(1, round(self.frame_s * key[2]))

    def _pairing(self, line: SharedLine, ready: float, frame: int) -> int:
        """The frame shift k that pairs ``line``'s next frame with the batch ready at ``ready`` + k frames
        and makes it arrive at most a frame early: ``ready`` is the group's latest phase."""
        return math.ceil((line._next_arrival(frame) - ready) / self.frame_s - 1e-6)

    def _fit(self, cohort: _Cohort, line: SharedLine, frame: int) -> tuple[float, int] | None:
        """(spread after joining, k: frames the line's next frame is later than the cohort's next batch),
        for the k that keeps the spread smallest."""
        epochs = cohort.epochs()
        if not epochs:
            return None
        lo, hi = min(epochs), max(epochs)
        base = line._next_arrival(frame) - (cohort.clock + frame) / line.sample_rate  # bank epoch for k = 0
        k0 = math.floor((base - hi) / self.frame_s)
        fits = []
        for k in (k0, k0 + 1):
            mine = base - k * self.frame_s
            fits.append((max(hi, mine) - min(lo, mine), k))
        return min(fits)

    def _free_channel(self, cohort: _Cohort) -> int | None:
        free = [ch for ch, m in enumerate(cohort.members) if m is None]
        if not free:
            return None
        quiet = cohort.bank.quiet_channels()
        for ch in free:
            if quiet[ch]:
                return ch
        return None

    def _join_running(self, line: SharedLine, *, lossy: bool, exclude: _Cohort | None = None,
                      among: list[_Cohort] | None = None) -> bool:
        """Put ``line`` on a quiet free channel of a running cohort of its phase (of ``among`` when given),
        if one fits. Unless ``lossy``, only where none of its audio is skipped (a line that is behind, e.g.
        reading a backlog after a stall, would lose it: it forms a cohort of its own and catches up there)."""
        frame = self._frame(line.key)
        best = None
        for cohort in self._cohorts if among is None else among:
            if cohort.key != line.key or cohort is exclude:
                continue
            fit = self._fit(cohort, line, frame)
            if fit is None or fit[0] > self.width_s or (fit[1] < 0 and not lossy):
                continue
            ch = self._free_channel(cohort)
            if ch is not None and (best is None or fit[0] < best[0]):
                best = (fit[0], fit[1], cohort, ch)
        if best is None:
            return False
        _, k, cohort, ch = best
        old = line._cohort
        if old is not None:
            self._retire(old, line._channel)
            if not old.live():
                self._cohorts.remove(old)
        cohort.bank.reset_channels([ch])
        self._seat(cohort, ch, line, cohort.clock, k, frame)
        self.joins += 1
        self._run_ready(cohort)
        return True

    def _seat(self, cohort: _Cohort, ch: int, line: SharedLine, clock: int, k: int, frame: int) -> None:
        """Line's next frame pairs with the bank's batch starting at ``clock`` + ``k`` frames: the channel
        hears ``k`` frames of silence first (k > 0), or the line's next ``-k`` frames are skipped."""
        cohort.members[ch] = line
        line._cohort, line._channel = cohort, ch
        line._was_placed = True
        start = line._analysed + line._pending  # the line's next frame
        line._lead_in = max(0, k) * frame
        line._skip = max(0, -k) * frame
        line._offset = start + line._skip - (clock + line._lead_in)
        line._seat_clock, line._seat_start, line._seat_lead_in = clock, start + line._skip, line._lead_in
        # Audio already queued (the frame that triggered placement) is before `start`: discard it.
        if line._pending:
            line._consume(line._pending)
        self._unplaced[line.key].discard(line)

    def _form(self, forming: _Forming) -> None:
        if self._forming.get(forming.key) is forming:
            del self._forming[forming.key]
        # (A line placed since, by joining a cohort, is no longer forming.)
        lines = [ln for ln in forming.lines if not ln.closed and ln._cohort is None]
        if not lines:
            return
        tones, cid, rate = forming.key
        frame = self._frame(forming.key)
        for group in self._phase_groups(lines, frame):
            spare = max(2, len(group) // 4)
            bank = LineAnalyzerBank(len(group) + spare, tones=tones, cid=cid, sample_rate=rate)
            cohort = _Cohort(forming.key, bank, [None] * (len(group) + spare))
            latest = group[-1]  # the batch waits for the latest phase: pair everyone with its frame
            ready = latest._next_arrival(frame)
            for ch, ln in enumerate(group):
                self._seat(cohort, ch, ln, 0, self._pairing(ln, ready, frame), frame)
            self._cohorts.append(cohort)
            self.cohorts_formed += 1

    def _phase_groups(self, lines: list[SharedLine], frame: int) -> list[list[SharedLine]]:
        """Lines clustered by the phase of their next frame within the frame period: sorted on the circle,
        cut at the widest gap, then greedily into arcs no wider than ``width_s`` (each arc in phase
        order, the latest last)."""
        period = self.frame_s
        ref = lines[0]._next_arrival(frame)
        phase = sorted(((ln._next_arrival(frame) - ref) % period, i) for i, ln in enumerate(lines))
        gaps = [phase[j + 1][0] - phase[j][0] for j in range(len(phase) - 1)]
        gaps.append(phase[0][0] + period - phase[-1][0])  # from the last round to the first
        cut = (int(np.argmax(gaps)) + 1) % len(phase)
        order = phase[cut:] + [(p + period, i) for p, i in phase[:cut]]
        groups: list[list[SharedLine]] = []
        start = None
        for p, i in order:
            if start is None or p - start > self.width_s:
                groups.append([])
                start = p
            groups[-1].append(lines[i])
        return groups

    # -- leaving
    def _retire(self, cohort: _Cohort, ch: int) -> None:
        line = cohort.members[ch]
        cohort.members[ch] = None
        line._cohort, line._channel = None, -1
        line._lead_in = line._skip = 0
        self._unplaced[line.key].add(line)

    def _leave(self, line: SharedLine) -> None:
        cohort = line._cohort
        if cohort is not None:
            cohort.members[line._channel] = None
            line._cohort, line._channel = None, -1
        self._unplaced[line.key].discard(line)
        forming = self._forming.get(line.key)
        if forming is not None and line in forming.lines:
            forming.lines.remove(line)
            if not forming.lines:
                del self._forming[line.key]
        for sub in line._queue:  # nobody waits for these any more, but do not leave an Event unset
            sub.done.set()
        line._queue.clear()
        line._pending = 0
        if cohort is not None:  # it may have been waiting only for this line
            self._run_ready(cohort)

    # -- drift
    def _check_spread(self, cohort: _Cohort) -> None:
        """Move the member farthest from the others when the cohort's frames have drifted apart, and a lone
        member (a line that formed a cohort of its own after a stall or a hot-plug) into a cohort of its
        phase -- only an idle line on a quiet channel (see the module docstring)."""
        live = cohort.live()
        if not live or self._merge_into_larger(cohort, live):
            return
        if len(live) == 1:
            return
        epochs = np.array([m._bank_epoch for _, m in live])
        if epochs.max() - epochs.min() <= 2 * self.width_s:
            return
        quiet = cohort.bank.quiet_channels()
        centre = float(np.median(epochs))
        for j in np.argsort(-np.abs(epochs - centre)):
            ch, line = live[int(j)]
            if line.movable and quiet[ch] and line._lead_in == 0:
                self._move(cohort, ch)
                return

    def _merge_into_larger(self, cohort: _Cohort, live: list[tuple[int, SharedLine]]) -> bool:
        """A cohort with fewer members than another of its kind gives it its idle members (quiet channels),
        so the lines come back to one batch: such cohorts form when lines must be seated while the large
        cohort has no quiet free channel (several boxes moving their frame phase at once retire channels
        that are not quiet yet), or after a stall or a hot-plug. Measured (issue 5): left alone, 12 of 32
        lines stayed in four cohorts of three for good, and every batch of the large one waited for theirs
        (screen pop p99 80 ms instead of 45-50, CPU +20 points). Ties go to the older cohort."""
        mine = len(live)
        order = self._cohorts.index(cohort) if cohort in self._cohorts else len(self._cohorts)
        larger = [c for i, c in enumerate(self._cohorts)
                  if c is not cohort and c.key == cohort.key
                  and (len(c.live()), -i) > (mine, -order)]
        if not larger:
            return False
        quiet = cohort.bank.quiet_channels()
        moved = False
        for ch, line in live:
            if (line.movable and quiet[ch] and line._lead_in == 0 and not line._reseat
                    and not line._shift_asked
                    and self._join_running(line, lossy=True, exclude=cohort, among=larger)):
                self.moves += 1
                moved = True
        return moved

    def _move(self, cohort: _Cohort, ch: int) -> None:
        """Seat an idle line (quiet channel) anew where its phase fits now: a running cohort's free channel,
        the lines forming now, or a cohort of its own."""
        line = cohort.members[ch]
        self._retire(cohort, ch)
        self.moves += 1
        if not self._join_running(line, lossy=True):
            forming = self._forming.get(line.key)
            if forming is not None:  # placed with the lines forming now
                forming.lines.append(line)
            else:  # a cohort of its own, at once (its phase is known)
                self._form(_Forming(line.key, [line], trio.current_time()))
        if not cohort.live() and cohort in self._cohorts:
            self._cohorts.remove(cohort)

    def _realign(self, cohort: _Cohort) -> None:
        """Idle members whose boxes are off the common phase (a box that drifts, one placed before it
        could be moved) are asked to move back onto it; each is seated anew once its box has. The common
        phase follows the cohort's (its members' median), so that a bias shared by every estimate (the
        host's read latency) moves nobody."""
        live = cohort.live()
        if len(live) < 2:
            return
        ref = live[0][1]._boundary if self._phase_ref is None else self._phase_ref
        offs = [-_centred(ref - line._boundary, self.frame_s) for _, line in live]
        self._phase_ref = ref + float(np.median(offs))
        quiet = None
        for ch, line in live:
            if (line.movable and line.can_shift_phase and not line._shift_asked and not line._reseat
                    and line._lead_in == 0 and abs(self._phase_off(line)) > REALIGN_S):
                quiet = cohort.bank.quiet_channels() if quiet is None else quiet
                if quiet[ch]:
                    self._ask_shift(line)

    def _run_ready(self, cohort: _Cohort) -> None:
        """Feed the bank while every live member has audio queued: one lockstep batch each time. Called on
        every submission: the member the batch was last seen waiting for is looked at first, so most calls
        return without going over every member."""
        while True:
            waiting = cohort.waiting_for
            if waiting is not None and waiting._cohort is cohort and waiting._available == 0:
                return
            live = cohort.live()
            if not live:
                if cohort in self._cohorts:
                    self._cohorts.remove(cohort)
                return
            n = min(m._available for _, m in live)
            if n == 0:
                cohort.waiting_for = next(m for _, m in live if m._available == 0)
                return
            x = np.zeros((cohort.bank.channels, n), dtype=np.float32)  # free channels hear silence
            for ch, m in live:
                m._take(n, x[ch])
            per: dict[int, list[Event]] = {ch: [] for ch, _ in live}
            for ch, event in cohort.bank.feed(x):
                if ch in per:
                    per[ch].append(event)
            cohort.clock += n
            cohort.batches += 1
            self.batches += 1
            for ch, m in live:
                m._deliver(per[ch])
            if cohort.batches % CHECK_BATCHES == 0:
                self._realign(cohort)
                self._check_spread(cohort)
