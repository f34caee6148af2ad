"""A simulated "hcrm open voice box" behind a pyusb backend, fed by a :class:`PstnLine`.

``usb.core.find(idVendor=0x1D50, idProduct=0x6120, backend=UsbBoxBackend(box))`` returns an ordinary
pyusb ``Device``: one configuration, one vendor-specific interface, bulk IN 0x81 (a line frame per
read: status flags + 20 ms of 8 kHz s16 PCM heard on the line) and bulk OUT 0x02 (audio to send and
commands: hook, flash, dial, ring the handset port, route, frame phase).  Frame layout:
``docs/usb-box-protocol.md``; the packing below is written from that document, not shared with the
driver's codec.

The box's sample clock is the host's reads: each IN transfer advances the line by one frame (160 samples,
or 160 + shift once after a FRAME_PHASE command), so a test runs as fast as the driver reads
(``paced=True`` holds each read until its frame is due in real time).
``unplug()`` makes the device vanish from enumeration and every transfer on an open handle fail with
``USBError`` errno ENODEV, as libusb reports a removed device; ``replug()`` brings it back with a new
address.  Descriptor getters raise ``IndexError`` past the last configuration, interface, alternate
setting or endpoint, which pyusb relies on to stop probing.
"""

from __future__ import annotations

import array
import errno
import struct
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import usb.backend
import usb.core

from simulators.pstn_line import FRAME, FRAME_S, LineFrame, PstnLine
from simulators.signals import dtmf_sequence, silence

VENDOR_ID = 0x1D50  # OpenMoko's community vendor id, used by open hardware projects
PRODUCT_ID = 0x6120
EP_IN, EP_OUT = 0x81, 0x02
PREPARE_S = 0.005  # a paced box builds its next frame this long before it is due (see VoiceBox.pace)
_IN_HEAD = struct.Struct("<2sBBHHHH")  # "HV", version, type 0x01, seq, flags, samples, ack
_OUT_HEAD = struct.Struct("<2sBBHH")  # "HC", version, type (0x02 audio, 0x03 command), seq, length
_BITS = {
    "off_hook": 0, "ring": 1, "polarity_reversed": 2, "loop_current": 3, "handset_off_hook": 4,
    "route_headset": 5, "dialing": 6, "overrun": 7, "handset_ringing": 8,
}


def _enodev() -> usb.core.USBError:
    return usb.core.USBError("No such device (it may have been disconnected)", -4, errno.ENODEV)


