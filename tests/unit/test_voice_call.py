"""Call.record: silence end, finish keys (consumed, not type-ahead), with a scripted fake line device whose
audio frames are paced on trio's (mock) clock."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from gateway.voice.calls import Call
from gateway.voice.media import PromptCache, RecordingWriter, read_recording

FRAME = 160  # 20 ms at 8 kHz


@pytest.fixture(autouse=True)
def inline_flush(monkeypatch):
    """The writer's flush runs in a worker thread; under the autojump clock trio would see every task
    blocked meanwhile and jump line time ahead. Write inline here (the file is small)."""

    async def flush(self: RecordingWriter) -> None:
        if self._pending:
            block = np.concatenate(self._pending)
            self._pending, self._pending_n = [], 0
            self._write_block(block)

    monkeypatch.setattr(RecordingWriter, "flush", flush)


def tone(seconds: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000
    return (level * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


class FakeLine:
    """A line that delivers ``script`` (the far end's audio, then silence forever) in 20 ms frames, one per
    20 ms of trio time, to every open tap; ``play`` takes as long as its audio would."""

    name = "fake1"
    has_headset = False

    def __init__(self, script: np.ndarray) -> None:
        self.script = script
        self.pos = 0
        self.taps: list[trio.MemorySendChannel] = []
        self.played = 0

    async def run_clock(self) -> None:
        while True:
            await trio.sleep(FRAME / 8000)
            chunk = self.script[self.pos : self.pos + FRAME]
            frame = np.zeros(FRAME, dtype=np.float32)
            frame[: chunk.size] = chunk
            self.pos += FRAME
            for send in list(self.taps):
                send.send_nowait(frame)

    async def play(self, samples: np.ndarray) -> None:
        self.played += samples.size
        await trio.sleep(samples.size / 8000)

    def audio(self):
        send, receive = trio.open_memory_channel[np.ndarray](10_000)
        self.taps.append(send)
        line = self

        class Tap:
            def __aiter__(self):
                return self

            async def __anext__(self):
                try:
                    return await receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    raise StopAsyncIteration from None

            def close(self) -> None:
                line.taps.remove(send)
                send.close()

        return Tap()


def make_call(device: FakeLine) -> Call:
    call = Call("call_t1", "in", "fake1", device, PromptCache())
    call.mark_answered("gateway", 1.0)
    return call


async def test_record_ends_after_silence_and_keeps_the_speech(tmp_path, autojump_clock):
    device = FakeLine(tone(2.0))
    call = make_call(device)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(device.run_clock)
        seconds = await call.record(tmp_path / "m.flac", max_seconds=30, silence_end_s=1.5, beep=True)
        nursery.cancel_scope.cancel()
    assert device.played == int(0.4 * 8000)  # the beep went out first
    # 0.4 s of speech passed during the beep; the rest (1.6 s) plus 1.5 s of silence was recorded
    assert 3.0 <= seconds <= 3.2
    samples, rate = read_recording(tmp_path / "m.flac")
    assert rate == 8000 and samples.size == round(seconds * 8000)
    assert np.sqrt(np.mean(samples[:8000] ** 2)) > 0.1 and np.max(np.abs(samples[-8000:])) < 1e-3


async def test_record_stops_at_max_seconds_when_the_caller_keeps_talking(tmp_path, autojump_clock):
    device = FakeLine(tone(60.0))
    call = make_call(device)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(device.run_clock)
        seconds = await call.record(tmp_path / "m.flac", max_seconds=5, silence_end_s=1.0, beep=False)
        nursery.cancel_scope.cancel()
    assert 4.9 <= seconds <= 5.0


async def test_finish_key_ends_the_recording_and_is_consumed(tmp_path, autojump_clock):
    device = FakeLine(tone(60.0))
    call = make_call(device)
    call.key_pressed("#")  # pressed before the recording: type-ahead, must not end it
    call.key_pressed("5")
    got: list[float] = []
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(device.run_clock)

        async def recorder() -> None:
            got.append(
                await call.record(
                    tmp_path / "m.flac", max_seconds=30, silence_end_s=None, beep=False, finish_keys="#*"
                )
            )
            done.set()

        nursery.start_soon(recorder)
        await trio.sleep(2.0)
        call.key_pressed("1")  # not a finish key: recorded over, kept for the next collect
        await trio.sleep(1.0)
        call.key_pressed("*")
        await done.wait()  # without the finish key only max_seconds (30 s) would end it
        nursery.cancel_scope.cancel()
    assert 2.9 <= got[0] <= 3.1
    # the earlier type-ahead and the other key are still buffered, the finishing "*" is not
    typed = await call.collect(max_digits=5, terminator=None, first_timeout=0.5, inter_timeout=0.5)
    assert typed == "#51"


async def test_finish_keys_empty_means_keys_do_not_end_it(tmp_path, autojump_clock):
    device = FakeLine(tone(60.0))
    call = make_call(device)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(device.run_clock)

        async def press() -> None:
            await trio.sleep(1.0)
            call.key_pressed("#")

        nursery.start_soon(press)
        seconds = await call.record(
            tmp_path / "m.flac", max_seconds=3, silence_end_s=None, beep=False, finish_keys=""
        )
        nursery.cancel_scope.cancel()
    assert seconds >= 2.9


async def test_record_ends_when_the_caller_hangs_up(tmp_path, autojump_clock):
    device = FakeLine(tone(60.0))
    call = make_call(device)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(device.run_clock)

        async def hang_up() -> None:
            await trio.sleep(1.5)
            call.mark_ended("far_end_busy")

        nursery.start_soon(hang_up)
        seconds = await call.record(tmp_path / "m.flac", max_seconds=30, silence_end_s=None, beep=False)
        nursery.cancel_scope.cancel()
    assert 1.4 <= seconds <= 1.6
