"""A serial device for trio without a thread per port: pyserial opens and configures it (termios), the
I/O runs on its file descriptor with trio's readiness waits. Shared by the GSM and V.253 modem drivers.

pyserial traps (notes in the repository's shared material, api.md §8): ``inter_byte_timeout=0`` must be given
to the constructor (setting it after opening is ignored in pyserial 3.5) so that VMIN=1 and an idle read is
EAGAIN instead of a false end of file; a pty or a vanished USB device answers EIO or end of file, which is
reported as :class:`PortGone` (unplugged), distinct from :class:`PortError` (present but unusable).
"""

from __future__ import annotations

import errno
import os

import serial
import trio


class PortGone(Exception):
    """The device vanished: EIO, end of file, or the path no longer exists."""


class PortError(Exception):
    """The device exists but cannot be opened (permissions, busy)."""


class SerialPort:
    def __init__(self, path: str, baudrate: int, *, read_size: int = 4096) -> None:
        if not os.path.exists(path):
            raise PortGone(f"{path} does not exist")
        try:
            self._serial = serial.Serial(
                path, baudrate=baudrate, timeout=0, inter_byte_timeout=0, exclusive=True
            )
        except serial.SerialException as exc:
            if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO) or not os.path.exists(path):
                raise PortGone(f"{path} vanished while opening: {exc}") from None
            raise PortError(f"cannot open {path}: {exc}") from None
        except OSError as exc:  # pyserial lets some termios errors through unwrapped
            raise PortError(f"cannot configure {path}: {exc}") from None
        self.path = path
        self._read_size = read_size
        self._fd = self._serial.fileno()
        os.set_blocking(self._fd, False)
        self._closed = False

    async def read(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            try:
                data = os.read(self._fd, self._read_size)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise PortGone(f"{self.path}: {exc.strerror or exc}") from None
            if not data:
                raise PortGone(f"{self.path}: end of file (device hung up)")
            return data

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._fd)  # the device stopped reading: flow control
            except OSError as exc:
                raise PortGone(f"{self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.notify_closing(self._fd)
        try:
            self._serial.close()
        except OSError:  # closing a hung-up tty can fail; the fd is released either way
            pass
