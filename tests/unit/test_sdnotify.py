"""sd_notify client against a real AF_UNIX datagram socket, as systemd listens on it."""

from __future__ import annotations

import os
import secrets
import socket

import pytest
import trio

from gateway.sdnotify import (
    SystemdNotifier,
    keep_watchdog_alive,
    socket_address,
    watchdog_interval,
)


@pytest.fixture
def listener(tmp_path):
    """A bound datagram socket standing in for systemd's notify socket; yields (NOTIFY_SOCKET, socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield str(path), sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram queued on the socket, decoded."""
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_ready_stopping_watchdog_reach_a_path_socket(listener):
    path, sock = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()
    assert not notifier.enabled


def test_ready_with_status_is_one_datagram_of_two_lines(listener):
    path, sock = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})
    notifier.ready(status="serving http://127.0.0.1:8080\n2 modems")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving http://127.0.0.1:8080 2 modems"
    notifier.close()


def test_abstract_namespace_socket():
    name = f"hcrm-gateway-test-{os.getpid()}-{secrets.token_hex(4)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.address == "\0" + name
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.close()
    finally:
        sock.close()


def test_credentials_identify_this_process(listener):
    """systemd attributes a notification to a unit by the sender's PID (NotifyAccess=main)."""
    path, sock = listener
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})
    notifier.watchdog()
    data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    assert data == b"WATCHDOG=1"
    creds = [d for level, kind, d in ancillary
             if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    assert creds and int.from_bytes(creds[0][:4], "little") == os.getpid()
    notifier.close()


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"},
                                 {"NOTIFY_SOCKET": "@"}])
def test_no_manager_means_no_op(env):
    notifier = SystemdNotifier.from_environment(env)
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_gone_socket_is_reported_not_raised(tmp_path):
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    assert notifier.ready() is False
    notifier.close()


def test_malformed_field_is_refused(listener):
    path, _sock = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        notifier.notify("READY=1\nWATCHDOG=1")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        notifier.notify("READY")
    notifier.close()


def test_socket_address():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@/org/freedesktop/systemd1/notify") == "\0/org/freedesktop/systemd1/notify"
    assert socket_address("relative/path") is None


def test_watchdog_interval_is_half_the_timeout():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "4242"}, pid=4242) == 2.5


def test_watchdog_interval_absent_or_for_another_process():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": ""}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=4242) is None


@pytest.mark.parametrize("env", [{"WATCHDOG_USEC": "30s"}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "-5"},
                                 {"WATCHDOG_USEC": "100", "WATCHDOG_PID": "me"}])
def test_malformed_watchdog_environment_names_the_variable(env):
    with pytest.raises(ValueError, match="WATCHDOG_"):
        watchdog_interval(env)


async def test_keep_watchdog_alive_pings_every_interval(listener, autojump_clock):
    path, sock = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})
    async with trio.open_nursery() as nursery:
        await nursery.start(keep_watchdog_alive, notifier, 15.0)
        assert received(sock) == ["WATCHDOG=1"]  # one right away, before started()
        await trio.sleep(15.0 * 4 + 1)
        nursery.cancel_scope.cancel()
    assert received(sock) == ["WATCHDOG=1"] * 4
    notifier.close()


async def test_keep_watchdog_alive_refuses_a_zero_interval():
    notifier = SystemdNotifier(None)
    with pytest.raises(ValueError, match="positive"):
        await keep_watchdog_alive(notifier, 0)
