"""drivers/voice/read_pump.py: a device read in a thread of its own, with ``trio.to_thread.run_sync``'s
semantics: a read starts only when a task asks (no read-ahead of an unpaced box), its result or exception
reaches that task (many pumps finishing at once each get their own), a cancelled read waits for the device
call to return, and ``close`` ends the thread."""

from __future__ import annotations

import threading

import pytest
import trio
import usb.core

from drivers.voice.read_pump import ReadPump


async def test_reads_return_in_order_and_never_run_ahead_of_the_task():
    calls: list[int] = []

    def read() -> bytes:  # an unpaced box: a frame whenever it is asked
        calls.append(len(calls))
        return b"frame%d" % (len(calls) - 1)

    pump = ReadPump(read, name="test")
    try:
        got = [await pump.read() for _ in range(5)]
        await trio.sleep(0.05)  # (real time: the pump's thread would have read ahead by now if it could)
        assert got == [b"frame0", b"frame1", b"frame2", b"frame3", b"frame4"]
        assert calls == [0, 1, 2, 3, 4]
    finally:
        pump.close()


async def test_the_device_error_reaches_the_reading_task():
    def read() -> bytes:
        raise usb.core.USBError("No such device", -4, 19)

    pump = ReadPump(read)
    try:
        with pytest.raises(usb.core.USBError, match="No such device"):
            await pump.read()
        with pytest.raises(usb.core.USBError):  # and the pump still works for the next read
            await pump.read()
    finally:
        pump.close()


async def test_many_pumps_finishing_together_each_deliver_to_their_own_task():
    start = threading.Barrier(16)

    def reader(i: int):
        def read() -> int:
            start.wait(timeout=5)  # all 16 reads complete at the same instant, as 16 aligned boxes'
            return i
        return read

    pumps = [ReadPump(reader(i)) for i in range(16)]
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = await pumps[i].read()

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(16):
                    nursery.start_soon(one, i)
        assert results == {i: i for i in range(16)}
    finally:
        for pump in pumps:
            pump.close()


def _device_held_until_released(value: bytes):
    """A read that blocks in the device until ``release`` is set; ``returned`` once it has returned."""
    release = threading.Event()
    returned = threading.Event()

    def read() -> bytes:
        release.wait(timeout=5)
        returned.set()
        return value

    return read, release, returned


async def test_a_cancelled_read_waits_for_the_device_call_to_return():
    """As ``to_thread.run_sync`` (not abandoned): the read returns what the device gave, and the
    cancellation is delivered at the task's next checkpoint."""
    read, release, returned = _device_held_until_released(b"late")
    pump = ReadPump(read)
    got: list[bytes] = []
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                async def let_go() -> None:
                    await trio.sleep(0.02)
                    scope.cancel()  # while the device call is in flight
                    release.set()

                nursery.start_soon(let_go)
                got.append(await pump.read())
                assert returned.is_set()
                await trio.lowlevel.checkpoint()
                pytest.fail("the cancellation should have been delivered")
        assert scope.cancelled_caught
        assert got == [b"late"]
    finally:
        pump.close()


async def test_a_read_in_flight_is_not_abandoned_when_cancelled():
    read, release, returned = _device_held_until_released(b"x")
    pump = ReadPump(read)
    seen: list[bool] = []
    try:
        async with trio.open_nursery() as nursery:
            async def reader() -> None:
                with trio.CancelScope() as scope:
                    nursery.start_soon(cancel_then_release, scope)
                    await pump.read()
                    await trio.lowlevel.checkpoint()

            async def cancel_then_release(scope: trio.CancelScope) -> None:
                await trio.sleep(0.02)
                scope.cancel()
                await trio.sleep(0.05)
                seen.append(returned.is_set())  # the reader still waits for the device call
                release.set()

            nursery.start_soon(reader)
        assert seen == [False] and returned.is_set()
    finally:
        pump.close()


async def test_one_reader_at_a_time_and_close_ends_the_thread():
    gate = threading.Event()

    def read() -> bytes:
        gate.wait(timeout=5)
        return b"x"

    pump = ReadPump(read, name="usb-read test")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump.read)
        await trio.sleep(0.02)
        with pytest.raises(trio.BusyResourceError):
            await pump.read()
        gate.set()
    pump.close()
    thread = pump._thread
    assert thread is not None and thread.name == "usb-read test"
    thread.join(timeout=5)
    assert not thread.is_alive()
    with pytest.raises(trio.ClosedResourceError):
        await pump.read()
