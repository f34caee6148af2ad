"""Blocking device reads in a thread of their own, their results handed to trio through one shared inbox.

Why not ``trio.to_thread.run_sync`` per read: a voice box delivers a frame every 20 ms, and with the boxes'
frames lined up (FRAME_PHASE) 32 reads complete at the same instant. Through ``to_thread`` each completion
is a thread-cache hand-off, a write to trio's wake-up socket (the worker gives the GIL up around it and
waits to get it back while 31 others do the same) and a task rescheduled on its own. Measured on the 2-core
bench host with 32 paced boxes in another process (issue 5; docs/performance.md, sixth round): the frames of
one instant reached their trio tasks over 4.3-5.9 ms (median), at 217-307 µs of CPU per frame; with a
thread per box that appends to one inbox, and wakes trio only when the inbox was empty, over 2.8 ms at
141-144 µs per frame.

Semantics are ``to_thread.run_sync``'s: a read starts when a task asks for it (a box that is not paced in
real time, a test's simulator, is read no further ahead than through ``to_thread``), its result or
exception comes back to that task, and a task cancelled while its read is in flight waits for the read to
end (the device call cannot be interrupted; the box profile's read timeout bounds it).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import outcome
import trio

T = TypeVar("T")

__all__ = ["ReadPump"]


class _Inbox:
    """One per trio run: finished reads of every pump, delivered to their tasks in one scheduler callback."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._lock = threading.Lock()
        self._items: deque[tuple[trio.lowlevel.Task, outcome.Outcome]] = deque()
        self._scheduled = False

    def post(self, task: trio.lowlevel.Task, result: outcome.Outcome) -> None:
        """From a pump's thread."""
        with self._lock:
            self._items.append((task, result))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._token.run_sync_soon(self._deliver)
        except trio.RunFinishedError:  # the run is over: nobody waits for it
            pass

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, deque()
            self._scheduled = False
        for task, result in items:
            trio.lowlevel.reschedule(task, result)


_INBOX: trio.lowlevel.RunVar[_Inbox] = trio.lowlevel.RunVar("read_pump_inbox")


def _inbox() -> _Inbox:
    try:
        return _INBOX.get()
    except LookupError:
        inbox = _Inbox(trio.lowlevel.current_trio_token())
        _INBOX.set(inbox)
        return inbox


class ReadPump(Generic[T]):
    """``await pump.read()`` runs ``fn()`` in the pump's own thread (started on the first read) and returns
    what it returned or raises what it raised. One read at a time; ``close()`` ends the thread."""

    def __init__(self, fn: Callable[[], T], *, name: str = "read-pump") -> None:
        self._fn = fn
        self._name = name
        self._wanted = threading.Semaphore(0)
        self._task: trio.lowlevel.Task | None = None
        self._inbox: _Inbox | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    async def read(self) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the read pump is closed")
        if self._task is not None:
            raise trio.BusyResourceError("another task is reading from this pump")
        if self._thread is None:
            self._inbox = _inbox()
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._task = trio.lowlevel.current_task()
        self._wanted.release()
        try:
            # The device call cannot be abandoned: a cancellation is delivered once it has returned.
            return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        finally:
            self._task = None

    def close(self) -> None:
        """End the thread (after the read in flight, if any). Idempotent."""
        if not self._closed:
            self._closed = True
            self._wanted.release()

    def _run(self) -> None:
        while True:
            self._wanted.acquire()
            if self._closed and self._task is None:
                return
            task, inbox = self._task, self._inbox
            assert task is not None and inbox is not None
            result: outcome.Outcome[Any] = outcome.capture(self._fn)
            inbox.post(task, result)
            if self._closed:
                return