@dataclass
class VoiceBox:
    """The box's own state: hook relay, DTMF dialler, flash timer, handset port, host audio buffer."""

    line: PstnLine
    serial: str = "HCRM-0001"
    paced: bool = False
    off_hook: bool = False
    handset_off_hook: bool = False
    handset_ringing: bool = False
    route_headset: bool = False
    seq: int = 0
    ack: int = 0
    dialled: list[str] = field(default_factory=list)  # dial strings received, for assertions
    commands: list[tuple] = field(default_factory=list)  # every command as (name, value)
    host_audio: list[np.ndarray] = field(default_factory=list)  # audio written to OUT, as received
    _play: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _dial: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _flash_frames: int = 0
    _drop: int = 0
    _due: float | None = None
    _shift: int = 0  # FRAME_PHASE: samples to add to the next IN frame
    _captured: np.ndarray = field(default_factory=lambda: np.zeros(0))  # line audio not yet in an IN frame
    delivered: int = 0  # line samples sent (or dropped) in IN frames so far: the end of the last one
    last_frame: LineFrame | None = None

    def drop_frames(self, count: int) -> None:
        """Lose the next ``count`` IN frames (the line still advances): a device-side overrun."""
        self._drop += count

    # -- OUT endpoint
    def receive(self, data: bytes) -> None:
        if len(data) < _OUT_HEAD.size:
            raise usb.core.USBError("Pipe error (OUT packet shorter than its header)", -9, errno.EPIPE)
        magic, version, kind, seq, length = _OUT_HEAD.unpack_from(data)
        payload = data[_OUT_HEAD.size :]
        if magic != b"HC" or version != 1 or len(payload) != length:
            raise usb.core.USBError("Pipe error (malformed OUT packet)", -9, errno.EPIPE)
        if kind == 0x02:
            pcm = np.frombuffer(payload, dtype="<i2").astype(float) / 32768.0
            self.host_audio.append(pcm)
            if not self.route_headset:
                self._play = np.concatenate((self._play, pcm))
        elif kind == 0x03 and payload:
            self._command(payload[0], payload[1:])
        else:
            raise usb.core.USBError(f"Pipe error (OUT type 0x{kind:02X})", -9, errno.EPIPE)
        self.ack = seq

    def _command(self, op: int, args: bytes) -> None:
        if op == 0x01:
            self.off_hook = bool(args[0])
            self.commands.append(("hook", self.off_hook))
            self.line.set_hook(self.off_hook)
        elif op == 0x02:
            ms = struct.unpack("<H", args[:2])[0]
            self.commands.append(("flash", ms))
            if self.off_hook:
                self._flash_frames = max(1, round(ms / 1000 / FRAME_S))
                self.line.set_hook(False)
        elif op == 0x03:
            on_ms, off_ms, digits = args[0], args[1], args[2:].decode("ascii")
            self.dialled.append(digits)
            self.commands.append(("dial", digits))
            parts = []
            for i, group in enumerate(digits.split(",")):
                if i:
                    parts.append(silence(1.0))
                if group:
                    parts.append(dtmf_sequence(group, on_ms, off_ms, -8.0))
            self._dial = np.concatenate([self._dial, *parts])
        elif op == 0x04:
            self.handset_ringing = bool(args[0])
            self.commands.append(("ring_handset", self.handset_ringing))
        elif op == 0x05:
            self.route_headset = bool(args[0])
            self.commands.append(("route", "headset" if self.route_headset else "line"))
        elif op == 0x06 and len(args) == 2:
            shift = struct.unpack("<h", args)[0]
            if not -FRAME < shift < FRAME or shift == 0:
                raise usb.core.USBError(f"Pipe error (frame phase shift {shift})", -9, errno.EPIPE)
            self.commands.append(("frame_phase", shift))
            self._shift = shift
        else:
            raise usb.core.USBError(f"Pipe error (unknown command 0x{op:02X})", -9, errno.EPIPE)

    # -- IN endpoint
    def pace(self) -> None:
        """With ``paced``, block until the next frame may be built: ``PREPARE_S`` before it is due, i.e.
        before its last sample is captured on the box's own frame clock (20 ms frames; a FRAME_PHASE shift
        makes the next one longer or shorter). The simulation builds the frame ahead (so that 32 boxes
        simulated by one process are not late when their frames are due together), then ``release``
        holds it until it is due. A command that arrives in those last milliseconds acts on the next
        frame, as in a box whose commands take a few milliseconds."""
        if self.paced:
            now = time.monotonic()
            self._due = now if self._due is None else self._due + (FRAME + self._shift) * FRAME_S / FRAME
            if self._due - PREPARE_S > now:
                time.sleep(self._due - PREPARE_S - now)

    def release(self) -> None:
        """With ``paced``, block until the frame built by ``next_frame`` is due."""
        if self.paced and self._due is not None:
            now = time.monotonic()
            if self._due > now:
                time.sleep(self._due - now)

    def _capture(self, n: int) -> np.ndarray:
        """The next ``n`` samples heard on the line (the line runs in 20 ms steps; a shifted frame leaves
        the rest of a step for the next frame)."""
        while self._captured.size < n:
            frame = self.line.step(self._upstream())
            self._tick_flash()
            self.last_frame = frame
            self._captured = np.concatenate((self._captured, frame.audio))
        out, self._captured = self._captured[:n], self._captured[n:]
        self.delivered += n
        return out

    def next_frame(self) -> bytes:
        n, self._shift = FRAME + self._shift, 0
        lost = 0
        while self._drop:
            self._drop -= 1
            lost += 1
            self._capture(FRAME)
        audio = self._capture(n)
        self.seq = (self.seq + lost) % 65536
        st = self.last_frame.state
        flags = {
            "off_hook": self.off_hook, "ring": st.ringing, "polarity_reversed": st.polarity < 0,
            "loop_current": st.loop_current, "handset_off_hook": self.handset_off_hook,
            "route_headset": self.route_headset, "dialing": bool(self._dial.size or self._flash_frames),
            "overrun": lost > 0, "handset_ringing": self.handset_ringing,
        }
        word = sum(1 << _BITS[k] for k, v in flags.items() if v)
        pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
        out = _IN_HEAD.pack(b"HV", 1, 0x01, self.seq, word, pcm.size, self.ack) + pcm.tobytes()
        self.seq = (self.seq + 1) % 65536
        return out

    def _upstream(self) -> np.ndarray:
        up = np.zeros(FRAME)
        source = "_dial" if self._dial.size else "_play"
        buf = getattr(self, source)
        n = min(FRAME, buf.size)
        up[:n] = buf[:n]
        setattr(self, source, buf[n:])
        return up if self.off_hook else np.zeros(FRAME)

    def _tick_flash(self) -> None:
        if self._flash_frames:
            self._flash_frames -= 1
            if not self._flash_frames:
                self.line.set_hook(self.off_hook)

    def power_loss(self) -> None:
        """Unplugged: the relay falls back on hook and the box forgets its state."""
        self.off_hook = False
        self.line.set_hook(False)
        self.route_headset = self.handset_ringing = False
        self._play = self._dial = np.zeros(0)
        self._flash_frames = 0
        self.seq = self.ack = 0
        self._due = None
        self._shift = 0
        self.delivered += self._captured.size  # heard by the box, never sent: lost with its power
        self._captured = np.zeros(0)


