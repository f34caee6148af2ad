"""drivers/hotplug.py: uevent parsing (kernel and libudev framing, built here from netlink(7) and systemd's
device-monitor header layout), the watch's wake-ups, and drivers that come back at the arrival instead of at
their next backoff step."""

from __future__ import annotations

import os
import socket
import struct
import sys
from functools import partial

import pytest
import trio
import trio.testing

from drivers.gsm.modem import GsmModem
from drivers.hotplug import GROUP_KERNEL, NETLINK_KOBJECT_UEVENT, DeviceWatch, parse_uevent
from drivers.voice.events import DeviceReady
from drivers.voice.usbbox import UsbVoiceBox
from simulators.gsm_modem import SimulatedGsmModem
from simulators.pstn_line import PstnLine
from simulators.usb_box import make_box

LONG_BACKOFF = (0.01, 60.0)  # the first retry fails while unplugged; the next step is a minute away

KERNEL_USB_ADD = (
    b"add@/devices/pci0000:00/0000:00:14.0/usb1/1-2\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:14.0/usb1/1-2\0"
    b"SUBSYSTEM=usb\0MAJOR=189\0MINOR=3\0DEVNAME=bus/usb/001/004\0DEVTYPE=usb_device\0PRODUCT=1d50/6120/100\0"
    b"TYPE=0/0/0\0BUSNUM=001\0DEVNUM=004\0SEQNUM=4711\0"
)


def udev_message(properties: list[bytes], magic: int = 0xFEEDCAFE) -> bytes:
    """libudev's netlink framing: prefix, magic (network order), header size, properties offset/length,
    subsystem/devtype hashes and the tag bloom filter (systemd's struct monitor_netlink_header, 40 bytes)."""
    body = b"".join(p + b"\0" for p in properties)
    header = struct.pack("=8sIIIIIIII", b"libudev\0", socket.htonl(magic), 40, 40, len(body), 0, 0, 0, 0)
    return header + body


UDEV_TTY_ADD = udev_message([
    b"ACTION=add",
    b"DEVPATH=/devices/pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0/ttyUSB0/tty/ttyUSB0",
    b"SUBSYSTEM=tty",
    b"DEVNAME=/dev/ttyUSB0",
    b"DEVLINKS=/dev/serial/by-id/usb-HUAWEI_Mobile-if00-port0 "
    b"/dev/serial/by-path/pci-0000:00:14.0-usb-0:3:1.0",
    b"ID_VENDOR_ID=12d1",
    b"SEQNUM=4712",
])


def test_kernel_uevent():
    change = parse_uevent(KERNEL_USB_ADD)
    assert change is not None and change.source == "kernel"
    assert (change.action, change.subsystem) == ("add", "usb")
    assert change.devpath.endswith("/usb1/1-2") and change.properties["PRODUCT"] == "1d50/6120/100"
    assert change.is_arrival


def test_udev_uevent_after_the_symlinks_exist():
    change = parse_uevent(UDEV_TTY_ADD)
    assert change is not None and change.source == "udev"
    assert (change.action, change.subsystem) == ("add", "tty") and change.is_arrival
    assert "/dev/serial/by-id/usb-HUAWEI_Mobile-if00-port0" in change.properties["DEVLINKS"].split()


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"libudev\0",  # truncated header
        udev_message([b"ACTION=add", b"SUBSYSTEM=tty"], magic=0xDEADBEEF),
        udev_message([b"ACTION=add", b"SUBSYSTEM=tty"])[:-20],  # properties run past the datagram
        b"add@/devices/x\0SUBSYSTEM=usb\0",  # no ACTION
        b"no separator at all",
        b"add /devices/x\0ACTION=add\0SUBSYSTEM=usb\0",  # kernel header without '@'
    ],
)
def test_malformed_datagrams_are_ignored(datagram):
    assert parse_uevent(datagram) is None


def test_removals_and_other_subsystems_are_not_arrivals():
    removed = parse_uevent(KERNEL_USB_ADD.replace(b"add", b"remove"))
    assert removed is not None and not removed.is_arrival
    block = parse_uevent(udev_message([b"ACTION=add", b"SUBSYSTEM=block", b"DEVPATH=/devices/x/sda"]))
    assert block is not None and not block.is_arrival


async def test_wait_retry_returns_at_an_arrival_or_after_the_delay(autojump_clock):
    watch = DeviceWatch()
    started = trio.current_time()
    await watch.wait_retry(0.5)
    assert trio.current_time() - started >= 0.5
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.wait_retry, 3600.0)
        await trio.testing.wait_all_tasks_blocked()
        watch.notify()
    assert trio.current_time() - started < 10.0 and watch.arrivals == 1


async def test_an_unplugged_box_is_back_at_the_arrival_not_at_the_next_backoff_step():
    backend = make_box(PstnLine("jp"))
    watch = DeviceWatch()
    box = UsbVoiceBox("box1", backend=backend, reconnect_backoff=LONG_BACKOFF, device_watch=watch)
    async with trio.open_nursery() as nursery:
        await nursery.start(box.run)
        with trio.fail_after(10):
            while not isinstance(await box.events.receive(), DeviceReady):
                pass
        backend.unplug()
        with trio.fail_after(10):
            while box.state != "absent":
                await box.events.receive()
        await trio.sleep(0.2)  # past the short first step: the driver now waits on the 60 s one
        backend.replug()
        watch.notify()
        with trio.fail_after(5):
            while not isinstance(await box.events.receive(), DeviceReady):
                pass
        nursery.cancel_scope.cancel()


async def test_an_absent_gsm_modem_is_retried_at_the_arrival(tmp_path):
    link = tmp_path / "gsm0"
    sim = SimulatedGsmModem(name="sim0", send_latency=0.0)
    watch = DeviceWatch()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(sim.run, link=str(link)))
        modem = GsmModem("gsm0", str(link), monitor_interval=3600.0, init_retry_backoff=LONG_BACKOFF,
                         command_timeout=1.0, device_watch=watch)
        await nursery.start(modem.run)
        with trio.fail_after(10):
            while modem.status.state != "ready":
                await modem.events.receive()
        sim.unplug()
        with trio.fail_after(10):
            while modem.status.state != "absent":
                await modem.events.receive()
        await trio.sleep(0.2)
        sim.replug()
        watch.notify()
        with trio.fail_after(5):
            while modem.status.state != "ready":
                await modem.events.receive()
        modem.request_stop()
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="sending to the kernel's uevent group needs Linux and CAP_NET_ADMIN (root, as udevd)",
)
async def test_the_watch_hears_a_real_netlink_uevent():
    """End to end through the kernel: a uevent sent to the kernel's multicast group reaches the watch.
    Runs wherever the suite runs as root on Linux (CI and this machine); there it must pass."""
    watch = DeviceWatch()
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        assert watch.listening, "no NETLINK_KOBJECT_UEVENT socket"
        sender = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
        try:
            sender.bind((0, 0))
            sender.sendto(KERNEL_USB_ADD, (0, GROUP_KERNEL))
        finally:
            sender.close()
        with trio.fail_after(5):
            await watch.wait_retry(10.0)  # returns at the arrival
        assert watch.arrivals >= 1  # ours (the host may add its own)
        nursery.cancel_scope.cancel()
