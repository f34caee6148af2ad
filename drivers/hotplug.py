"""Device hot-plug notices from the kernel's uevent netlink socket (Linux), for drivers waiting for a device.

A driver whose box or modem is gone retries on a bounded backoff; with a :class:`DeviceWatch` it also retries
the moment the system reports a new USB device or serial port, so a replugged box is back within
milliseconds instead of at the next backoff step, and an absent device costs no periodic work beyond the
longest backoff step (kept as the fallback for hosts where no uevents arrive, e.g. containers).

Sources (netlink(7), ``NETLINK_KOBJECT_UEVENT``):
- multicast group 1, the kernel: ``ACTION@DEVPATH\\0KEY=VALUE\\0...``, sent when the device appears,
  before udev has run its rules;
- multicast group 2, udev (systemd-udevd re-broadcasts each event after its rules ran, i.e. once the
  ``/dev/serial/by-id/...`` symlinks exist), framed by libudev: the 8-byte prefix ``libudev\\0``, magic
  0xfeedcafe in network byte order, then native-endian u32 header size, properties offset, properties length
  (systemd src/libsystemd/sd-device/device-monitor.c, ``struct monitor_netlink_header``), and the
  properties as ``KEY=VALUE\\0`` strings.
The watch listens to both: the kernel's event finds a USB box at once, udev's event finds the serial symlink.
Parsing is pure (:func:`parse_uevent`); :class:`DeviceWatch` is the thin trio part.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

import structlog
import trio

__all__ = ["DeviceChange", "DeviceWatch", "parse_uevent"]

log = structlog.get_logger("drivers.hotplug")

NETLINK_KOBJECT_UEVENT = 15  # linux/netlink.h
GROUP_KERNEL = 1
GROUP_UDEV = 2
UDEV_PREFIX = b"libudev\0"
UDEV_MAGIC = 0xFEEDCAFE
_UDEV_HEADER = struct.Struct("=8sIIII")  # prefix, magic (big-endian on the wire), header size, props off/len
WATCHED_SUBSYSTEMS = frozenset({"usb", "tty", "usbmisc", "sound"})
ARRIVALS = frozenset({"add", "bind", "change", "move"})


@dataclass(frozen=True)
class DeviceChange:
    action: str  # add, remove, bind, unbind, change, move
    subsystem: str
    devpath: str
    properties: dict[str, str]
    source: str  # "kernel" | "udev"

    @property
    def is_arrival(self) -> bool:
        """Something a waiting driver may now find (removals are seen by the driver's own I/O)."""
        return self.action in ARRIVALS and self.subsystem in WATCHED_SUBSYSTEMS


def _properties(block: bytes) -> dict[str, str]:
    props: dict[str, str] = {}
    for item in block.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            props[key.decode("ascii", "replace")] = value.decode("utf-8", "replace")
    return props


def parse_uevent(datagram: bytes) -> DeviceChange | None:
    """One netlink uevent datagram -> DeviceChange; None when malformed or without ACTION/SUBSYSTEM."""
    if datagram.startswith(UDEV_PREFIX):
        if len(datagram) < _UDEV_HEADER.size:
            return None
        _prefix, magic, _size, offset, length = _UDEV_HEADER.unpack_from(datagram)
        if socket.ntohl(magic) != UDEV_MAGIC or offset + length > len(datagram) or offset < _UDEV_HEADER.size:
            return None
        props, source = _properties(datagram[offset : offset + length]), "udev"
    else:
        head, sep, rest = datagram.partition(b"\0")
        if not sep or b"@" not in head:
            return None
        props, source = _properties(rest), "kernel"
    action, subsystem = props.get("ACTION"), props.get("SUBSYSTEM")
    if not action or not subsystem:
        return None
    return DeviceChange(action, subsystem, props.get("DEVPATH", ""), props, source)


class DeviceWatch:
    """Wakes drivers waiting for a device when the system reports one arriving.

    ``run`` (in the daemon's nursery) reads the uevent socket; a driver replaces its backoff sleep with
    ``await watch.wait_retry(delay)``, which returns after ``delay`` or at the next arrival, whichever comes
    first.
    Without netlink (not Linux, or a sandbox that refuses the socket) ``run`` logs once and returns, and
    ``wait_retry`` is the plain backoff.
    """

    def __init__(self) -> None:
        self._arrived = trio.Event()
        self.listening = False
        self.arrivals = 0

    def notify(self, change: DeviceChange | None = None) -> None:
        """Wake every waiting driver (also used by tests and by simulators that 'plug in' a device)."""
        self.arrivals += 1
        self._arrived.set()
        self._arrived = trio.Event()

    async def wait_retry(self, delay: float) -> None:
        with trio.move_on_after(delay):
            await self._arrived.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            sock = trio.socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
        except (OSError, AttributeError) as exc:  # AttributeError: no AF_NETLINK on this platform
            log.info("device_watch_unavailable", reason=str(exc), fallback="backoff")
            task_status.started()
            return
        with sock:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                await sock.bind((0, GROUP_KERNEL | GROUP_UDEV))
            except OSError as exc:
                log.info("device_watch_unavailable", reason=str(exc), fallback="backoff")
                task_status.started()
                return
            self.listening = True
            task_status.started()
            try:
                while True:
                    try:
                        datagram = await sock.recv(65536)
                    except OSError as exc:
                        if exc.errno != errno.ENOBUFS:
                            raise
                        self.notify()  # events were dropped in a storm: something may have arrived
                        continue
                    change = parse_uevent(datagram)
                    if change is not None and change.is_arrival:
                        log.debug("device_arrived", subsystem=change.subsystem, devpath=change.devpath,
                                  source=change.source)
                        self.notify(change)
            finally:
                self.listening = False
