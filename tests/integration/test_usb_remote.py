"""The benchmarks' box farm (simulators/usb_remote.py): the real USB box driver over a pyusb backend whose
device lives in another process behaves as over the in-process simulator: found by serial, caller ID through
the NTT handshake, hook commands reaching the box, and an unplug reported as the device lost (ENODEV)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from drivers.dsp.events import CallerId
from drivers.voice.events import DeviceLost, DeviceReady, Ring
from drivers.voice.usbbox import UsbVoiceBox
from simulators.pstn_line import Caller
from simulators.usb_remote import FarmControl, RemoteUsbBackend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def farm_socket(tmp_path):
    """A box farm process with boxes "a" and "b" (serials HCRM-0000, HCRM-0001); its socket's path."""
    path = str(tmp_path / "farm.sock")
    farm = subprocess.Popen([sys.executable, "-m", "simulators.usb_remote", "--socket", path,
                             "--lines", "a,b", "--country", "jp"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert farm.stdout.readline().strip() == b"READY"
        yield path
    finally:
        farm.stdin.close()
        farm.wait(timeout=10)


async def test_driver_over_a_box_in_another_process(farm_socket):
    control = FarmControl(farm_socket)
    backend = RemoteUsbBackend(farm_socket, "b")
    caller = Caller("0312345678", cid="v23_ntt")
    try:
        box = UsbVoiceBox("line-b", serial="HCRM-0001", backend=backend, reconnect_backoff=(0.05,),
                          tones="jp")
        got: list = []
        async with trio.open_nursery() as nursery:
            await nursery.start(box.run)
            with trio.fail_after(20):
                async for event in box.events:
                    got.append(event)
                    if isinstance(event, DeviceReady):
                        assert event.serial == "HCRM-0001"  # box "b" is the second: its serial, not "a"'s
                        await trio.to_thread.run_sync(
                            lambda: control.call("line:b", "incoming_call", caller, max_rings=2))
                    if isinstance(event, Ring) and any(isinstance(e, CallerId) for e in got):
                        await trio.to_thread.run_sync(lambda: control.call("backend:b", "unplug"))
                    if isinstance(event, DeviceLost):
                        break
            nursery.cancel_scope.cancel()
        numbers = [e.number for e in got if isinstance(e, CallerId)]
        assert numbers == ["0312345678"]
        lost = [e for e in got if isinstance(e, DeviceLost)]
        assert lost and "device disconnected" in lost[0].reason
        # The handshake's hook commands went through the socket to the box: off hook, then on hook.
        hooks = [v for name, v in control.get("box:b", "commands") if name == "hook"]
        assert hooks[:2] == [True, False]
        assert [r.kind for r in control.call("line:b", "kinds", "cid")]  # the exchange sent it
    finally:
        backend.close()
        control.close()
