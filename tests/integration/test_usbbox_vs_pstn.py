"""The real USB box driver (drivers/voice/usbbox.py) through pyusb against the simulated box and line.

The box's sample clock is the driver's reads, so line time runs as fast as the driver reads; the
timeouts below are real seconds and generous (a 10 s call takes well under a second)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import trio
import usb.core

from drivers.dsp.dtmf import DtmfDetector
from drivers.dsp.events import CallerId
from drivers.voice.events import (
    DeviceLost,
    DeviceReady,
    DtmfDigit,
    Handset,
    Overrun,
    PolarityReversal,
    Ring,
    ToneEvent,
)
from drivers.voice.usbbox import AudioIn, BoxUnavailable, StatusReport, UsbVoiceBox
from drivers.voice.usbbox_protocol import LineStatus
from simulators.pstn_line import Caller, HangUp, Keys, Pause, PstnLine, Say
from simulators.usb_box import UsbBoxBackend, VoiceBox, make_box

BACKOFF = (0.01, 0.02, 0.05)


TIMEOUT_S = 10.0


async def collect(box: UsbVoiceBox, stop: Callable[[object], bool]) -> list:
    """Events until ``stop(event)`` holds (that event included), within TIMEOUT_S real seconds."""
    got: list = []
    with trio.fail_after(TIMEOUT_S):
        async for event in box.events:
            got.append(event)
            if stop(event):
                return got
    raise AssertionError(f"event channel closed; got {got}")


async def start(nursery, backend, **options) -> UsbVoiceBox:
    box = UsbVoiceBox("box1", backend=backend, reconnect_backoff=BACKOFF, **options)
    await nursery.start(box.run)
    ready = await collect(box, lambda e: isinstance(e, DeviceReady))
    assert ready[-1] == DeviceReady("HCRM-0001", "hcrm-open-box")
    return box


def ring_after_caller_id() -> Callable[[object], bool]:
    seen: list = []

    def stop(event) -> bool:
        seen.append(event)
        return isinstance(event, Ring) and any(isinstance(e, CallerId) for e in seen)

    return stop


@pytest.mark.parametrize(
    ("country", "standard"),
    [("jp", "v23_ntt"), ("us", "bell202"), ("cn", "bell202"), ("etsi", "v23_etsi"), ("cn", "dtmf")],
)
async def test_incoming_ring_with_caller_id_of_each_standard(country, standard):
    line = PstnLine(country)
    async with trio.open_nursery() as nursery:
        box = await start(nursery, make_box(line), tones=country)
        line.incoming_call(Caller("0312345678", name=None, cid=standard), max_rings=3)
        events = await collect(box, ring_after_caller_id())
        nursery.cancel_scope.cancel()
    cids = [e for e in events if isinstance(e, CallerId)]
    assert [c.number for c in cids] == ["0312345678"]
    expected = {"v23_ntt": "v23_ntt", "bell202": "bell202", "v23_etsi": "v23_etsi", "dtmf": "dtmf"}[standard]
    assert cids[0].standard == expected
    assert not any(isinstance(e, DtmfDigit) for e in events)  # DTMF caller ID is not key presses
    if standard == "v23_ntt":
        # CAR was answered silently and released; no Ring before the number; rings after it.
        assert [r.detail for r in line.kinds("hook")][:2] == ["off", "on"]
        assert events.index(cids[0]) < next(i for i, e in enumerate(events) if isinstance(e, Ring))
        assert line.kinds("cid")[0].detail == "v23_ntt"
    if standard in ("v23_etsi", "dtmf"):
        assert PolarityReversal() in events


async def test_private_caller_is_reported_without_number():
    line = PstnLine("us")
    async with trio.open_nursery() as nursery:
        box = await start(nursery, make_box(line), tones="us")
        line.incoming_call(Caller("2125551234", presentation="private"), max_rings=2)
        events = await collect(box, lambda e: isinstance(e, CallerId))
        nursery.cancel_scope.cancel()
    assert (events[-1].number, events[-1].reason_absent) == (None, "P")


async def test_answered_call_key_presses_become_digits_and_far_end_hang_up_busy():
    line = PstnLine("jp")
    script = [Say(0.4), Pause(0.2), Keys("3*0#", 80, 80), Pause(0.3), HangUp()]
    async with trio.open_nursery() as nursery:
        box = await start(nursery, make_box(line), tones="jp")
        line.incoming_call(Caller("0312345678"), script=script)
        await collect(box, lambda e: isinstance(e, Ring))
        await box.hook(True)
        events = await collect(box, lambda e: e == ToneEvent("busy"))
        await box.hook(False)
        nursery.cancel_scope.cancel()
    assert [e.digit for e in events if isinstance(e, DtmfDigit)] == list("3*0#")
    assert line.kinds("answered") and line.kinds("far_end_hangup")


async def test_outgoing_dial_meets_busy():
    line = PstnLine("cn")
    line.expect_outgoing("busy")
    backend = make_box(line)
    async with trio.open_nursery() as nursery:
        box = await start(nursery, backend, tones="cn")
        await box.hook(True)
        await box.dial("13800138000")
        events = await collect(box, lambda e: isinstance(e, ToneEvent) and e.tone == "busy")
        nursery.cancel_scope.cancel()
    assert not any(isinstance(e, DtmfDigit) for e in events)  # our own dialling is not reported
    assert backend.box.dialled == ["13800138000"]
    heard = "".join(d.digit for d in DtmfDetector().feed(line.upstream_audio()))
    assert heard == "13800138000"
    assert line.kinds("outgoing")[-1].detail == "busy"


async def test_outgoing_answer_with_polarity_reversal_and_played_audio_reaches_the_line():
    line = PstnLine("jp", polarity_reversal_on_answer=True)
    line.expect_outgoing("answer", answer_after_rings=1, script=[Say(0.5)])
    async with trio.open_nursery() as nursery:
        box = await start(nursery, make_box(line), tones="jp")
        await box.hook(True)
        await box.dial("117")
        await collect(box, lambda e: isinstance(e, PolarityReversal))
        tone = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(4000) / 8000)
        await box.play(tone)
        await collect(box, lambda e: e == ToneEvent("voice"))
        nursery.cancel_scope.cancel()
    up = line.upstream_audio()
    spectrum = np.abs(np.fft.rfft(up[-16000:]))
    assert np.argmax(spectrum) * 8000 / 16000 == pytest.approx(1000, abs=2)


async def test_handset_port_and_route_commands():
    line = PstnLine("jp")
    backend = make_box(line)
    async with trio.open_nursery() as nursery:
        box = await start(nursery, backend, tones="jp")
        backend.box.handset_off_hook = True
        await collect(box, lambda e: e == Handset("up", "local"))
        backend.box.handset_off_hook = False
        await collect(box, lambda e: e == Handset("down", "local"))
        await box.ring_handset(True)
        await box.route("headset")
        await box.flash(200)
        nursery.cancel_scope.cancel()
    assert backend.box.commands == [("ring_handset", True), ("route", "headset"), ("flash", 200)]


async def test_device_overrun_is_reported():
    line = PstnLine("jp")
    backend = make_box(line)
    async with trio.open_nursery() as nursery:
        box = await start(nursery, backend, tones="jp")
        backend.box.drop_frames(3)  # maybe before the first read: then only the overrun flag tells
        await collect(box, lambda e: isinstance(e, Overrun))
        line.incoming_call(Caller("1", cid="none"))
        await collect(box, lambda e: isinstance(e, Ring))
        backend.box.drop_frames(50)  # mid-stream: a sequence gap of 50 frames (1 s of line time)
        await collect(box, lambda e: isinstance(e, Overrun))
        nursery.cancel_scope.cancel()
    assert box.monitor.t == pytest.approx(line.t, abs=0.1)  # detector clock kept on line time


async def test_unplug_mid_call_reports_device_lost_and_replug_brings_it_back():
    line = PstnLine("jp")
    backend = make_box(line)
    async with trio.open_nursery() as nursery:
        box = await start(nursery, backend, tones="jp")
        line.incoming_call(Caller("0312345678"), script=[Say(30.0)])
        await collect(box, lambda e: isinstance(e, Ring))
        await box.hook(True)
        await collect(box, lambda e: e == ToneEvent("voice"))
        backend.unplug()
        lost = await collect(box, lambda e: isinstance(e, DeviceLost))
        assert "device disconnected" in lost[-1].reason
        assert box.state == "absent"
        with pytest.raises(BoxUnavailable, match="not connected"):
            await box.hook(False)
        backend.replug()
        await collect(box, lambda e: isinstance(e, DeviceReady))
        assert box.state == "ready"
        line.incoming_call(Caller("0612345678"))  # the box works again: a new call comes through
        events = await collect(box, lambda e: isinstance(e, Ring))
        nursery.cancel_scope.cancel()
    assert line.kinds("cpe_hangup")  # power loss put the relay on hook and cleared the call
    assert [e.number for e in events if isinstance(e, CallerId)] == ["0612345678"]


async def test_absent_at_start_then_plugged_and_serial_filter():
    line = PstnLine("jp")
    backend = UsbBoxBackend(VoiceBox(line, serial="HCRM-0002"))
    backend.unplug()
    async with trio.open_nursery() as nursery:
        wrong = UsbVoiceBox("other", backend=backend, serial="HCRM-0009", reconnect_backoff=BACKOFF)
        box = UsbVoiceBox("box1", backend=backend, serial="HCRM-0002", reconnect_backoff=BACKOFF)
        await nursery.start(wrong.run)
        await nursery.start(box.run)
        assert box.state == "absent"
        with pytest.raises(BoxUnavailable, match="box1: the voice box is not connected"):
            await box.dial("1")
        backend.replug()
        ready = await collect(box, lambda e: isinstance(e, DeviceReady))
        await trio.sleep(0.1)
        assert wrong.state == "absent"
        nursery.cancel_scope.cancel()
    assert ready[-1].serial == "HCRM-0002"


async def test_paced_box_delivers_one_frame_per_20_ms_of_real_time():
    backend = make_box(PstnLine("jp"), paced=True)
    dev = usb.core.find(idVendor=0x1D50, idProduct=0x6120, backend=backend)
    dev.set_configuration()
    start = time.monotonic()
    for _ in range(6):
        assert len(dev.read(0x81, 4096, 100)) == 12 + 320
    assert time.monotonic() - start >= 0.095  # 5 frame periods after the first read


class HidLikeProfile:
    """A vendor box in the other common shape: status in 1-byte HID-style reports on one stream,
    audio on another (USB Audio Class). It shows that a profile, not the driver, knows the bytes."""

    name = "hid-like"

    def __init__(self, reports: list[bytes]) -> None:
        self.reports = reports

    def matches(self, vendor_id: int, product_id: int) -> bool:
        return (vendor_id, product_id) == (0x1D50, 0x6120)

    def open(self, device):
        return HidLikeSession(self.reports)


class HidLikeSession:
    streams = ("hid", "audio")

    def __init__(self, reports: list[bytes]) -> None:
        self.reports = list(reports)

    def read(self, stream: str) -> bytes:
        time.sleep(0.002)  # the device's pace
        if stream == "audio":
            return bytes(320)
        if not self.reports:
            raise usb.core.USBTimeoutError("Operation timed out", -7, 110)
        return self.reports.pop(0)

    def write(self, data: bytes) -> None:
        pass

    def parse(self, stream: str, data: bytes):
        if stream == "audio":
            return [AudioIn(np.frombuffer(data, "<i2").astype(np.float32) / 32768)]
        bits = data[0]
        return [StatusReport(LineStatus(ring=bool(bits & 1), handset_off_hook=bool(bits & 2)))]

    def encode(self, command):
        return None  # this box takes no commands: the driver says so

    def encode_audio(self, pcm):
        return None

    def close(self) -> None:
        pass


async def test_a_second_profile_with_two_streams_drives_the_same_line_logic():
    backend = make_box(PstnLine("us"))
    profile = HidLikeProfile([b"\x01", b"\x00", b"\x02", b"\x00"])
    async with trio.open_nursery() as nursery:
        box = UsbVoiceBox("hid", backend=backend, profile=profile, tones="us", reconnect_backoff=BACKOFF)
        await nursery.start(box.run)
        events = await collect(box, lambda e: e == Handset("down", "local"))
        with pytest.raises(BoxUnavailable, match="the hid-like profile cannot do this"):
            await box.hook(True)
        nursery.cancel_scope.cancel()
    assert events[0] == DeviceReady("HCRM-0001", "hid-like")
    assert [e for e in events if not isinstance(e, DeviceReady)] == [Ring(), Handset("up"), Handset("down")]


async def test_reads_go_on_while_the_handshake_hook_command_is_written():
    """The NTT handshake's hook commands leave through the driver's command writer: the reader does not
    wait for them, so a slow write (here a transfer that takes 100 ms) does not hold back the line's frames
    (nor, with a shared DSP, its cohort's next batch), and the frames read meanwhile, which still show the
    box off hook, give no key presses or tones."""
    from drivers.voice.usbbox_protocol import OP_HOOK, OUT_TYPE_COMMAND

    line = PstnLine("jp")
    backend = make_box(line, paced=True)
    reads: list[float] = []
    hooks: list[tuple[float, float]] = []
    bulk_read, bulk_write = backend.bulk_read, backend.bulk_write

    def timed_read(*args):
        n = bulk_read(*args)
        reads.append(time.monotonic())
        return n

    def slow_hook_write(dev_handle, ep, intf, data, timeout):
        data = bytes(data)
        if data[3] != OUT_TYPE_COMMAND or data[8] != OP_HOOK:
            return bulk_write(dev_handle, ep, intf, data, timeout)
        t0 = time.monotonic()
        time.sleep(0.1)  # the transfer's latency (host and bus busy): the box acts on it at the end
        n = bulk_write(dev_handle, ep, intf, data, timeout)
        hooks.append((t0, time.monotonic()))
        return n

    backend.bulk_read, backend.bulk_write = timed_read, slow_hook_write
    async with trio.open_nursery() as nursery:
        box = await start(nursery, backend, tones="jp")
        line.incoming_call(Caller("0312345678"), max_rings=2)
        events = await collect(box, ring_after_caller_id())
        nursery.cancel_scope.cancel()
    assert [c.number for c in events if isinstance(c, CallerId)] == ["0312345678"]
    assert [r.detail for r in line.kinds("hook")][:2] == ["off", "on"] and len(hooks) >= 2
    for t0, t1 in hooks[:2]:
        during = [t for t in reads if t0 < t < t1]
        assert len(during) >= 3, (t1 - t0, during)  # a frame every 20 ms while the 100 ms write runs
    assert not any(isinstance(e, (DtmfDigit, ToneEvent)) for e in events)


async def test_a_hook_command_right_after_the_caller_id_goes_after_the_handshake_release():
    """A CRM may answer the moment the screen pop arrives, before the handshake's release (on hook) has
    been written: the release, decided first, still goes first, so the line ends off hook (answered), not
    released by a command that was held back; and the call is heard as a call (the caller's keys)."""
    line = PstnLine("jp")
    backend = make_box(line, paced=True)
    script = [Pause(0.3), Keys("47", 80, 80), Pause(0.3), HangUp()]
    async with trio.open_nursery() as nursery:
        box = await start(nursery, backend, tones="jp")
        line.incoming_call(Caller("0312345678"), script=script, max_rings=5)
        await collect(box, lambda e: isinstance(e, CallerId))
        await box.hook(True)  # at once: the release is still held for the next frame
        await trio.sleep(0.1)
        hooks = [v for name, v in backend.box.commands if name == "hook"]
        assert hooks == [True, False, True]  # primary response, release, answer
        assert backend.box.off_hook
        events = await collect(box, lambda e: isinstance(e, DtmfDigit) and e.digit == "7")
        nursery.cancel_scope.cancel()
    assert [e.digit for e in events if isinstance(e, DtmfDigit)] == ["4", "7"]
