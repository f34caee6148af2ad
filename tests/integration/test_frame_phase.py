"""Boxes that start streaming at different moments deliver their frames at different phases of the 20 ms;
the real USB box driver on one SharedLineDsp asks each (after the first) for one FRAME_PHASE shift, so
that all of them deliver together (docs/usb-box-protocol.md, "Frame phase"). Paced simulated boxes, real
time."""

from __future__ import annotations

import trio

from drivers.voice.events import DeviceReady
from drivers.voice.shared_dsp import SharedLineDsp
from drivers.voice.usbbox import UsbVoiceBox
from simulators.pstn_line import PstnLine
from simulators.usb_box import make_box


def _phase_ms(due: float, ref: float) -> float:
    """Circular distance (ms) between two frame clocks' phases."""
    d = (due - ref) % 0.02
    return 1000 * min(d, 0.02 - d)


async def test_the_driver_lines_up_the_frame_phases_of_its_boxes():
    dsp = SharedLineDsp(form_s=1.0)
    backends = [make_box(PstnLine("jp"), serial=f"HCRM-{i:04d}", paced=True) for i in range(3)]
    boxes = [UsbVoiceBox(f"line{i}", serial=f"HCRM-{i:04d}", backend=b, tones="jp", dsp=dsp)
             for i, b in enumerate(backends)]
    async with trio.open_nursery() as nursery:
        for box in boxes:
            await nursery.start(box.run)
            with trio.fail_after(5):
                while not isinstance(await box.events.receive(), DeviceReady):
                    pass
            await trio.sleep(0.007)  # the next box starts streaming 7 ms later (another phase)
            nursery.start_soon(_drain, box)
        await trio.sleep(2.5)
        dues = [b.box._due for b in backends]
        nursery.cancel_scope.cancel()
    shifts = [[v for name, v in b.box.commands if name == "frame_phase"] for b in backends]
    assert sum(len(s) for s in shifts) >= 2 and dsp.phase_shifts >= 2, shifts
    assert all(abs(v) < 160 for s in shifts for v in s)
    # Every box now closes its frames within 1 ms of the others (they were ~7 and ~14 ms apart).
    assert max(_phase_ms(d, dues[0]) for d in dues) <= 1.0, [_phase_ms(d, dues[0]) for d in dues]


async def _drain(box: UsbVoiceBox) -> None:
    async for _ in box.events:
        pass


async def test_a_box_that_stalls_frame_phase_is_reopened_once_and_not_asked_again():
    """Firmware without FRAME_PHASE answers it with a STALL (EPIPE). The driver reopens the box (a stalled
    endpoint needs it) and never asks that box again: one DeviceLost, then the line works as before."""
    import errno

    import usb.core

    from drivers.voice.events import DeviceLost

    dsp = SharedLineDsp(form_s=1.0)
    backends = [make_box(PstnLine("jp"), serial=f"HCRM-{i:04d}", paced=True) for i in range(2)]
    old = backends[1].box
    tried: list[int] = []
    command = old._command

    def old_firmware(op: int, args: bytes) -> None:
        if op == 0x06:
            tried.append(op)
            raise usb.core.USBError("Pipe error (unknown command 0x06)", -9, errno.EPIPE)
        command(op, args)

    old._command = old_firmware
    boxes = [UsbVoiceBox(f"line{i}", serial=f"HCRM-{i:04d}", backend=b, tones="jp", dsp=dsp,
                         reconnect_backoff=(0.05,)) for i, b in enumerate(backends)]
    seen: list = []
    async with trio.open_nursery() as nursery:
        await nursery.start(boxes[0].run)
        nursery.start_soon(_drain, boxes[0])
        await trio.sleep(0.009)  # the second box streams 9 ms later: it is asked to move
        await nursery.start(boxes[1].run)
        with trio.move_on_after(3.0):
            async for event in boxes[1].events:
                seen.append(type(event).__name__)
        nursery.cancel_scope.cancel()
    assert tried == [0x06] and boxes[1].frame_phase_refused
    assert seen.count(DeviceLost.__name__) == 1 and seen.count(DeviceReady.__name__) == 2, seen
    assert backends[1].transfers > 100  # it kept streaming after it was reopened
