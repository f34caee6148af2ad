"""A pseudo-terminal that stands in for a modem's serial port, with a stable symlink and unplug/replug.

The simulator keeps the master side; a client (our driver, gammu, minicom) opens the slave or the symlink
like any /dev/ttyUSBn. Both sides are put in raw mode before any byte moves, so the line discipline never
echoes, translates CR/LF or eats Ctrl-Z. The simulator also holds the slave open itself: without that, the
master reads EIO whenever no client is attached, and a client's close would look like an unplug.
"""

from __future__ import annotations

import errno
import os
import tty

import trio

__all__ = ["PortUnplugged", "PtyPort"]


class PortUnplugged(Exception):
    """The simulated port was unplugged while the simulator was using it."""


class PtyPort:
    def __init__(self, link: str | None = None) -> None:
        self.link = link
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_path: str | None = None

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def slave_path(self) -> str | None:
        return self._slave_path

    @property
    def path(self) -> str | None:
        """What a client opens: the symlink when one was asked for, otherwise the slave device."""
        if self.link is not None:
            return self.link
        return self._slave_path

    def open(self) -> str:
        """Create the pty (and point the symlink at it); returns :attr:`path`."""
        if self._master is not None:
            raise RuntimeError("the port is already open")
        master, slave = os.openpty()
        try:
            tty.setraw(master)
            tty.setraw(slave)
            os.set_blocking(master, False)
            slave_path = os.ttyname(slave)
            if self.link is not None:
                _point_symlink(self.link, slave_path)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._slave_path = master, slave, slave_path
        path = self.path
        assert path is not None
        return path

    def unplug(self) -> None:
        """Close the master: the client's reads see end of file / EIO and writes fail with EIO."""
        master, slave = self._master, self._slave
        self._master = self._slave = None
        if master is not None:
            trio.lowlevel.notify_closing(master)  # wakes our own reader/writer with ClosedResourceError
            os.close(master)
        if slave is not None:
            os.close(slave)
        if self.link is not None and self._slave_path is not None:
            _remove_symlink_if_ours(self.link, self._slave_path)

    def replug(self) -> str:
        """A fresh pty (new slave path) behind the same symlink, as when a USB modem comes back."""
        self.unplug()
        return self.open()

    close = unplug

    async def receive_some(self, max_bytes: int = 4096) -> bytes:
        """Bytes the client wrote; raises :class:`PortUnplugged` once the port is unplugged."""
        while True:
            master = self._master
            if master is None:
                raise PortUnplugged("the simulated port is unplugged")
            try:
                data = os.read(master, max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno == errno.EBADF or exc.errno == errno.EIO:
                    raise PortUnplugged("the simulated port was closed") from None
                raise
            else:
                if data:
                    return data
            try:
                await trio.lowlevel.wait_readable(master)
            except (trio.ClosedResourceError, OSError):
                raise PortUnplugged("the simulated port was unplugged") from None

    async def send_all(self, data: bytes, *, stall_timeout: float = 2.0) -> bool:
        """Write everything, or drop the rest when the port is unplugged or the client stops reading.

        A real modem's UART never waits for the host; if the slave's input queue stays full for
        `stall_timeout` seconds, the remaining bytes are dropped like characters on a wire nobody reads.
        Returns True when all bytes went out.
        """
        view = memoryview(data)
        while view:
            master = self._master
            if master is None:
                return False
            try:
                written = os.write(master, view)
            except BlockingIOError:
                with trio.move_on_after(stall_timeout):
                    try:
                        await trio.lowlevel.wait_writable(master)
                    except (trio.ClosedResourceError, OSError):
                        return False
                    continue
                return False
            except OSError:
                return False
            view = view[written:]
        return True


def _point_symlink(link: str, target: str) -> None:
    """Create or atomically repoint `link` -> `target`; refuse to replace anything that is not a symlink."""
    if os.path.lexists(link) and not os.path.islink(link):
        raise FileExistsError(f"{link} exists and is not a symlink; refusing to replace it")
    temporary = f"{link}.{os.getpid()}.tmp"
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(target, temporary)
    os.replace(temporary, link)


def _remove_symlink_if_ours(link: str, target: str) -> None:
    try:
        if os.path.islink(link) and os.readlink(link) == target:
            os.unlink(link)
    except FileNotFoundError:
        pass
