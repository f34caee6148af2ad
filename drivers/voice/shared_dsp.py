"""One batched line DSP for every USB voice box of a process: a ``LineAnalyzerBank`` call per 20 ms tick
for all lines instead of one ``LineAnalyzer.feed`` per line (issue 5: 32 lines on 2 cores).

Why cohorts, not one bank with subset feeding
=============================================
The detector banks (DTMF blocks of 102 samples, 20 ms progress hops, the FSK gate and receivers) keep one
sample clock for all their channels, so a bank channel only gives the events of a per-line
``LineAnalyzer`` when it is fed in lockstep with the others from its first sample on (feeding a subset
would need a per-channel clock in every detector).  A line therefore gets a channel in a *cohort*: a bank
whose lines all started together, fed one batch whenever every live member has audio queued.

Boxes come up hundreds of ms apart, so a cohort *forms*: from the first frame of a line without a
channel, for at most ``form_s`` (or until every registered line without a channel is streaming), the
lines' audio is counted on their clocks but not analysed (warm-up); then all of them start one bank
together.  A line that starts later (hot-plug) forms its own cohort the same way; it never joins a running
one, whose clock is past zero.  Within a cohort a line that is late holds the batch back (the boxes' frame
clocks differ in phase by less than a frame); a line late by more than ``stall_s`` is *evicted*: its
channel is retired (fed silence, events dropped) and its next audio forms a fresh channel, i.e. its
detectors restart as after a replug (a digit sounding then may be lost).  Events keep the line's own
time: a channel's ``t`` is shifted by the audio its line had before the channel started
(``SharedLine.offset``).

Known limits
============
Lockstep costs latency: a cohort's batch runs when its *last* line's frame has arrived, so a line whose box
delivers early in the 20 ms cycle waits up to one frame for the others (on top of the box's own buffering).
Boxes with their own crystals also drift apart (±50 ppm is 0.4 samples/s at 8 kHz). A reader waits for its
frame's events before it reads again, so a box that runs fast is read at the pace of the cohort and its
surplus queues in the box until the box's buffer overflows and audio is lost (the driver reports the
gap); at 50 ppm and a 100 ms buffer that is about every half hour. The simulated boxes share one clock, so
no test shows it. Planned: let a line that is a frame ahead hand in its next frame without waiting (its events
come one frame later), and drop the surplus only from quiet audio, moving the channel's offset so that
events keep the line's time.

No task of its own
==================
There is no background task to own: the reader task whose frame completes a batch runs the bank
(synchronously, ~0.4 ms for 32 lines), and a reader waiting for its frame's events runs the pending
formation or eviction itself when its deadline (a cancel scope) expires.  Every waiter has its own
deadline, so no batch depends on one particular task staying alive; a cancelled reader's line is
closed by its owner (``SharedLine.close``), which retires its channel.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import trio

from drivers.dsp.pipeline import Event, LineAnalyzerBank

__all__ = ["SharedLine", "SharedLineDsp"]


@dataclass(eq=False)
class _Submission:
    samples: np.ndarray
    at: float  # trio time it was queued
    used: int = 0
    events: list[Event] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False)
class _Cohort:
    key: tuple
    bank: LineAnalyzerBank
    members: list[SharedLine | None]  # channel -> line; None once the line left (channel fed silence)


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
        self._queue: deque[_Submission] = deque()
        self._pending = 0  # samples queued, not yet analysed
        self._last: _Submission | None = None  # where the last batch's samples ended
        self._cohort: _Cohort | None = None
        self._channel = -1
        self._analysed = 0  # samples of this line analysed so far (all channels)
        self._offset = 0  # samples the line had before its current channel started
        self.closed = False

    async def analyse(self, samples: np.ndarray) -> list[Event]:
        if self.closed:
            raise RuntimeError("this line has left the shared DSP")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if x.size == 0:
            return []
        sub = _Submission(x, trio.current_time())
        self._queue.append(sub)
        self._pending += x.size
        self._dsp._submitted(self)
        if sub.done.is_set():
            # This frame completed its cohort's batch, which ran here and woke the cohort's other readers:
            # yield once so that every line's events of the batch go on together (one store commit, not
            # this line's alone followed by the others').
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
        """Samples of this line before its current channel started (not analysed: warm-up, eviction)."""
        return self._offset

    # -- used by SharedLineDsp
    @property
    def _since(self) -> float:
        """When the oldest audio still waiting for analysis arrived (inf: none waits)."""
        return self._queue[0].at if self._queue else math.inf

    def _take(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.float32)
        filled = 0
        for sub in self._queue:
            k = min(n - filled, sub.samples.size - sub.used)
            out[filled : filled + k] = sub.samples[sub.used : sub.used + k]
            sub.used += k
            filled += k
            self._last = sub
            if filled == n:
                break
        self._pending -= n
        self._analysed += n
        return out

    def _deliver(self, events: list[Event]) -> None:
        """Events of the last batch go with the submission the batch ended in (as LineAnalyzer.feed
        returns what a call's samples completed); finished submissions are released in order."""
        if self._offset:
            shift = self._offset / self.sample_rate
            events = [dataclasses.replace(e, t=round(float(e.t) + shift, 4)) for e in events]
        self._last.events.extend(events)
        while self._queue and self._queue[0].used == self._queue[0].samples.size:
            self._queue.popleft().done.set()


class SharedLineDsp:
    """DTMF, caller ID and call progress for every line of the process, batched (see module docstring).

    ``line(tones=..., cid=...)`` registers a line; lines with the same options share banks."""

    def __init__(self, *, form_s: float = 1.0, stall_s: float = 0.5) -> None:
        if form_s <= 0 or stall_s <= 0:
            raise ValueError(f"need form_s > 0 and stall_s > 0, got form_s={form_s}, stall_s={stall_s}")
        self.form_s = form_s
        self.stall_s = stall_s
        self._cohorts: list[_Cohort] = []
        self._forming: dict[tuple, _Forming] = {}
        self._unplaced: dict[tuple, set[SharedLine]] = {}  # registered lines without a channel
        self.batches = 0  # bank calls so far
        self.evictions = 0

    @property
    def cohorts(self) -> int:
        return len(self._cohorts)

    def line(self, *, tones: str = "jp", cid: str | None = "auto", sample_rate: int = 8000) -> SharedLine:
        key = (tones, cid, sample_rate)
        LineAnalyzerBank(1, tones=tones, cid=cid, sample_rate=sample_rate)  # bad options fail here
        handle = SharedLine(self, key, sample_rate)
        self._unplaced.setdefault(key, set()).add(handle)
        return handle

    # -- scheduling
    def _submitted(self, line: SharedLine) -> None:
        if line._cohort is not None:
            self._run_ready(line._cohort)
            return
        forming = self._forming.get(line.key)
        if forming is None:
            forming = self._forming[line.key] = _Forming(line.key, [], trio.current_time() + self.form_s)
        if line not in forming.lines:
            forming.lines.append(line)
        if len(forming.lines) == len(self._unplaced[line.key]) or trio.current_time() >= forming.deadline:
            self._form(forming)  # every registered line is streaming, or the others are too late
        else:  # warm-up: this audio is not analysed, the line's clock moves on
            line._take(line._pending)
            line._deliver([])

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
        for ch, member in enumerate(cohort.members):
            if member is not None and member._pending == 0:
                self._evict(cohort, ch)
        self._run_ready(cohort)

    def _form(self, forming: _Forming) -> None:
        del self._forming[forming.key]
        lines = [ln for ln in forming.lines if not ln.closed]
        if not lines:
            return
        tones, cid, rate = forming.key
        cohort = _Cohort(forming.key, LineAnalyzerBank(len(lines), tones=tones, cid=cid, sample_rate=rate),
                         list(lines))
        for ch, ln in enumerate(lines):
            ln._cohort, ln._channel, ln._offset = cohort, ch, ln._analysed
            self._unplaced[forming.key].discard(ln)
        self._cohorts.append(cohort)
        self._run_ready(cohort)

    def _evict(self, cohort: _Cohort, ch: int) -> None:
        line = cohort.members[ch]
        cohort.members[ch] = None
        line._cohort, line._channel = None, -1
        self._unplaced[line.key].add(line)
        self.evictions += 1

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

    def _run_ready(self, cohort: _Cohort) -> None:
        """Feed the bank while every live member has audio queued: one lockstep batch each time."""
        while True:
            live = [(ch, m) for ch, m in enumerate(cohort.members) if m is not None]
            if not live:
                self._cohorts.remove(cohort)
                return
            n = min(m._pending for _, m in live)
            if n == 0:
                return
            x = np.zeros((cohort.bank.channels, n), dtype=np.float32)  # retired channels hear silence
            for ch, m in live:
                x[ch] = m._take(n)
            per: dict[int, list[Event]] = {ch: [] for ch, _ in live}
            for ch, event in cohort.bank.feed(x):
                if ch in per:
                    per[ch].append(event)
            self.batches += 1
            for ch, m in live:
                m._deliver(per[ch])
