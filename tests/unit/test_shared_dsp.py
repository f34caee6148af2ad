"""SharedLineDsp: the batched bank gives each line exactly the events of its own LineAnalyzer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import trio
import trio.testing

from drivers.dsp.events import CallerId, DtmfDigit
from drivers.dsp.pipeline import LineAnalyzer
from drivers.voice.events import DeviceReady, Ring
from drivers.voice.shared_dsp import SharedLine, SharedLineDsp
from drivers.voice.usbbox import AudioIn, AudioLost, LineMonitor, StatusReport, UsbVoiceBox
from drivers.voice.usbbox_protocol import LineStatus
from simulators import callerid_gen as gen
from simulators.pstn_line import Caller, PstnLine
from simulators.usb_box import make_box

FRAME = 160


def _line_audio(i: int, rng: np.random.Generator) -> np.ndarray:
    """Different per line: lead silence, an NTT caller ID, digits, noise (whole 20 ms frames)."""
    parts = [
        np.zeros(800 * (i % 4 + 1)),
        gen.callerid_burst(gen.ntt_callerid(f"0312345{i:03d}"), standard="ntt"),
        np.zeros(2400),
        gen.dtmf_waveform("159#*0"[: i % 6 + 1]),
        gen.white_noise(4000, -50.0, rng),
    ]
    x = np.concatenate(parts).astype(np.float32)
    return np.pad(x, (0, -x.size % FRAME))


def _reference(x: np.ndarray, offset: int = 0) -> list[list]:
    """Per frame, what a line's own LineAnalyzer gives when started ``offset`` samples into the line."""
    analyzer = LineAnalyzer(tones="jp")
    shift = offset / 8000
    out: list[list] = [[] for _ in range(offset // FRAME)]
    for k in range(offset, x.size, FRAME):
        events = analyzer.feed(x[k : k + FRAME])
        if offset:
            events = [dataclasses.replace(e, t=round(float(e.t) + shift, 4)) for e in events]
        out.append(events)
    return out


async def _through_shared(line: SharedLine, x: np.ndarray, start: float, lag: dict[int, float],
                          out: list[list], offsets: list[int]) -> None:
    """One box reader: a frame every 20 ms from ``start``; frame k arrives ``lag[k]`` late."""
    for k in range(x.size // FRAME):
        await trio.sleep_until(start + 0.02 * k + lag.get(k, 0.0))
        out.append(await line.analyse(x[k * FRAME : (k + 1) * FRAME]))
        offsets.append(line.offset)
    line.close()


async def test_shared_bank_gives_each_line_its_own_analyzers_events(autojump_clock):
    rng = np.random.default_rng(7)
    lines = 5
    audio = [_line_audio(i, rng) for i in range(lines)]
    dsp = SharedLineDsp(form_s=1.0, stall_s=0.06)
    handles = [dsp.line(tones="jp") for _ in range(lines)]
    got: list[list] = [[] for _ in range(lines)]
    offsets: list[list[int]] = [[] for _ in range(lines)]
    # Boxes out of phase and coming up at different times (frames interleaved; the bank starts once the
    # last line streams); line 3 is 35 ms late on frame 40 (and 20 ms on 41): the batch waits for it.
    phase = [0.0, 0.047, 0.013, 0.002, 0.104]
    lags = [{}, {}, {}, {40: 0.035, 41: 0.02}, {}]
    async with trio.open_nursery() as nursery:
        for i in range(lines):
            args = handles[i], audio[i], 1.0 + phase[i], lags[i], got[i], offsets[i]
            nursery.start_soon(_through_shared, *args)
    assert dsp.evictions == 0
    assert [o[-1] for o in offsets] == [6 * FRAME, 3 * FRAME, 5 * FRAME, 6 * FRAME, 0]  # warm-up
    for i in range(lines):
        reference = _reference(audio[i], offsets[i][-1])
        assert any(isinstance(e, CallerId) for f in reference for e in f)
        assert any(isinstance(e, DtmfDigit) for f in reference for e in f)
        assert got[i] == reference, f"line {i}"
    frames = [x.size // FRAME - o[-1] // FRAME for x, o in zip(audio, offsets, strict=True)]
    assert dsp.batches == max(frames)  # one bank call per tick for all five lines


async def test_stalled_line_is_evicted_and_restarts_on_line_time(autojump_clock):
    rng = np.random.default_rng(3)
    audio = [_line_audio(0, rng), _line_audio(1, rng)]
    dsp = SharedLineDsp(form_s=1.0, stall_s=0.06)
    handles = [dsp.line(tones="jp"), dsp.line(tones="jp")]
    got: list[list] = [[], []]
    offsets: list[list[int]] = [[], []]
    stall_frame = 5  # before the caller ID: the restart loses nothing
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_through_shared, handles[0], audio[0], 1.0, {}, got[0], offsets[0])
        nursery.start_soon(_through_shared, handles[1], audio[1], 1.0, {stall_frame: 0.5}, got[1], offsets[1])
    assert dsp.evictions == 1
    assert offsets[0][-1] in (0, FRAME)  # the frame that opened the cohort's formation is warm-up
    assert offsets[1][-1] == stall_frame * FRAME
    assert got[0] == _reference(audio[0], offsets[0][-1])  # the punctual line only waits up to stall_s
    assert got[1] == _reference(audio[1], stall_frame * FRAME)  # a fresh channel, on line time
    assert any(isinstance(e, CallerId) for f in got[1] for e in f)


async def test_line_monitor_with_shared_events_matches_own_analyzer(autojump_clock):
    """The NTT handshake (CAR -> off hook -> V.23 -> on hook) gives the same outputs either way."""
    x = np.concatenate([np.zeros(1600), gen.callerid_burst(gen.ntt_callerid("0312345678"), standard="ntt")])
    x = np.pad(x, (0, -x.size % FRAME)).astype(np.float32)
    items = [StatusReport(LineStatus(ring=True))] + [AudioIn(np.zeros(FRAME, np.float32))] * 20
    items += [StatusReport(LineStatus(ring=False))]
    items += [AudioIn(x[k : k + FRAME]) for k in range(0, x.size, FRAME)] + [AudioLost(320)]
    own = LineMonitor(tones="jp")
    expected = [out for item in items for out in own.feed(item)]
    shared_monitor = LineMonitor(tones="jp", analyse=False)
    dsp = SharedLineDsp()
    line = dsp.line(tones="jp")
    got = []
    for item in items:
        x_item = LineMonitor.audio_of(item)
        events = await line.analyse(x_item) if x_item is not None else None
        got.extend(shared_monitor.feed(item, events))
    assert got == expected
    assert any(isinstance(e, CallerId) for e in got)


async def test_monitor_without_analyzer_needs_events():
    monitor = LineMonitor(analyse=False)
    with pytest.raises(ValueError, match="pass the DSP's events"):
        monitor.feed(AudioIn(np.zeros(FRAME, np.float32)))


def test_bad_options_fail_at_registration():
    with pytest.raises(ValueError, match="caller-ID mode"):
        SharedLineDsp().line(cid="nope")
    with pytest.raises(ValueError, match="form_s"):
        SharedLineDsp(form_s=0.0)


async def _box_events(line: PstnLine, name: str, backend, dsp: SharedLineDsp | None) -> list:
    box = UsbVoiceBox(name, backend=backend, reconnect_backoff=(0.01,), tones="jp", dsp=dsp)
    got: list = []
    async with trio.open_nursery() as nursery:
        await nursery.start(box.run)
        with trio.fail_after(20):
            async for event in box.events:
                got.append(event)
                if isinstance(event, DeviceReady):
                    line.incoming_call(Caller("0312345678", name=None, cid="v23_ntt"), max_rings=2)
                if isinstance(event, Ring) and any(isinstance(e, CallerId) for e in got):
                    break
        nursery.cancel_scope.cancel()
    return got


async def test_boxes_on_one_shared_dsp_run_the_ntt_handshake_as_alone():
    """Two simulated boxes on one SharedLineDsp: caller ID through CAR -> off hook -> V.23 -> on hook ->
    ring, the same events as a box with its own analyser."""
    solo = PstnLine("jp")
    alone = await _box_events(solo, "solo", make_box(solo), None)
    lines = [PstnLine("jp"), PstnLine("jp")]
    dsp = SharedLineDsp(form_s=0.2)
    results: list[list] = [[], []]

    async def one(i: int) -> None:
        results[i] = await _box_events(lines[i], f"box{i}", make_box(lines[i]), dsp)

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(one, i)
    assert dsp.batches > 0
    for got in results:
        kinds = [type(e).__name__ for e in got]
        assert kinds == [type(e).__name__ for e in alone]
        assert [e.number for e in got if isinstance(e, CallerId)] == ["0312345678"]


async def test_the_reader_that_completes_a_batch_yields_with_the_others(autojump_clock):
    """analyse() always yields: the reader whose frame completed the batch resumes in the same scheduler
    pass as the cohort's other readers (a burst's events then reach the store together, one commit)."""
    dsp = SharedLineDsp(form_s=1.0, stall_s=0.5)
    lines = [dsp.line(tones="jp") for _ in range(3)]
    frame = np.zeros(FRAME, dtype=np.float32)

    class Passes(trio.abc.Instrument):  # the run loop waits for I/O once per scheduler pass
        count = 0

        def after_io_wait(self, timeout: float) -> None:
            self.count += 1

    passes = Passes()
    resumed: list[tuple[int, int, int]] = []  # (frame, line, scheduler pass)

    async def reader(i: int) -> None:
        start = trio.current_time()
        for k in range(4):  # the cohort forms on line 2's first frame; line 2's frames complete the batches
            await trio.sleep_until(start + 0.02 * k + 0.001 * i)
            with trio.testing.assert_checkpoints():
                await lines[i].analyse(frame)
            resumed.append((k, i, passes.count))
        lines[i].close()

    trio.lowlevel.add_instrument(passes)
    try:
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(reader, i)
    finally:
        trio.lowlevel.remove_instrument(passes)
    assert dsp.evictions == 0
    at = {(k, i): p for k, i, p in resumed}
    for k in range(1, 4):  # line 2 opened the cohort with its frame 0: its frame k-1 goes with the others' k
        assert at[k, 0] == at[k, 1] == at[k - 1, 2], resumed
