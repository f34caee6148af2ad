"""A tiny sd_notify client: tell systemd the daemon is ready, alive (watchdog) or stopping.

The protocol (sd_notify(3), NOTES): one datagram per notification, newline-separated ``KEY=VALUE`` lines, sent
to the AF_UNIX socket named in ``$NOTIFY_SOCKET``; a name starting with ``@`` is a Linux abstract-namespace
socket (the ``@`` stands for the leading NUL byte). The kernel attaches our credentials itself, which is how
systemd checks ``NotifyAccess=main``. Without ``$NOTIFY_SOCKET`` (run from a shell, in tests, under another
supervisor) every call is a no-op.

Watchdog (sd_watchdog_enabled(3)): with ``WatchdogSec=`` in the unit, systemd sets ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``); the service must send ``WATCHDOG=1`` more often than that, and the man page recommends
every half of it. A ``$WATCHDOG_PID`` naming another process means the watchdog is not ours.

No dependency on libsystemd or the ``systemd`` Python package, and failures never raise into the daemon: a
notification that cannot be sent is logged and reported as ``False``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog
import trio

log = structlog.get_logger("sdnotify")

READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


class SystemdNotifier:
    """Sends notifications to the service manager; ``enabled`` is false (and sending a no-op) without one."""

    def __init__(self, address: str | None):
        self.address = address
        self._sock: socket.socket | None = None
        if address is not None:
            # Non-blocking: a datagram to a full receive queue fails with EAGAIN instead of stalling trio's
            # thread; systemd drains its notify socket promptly, so losing one keep-alive is harmless.
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """The notifier ``$NOTIFY_SOCKET`` asks for; disabled when unset, empty or not a unix socket name."""
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        address = socket_address(value)
        if address is None:
            # systemd >= 254 may also hand out "vsock:CID:PORT" (VMs); a gateway on a host never sees it.
            log.warning("NOTIFY_SOCKET is not a unix socket path; systemd notifications disabled",
                        notify_socket=value)
            return cls(None)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True when sent, False when disabled or it failed."""
        if self._sock is None or self.address is None:
            return False
        for f in fields:
            if "=" not in f or "\n" in f:
                raise ValueError(f"sd_notify field must be one KEY=VALUE line, got {f!r}")
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.warning("systemd notification not sent", fields=list(fields), error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up finished (``Type=notify``: systemd starts dependent units now)."""
        return self.notify(READY, *([f"STATUS={_one_line(status)}"] if status else []))

    def stopping(self) -> bool:
        """Shutdown began: systemd shows 'deactivating' and stops expecting watchdog pings."""
        return self.notify(STOPPING)

    def watchdog(self) -> bool:
        """Keep-alive: the daemon's event loop is running."""
        return self.notify(WATCHDOG)

    def status(self, text: str) -> bool:
        """Free-form status line shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def socket_address(notify_socket: str) -> str | None:
    """The AF_UNIX address for a ``$NOTIFY_SOCKET`` value: a path, or ``@name`` -> abstract ``\\0name``."""
    if notify_socket.startswith("/"):
        return notify_socket
    if notify_socket.startswith("@") and len(notify_socket) > 1:
        return "\0" + notify_socket[1:]
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    recommends), or None when systemd expects none from this process. A malformed value raises ValueError
    naming it: silently not pinging would get the service killed by the watchdog, again and again."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "")
    if watchdog_pid:
        if not watchdog_pid.isdigit():
            raise ValueError(f"WATCHDOG_PID={watchdog_pid!r} is not a process id")
        if int(watchdog_pid) != (os.getpid() if pid is None else pid):
            return None
    if not usec.isdigit() or int(usec) == 0:
        raise ValueError(f"WATCHDOG_USEC={usec!r} is not a positive number of microseconds")
    return int(usec) / 1_000_000 / 2


async def keep_watchdog_alive(notifier: SystemdNotifier, interval: float, *,
                              task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Ping the watchdog every ``interval`` seconds until cancelled (run it in the daemon's root nursery).

    It proves that the trio event loop still schedules tasks; a loop blocked by a stuck synchronous call
    stops the pings and systemd restarts the service (``Restart=on-failure`` covers a watchdog timeout)."""
    if interval <= 0:
        raise ValueError(f"watchdog interval must be positive, got {interval}")
    notifier.watchdog()
    task_status.started()
    while True:
        await trio.sleep(interval)
        notifier.watchdog()


def _one_line(text: str) -> str:
    return " ".join(text.split())