def _desc(**fields) -> SimpleNamespace:
    return SimpleNamespace(extra_descriptors=[], **fields)


class UsbBoxBackend(usb.backend.IBackend):
    """A one-device USB bus for pyusb. ``box.line`` is the analogue line the box is plugged into."""

    def __init__(self, box: VoiceBox, *, vendor_id: int = VENDOR_ID, product_id: int = PRODUCT_ID) -> None:
        self.box = box
        self.vendor_id, self.product_id = vendor_id, product_id
        self._lock = threading.Lock()
        self._plugged = True
        self._address = 5
        self.transfers = 0

    # -- hot-plug
    @property
    def plugged(self) -> bool:
        return self._plugged

    def unplug(self) -> None:
        with self._lock:
            self._plugged = False
            self.box.power_loss()

    def replug(self) -> None:
        with self._lock:
            self._plugged = True
            self._address += 1  # a re-enumerated device gets a new address

    # -- enumeration and descriptors
    def enumerate_devices(self):
        return [SimpleNamespace(address=self._address)] if self._plugged else []

    def get_parent(self, dev):
        return None

    def get_device_descriptor(self, dev):
        return _desc(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0,
            bDeviceProtocol=0, bMaxPacketSize0=64, idVendor=self.vendor_id, idProduct=self.product_id,
            bcdDevice=0x0100, iManufacturer=1, iProduct=2, iSerialNumber=3, bNumConfigurations=1,
            address=dev.address, bus=1, port_number=2, port_numbers=(2,), speed=3,
        )

    def get_configuration_descriptor(self, dev, config):
        if config != 0:
            raise IndexError(f"configuration {config} does not exist")
        return _desc(
            bLength=9, bDescriptorType=2, wTotalLength=32, bNumInterfaces=1, bConfigurationValue=1,
            iConfiguration=0, bmAttributes=0x80, bMaxPower=50,
        )

    def get_interface_descriptor(self, dev, intf, alt, config):
        if config != 0 or intf != 0 or alt != 0:
            raise IndexError(f"interface {intf} alternate setting {alt} does not exist")
        return _desc(
            bLength=9, bDescriptorType=4, bInterfaceNumber=0, bAlternateSetting=0, bNumEndpoints=2,
            bInterfaceClass=0xFF, bInterfaceSubClass=0, bInterfaceProtocol=0, iInterface=0,
        )

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        if config != 0 or intf != 0 or alt != 0 or ep not in (0, 1):
            raise IndexError(f"endpoint {ep} does not exist")
        return _desc(
            bLength=7, bDescriptorType=5, bEndpointAddress=(EP_IN, EP_OUT)[ep], bmAttributes=0x02,
            wMaxPacketSize=512, bInterval=0, bRefresh=0, bSynchAddress=0,
        )

    # -- handles
    def open_device(self, dev):
        with self._lock:
            if not self._plugged or dev.address != self._address:
                raise _enodev()
            return SimpleNamespace(address=dev.address, interfaces=set())

    def _check(self, handle) -> None:
        if not self._plugged or handle.address != self._address:
            raise _enodev()

    def close_device(self, dev_handle):
        pass

    def set_configuration(self, dev_handle, config_value):
        with self._lock:
            self._check(dev_handle)

    def get_configuration(self, dev_handle):
        with self._lock:
            self._check(dev_handle)
            return 1

    def set_interface_altsetting(self, dev_handle, intf, altsetting):
        with self._lock:
            self._check(dev_handle)

    def claim_interface(self, dev_handle, intf):
        with self._lock:
            self._check(dev_handle)
            dev_handle.interfaces.add(intf)

    def release_interface(self, dev_handle, intf):
        dev_handle.interfaces.discard(intf)

    def is_kernel_driver_active(self, dev_handle, intf):
        return False

    def detach_kernel_driver(self, dev_handle, intf):
        pass

    def attach_kernel_driver(self, dev_handle, intf):
        pass

    def clear_halt(self, dev_handle, ep):
        with self._lock:
            self._check(dev_handle)

    def reset_device(self, dev_handle):
        with self._lock:
            self._check(dev_handle)
            self.box.power_loss()

    # -- transfers
    def bulk_write(self, dev_handle, ep, intf, data, timeout):
        with self._lock:
            self._check(dev_handle)
            if ep != EP_OUT:
                raise usb.core.USBError(f"Pipe error (endpoint 0x{ep:02X} is not OUT)", -9, errno.EPIPE)
            self.box.receive(bytes(data))
            self.transfers += 1
            return len(data)

    def bulk_read(self, dev_handle, ep, intf, buff, timeout):
        self.box.pace()
        with self._lock:
            self._check(dev_handle)
            if ep != EP_IN:
                raise usb.core.USBError(f"Pipe error (endpoint 0x{ep:02X} is not IN)", -9, errno.EPIPE)
            frame = self.box.next_frame()
            self.transfers += 1
        self.box.release()
        if len(frame) > len(buff):
            raise usb.core.USBError("Overflow (buffer smaller than the frame)", -8, errno.EOVERFLOW)
        buff[: len(frame)] = array.array("B", frame)
        return len(frame)

    def ctrl_transfer(self, dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        with self._lock:
            self._check(dev_handle)
        if bmRequestType == 0x80 and bRequest == 0x06 and wValue >> 8 == 3:  # GET_DESCRIPTOR string
            index = wValue & 0xFF
            if index == 0:
                desc = bytes((4, 3, 0x09, 0x04))  # LANGID 0x0409
            else:
                text = {1: "hcrm-gateway project", 2: "hcrm open voice box", 3: self.box.serial}.get(index)
                if text is None:
                    raise usb.core.USBError("Pipe error (no such string)", -9, errno.EPIPE)
                raw = text.encode("utf-16-le")
                desc = bytes((2 + len(raw), 3)) + raw
            n = min(len(desc), len(data))
            data[:n] = array.array("B", desc[:n])
            return n
        raise usb.core.USBError("Pipe error (control request not supported)", -9, errno.EPIPE)


def make_box(line: PstnLine, *, serial: str = "HCRM-0001", paced: bool = False) -> UsbBoxBackend:
    """A box plugged into ``line`` on its own simulated bus."""
    return UsbBoxBackend(VoiceBox(line, serial=serial, paced=paced))


__all__ = ["EP_IN", "EP_OUT", "PRODUCT_ID", "VENDOR_ID", "UsbBoxBackend", "VoiceBox", "make_box"]
