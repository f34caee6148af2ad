"""Operator queue: callers wait on hold until an operator position (headset port) is ready (issue 6).

``QueueManager.wait(request)`` is called by the IVR runtime for a ``queue`` node and returns when the call
leaves the queue:

- ``"answered"``: a ready position took the call (``call.bridge(position)``); ``wait`` returns only after the
  call ended, then the position is ready again (or away, when its operator asked for that meanwhile);
- ``"overflow"``: ``max_wait`` passed; ``"full"``: ``max_callers`` already wait in this queue;
  ``"no_position"``: none of the node's positions can ever take this call (none is configured in the
  gateway, or, on an analog line, its own headset port is not among them), so waiting is pointless; a
  position that is only away (an operator on a break) is waited for, with the hold content, up to
  ``max_wait``;
- the caller hanging up raises the call's ``CallEnded`` (``queue.left`` result ``abandoned``).

Order: a position that becomes ready takes, among the calls waiting for it (any queue that lists it), the
highest priority first, then the longest waiting. Several ready positions take calls longest-idle first.

Hold: the playlist loops; announcements (position, estimated wait) come at joining and every ``every`` s and
interrupt the hold item, after which the playlist goes on with the next item. The estimated wait is the
caller's place times the mean wait of recently answered calls (exponential average, Asterisk's holdtime
approach), divided by the staffed positions, rounded up to whole minutes (at least 1).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from gateway.ivr.runtime import QueueRequest

log = structlog.get_logger("ivr.queue")

READY, AWAY, BUSY = "ready", "away", "busy"
_HOLD_EWMA = 0.25  # weight of the newest answered call's wait in the average


def _can_take(position: str, request: QueueRequest) -> bool:
    """A position listed by the queue node, and one the call's line can reach: an analog line can only be
    bridged to its own headset port (``Call.headset_position``; a call object without it reaches any)."""
    if position not in request.positions:
        return False
    if not hasattr(request.call, "headset_position"):
        return True
    return request.call.headset_position == position


class UnknownPosition(KeyError):
    """The position id is not configured."""


@dataclass
class Position:
    id: str
    state: str = AWAY
    since: float = 0.0  # trio time of the last state change (longest idle = smallest)
    call_id: str | None = None
    away_after_call: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "call_id": self.call_id}


@dataclass
class _Waiter:
    request: QueueRequest
    seq: int
    joined: float
    assigned: trio.Event = field(default_factory=trio.Event)
    position: str | None = None
    rank: int = 0
    hung_up: BaseException | None = None
    failed: BaseException | None = None


class QueueManager:
    def __init__(
        self,
        positions: Iterable[str],
        *,
        publish: Callable[[str, dict], Awaitable[Any]],
        call_ended: tuple[type[BaseException], ...] = (),
    ):
        """``positions``: the operator positions (headset port names) the deployment has, all away at start.
        ``call_ended``: the call's CallEnded exception types (the runtime's default when empty)."""
        self.positions: dict[str, Position] = {p: Position(p) for p in positions}
        self._publish = publish
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count(1)
        self._mean_wait = 60.0  # seconds, until calls were answered
        if not call_ended:
            from gateway.ivr.runtime import _call_ended_types

            call_ended = _call_ended_types()
        self._call_ended = call_ended

    # ------------------------------------------------------------------------------------ positions
    def _position(self, position_id: str) -> Position:
        try:
            return self.positions[position_id]
        except KeyError:
            raise UnknownPosition(position_id) from None

    def set_ready(self, position_id: str) -> Position:
        pos = self._position(position_id)
        pos.away_after_call = False
        if pos.state == AWAY:
            pos.state, pos.since = READY, trio.current_time()
            log.info("position ready", position=position_id)
            self._dispatch()
        return pos

    def set_away(self, position_id: str) -> Position:
        """Away now; a position in a call goes away when the call ends."""
        pos = self._position(position_id)
        if pos.state == BUSY:
            pos.away_after_call = True
        else:
            pos.state, pos.since = AWAY, trio.current_time()
        log.info("position away", position=position_id, after_call=pos.away_after_call)
        return pos

    def snapshot(self) -> dict[str, Any]:
        """Positions and waiting calls, for ``GET /v1/queues``."""
        now = trio.current_time()
        queues: dict[str, list[dict[str, Any]]] = {}
        for w in self._ordered():
            caller = getattr(w.request.call, "caller", None) or {}
            queues.setdefault(w.request.queue, []).append(
                {
                    "call_id": w.request.call.id,
                    "priority": w.request.priority,
                    "place": w.rank,
                    "waited_s": round(now - w.joined, 1),
                    "caller": caller.get("e164") or caller.get("raw"),
                }
            )
        return {
            "positions": [p.to_json() for p in self.positions.values()],
            "queues": [{"queue": q, "waiting": items} for q, items in queues.items()],
        }

    # ------------------------------------------------------------------------------------ ordering
    def _ordered(self) -> list[_Waiter]:
        return sorted(self._waiting, key=lambda w: (-w.request.priority, w.seq))

    def _place(self, waiter: _Waiter) -> int:
        """1-based place among the calls that compete for at least one of the same positions."""
        mine = set(waiter.request.positions)
        ahead = [w for w in self._ordered() if mine & set(w.request.positions)]
        return ahead.index(waiter) + 1

    def _dispatch(self) -> None:
        """Give every ready position (longest idle first) the best call waiting for it."""
        for pos in sorted((p for p in self.positions.values() if p.state == READY), key=lambda p: p.since):
            candidates = [w for w in self._ordered() if w.position is None and _can_take(pos.id, w.request)]
            if not candidates:
                continue
            waiter = candidates[0]
            waiter.position = pos.id
            pos.state, pos.call_id, pos.since = BUSY, waiter.request.call.id, trio.current_time()
            self._waiting.remove(waiter)
            waiter.assigned.set()

    def _reachable(self, request: QueueRequest) -> bool:
        """Some position of the node exists in the gateway and can take this call (staffed or not)."""
        return any(p in self.positions and _can_take(p, request) for p in request.positions)

    def _staffed(self, positions: tuple[str, ...], request: QueueRequest | None = None) -> int:
        return sum(
            1
            for p in positions
            if p in self.positions
            and self.positions[p].state != AWAY
            and (request is None or _can_take(p, request))
        )

    def _estimate_minutes(self, waiter: _Waiter) -> int:
        staffed = max(1, self._staffed(waiter.request.positions))
        return max(1, math.ceil(self._place(waiter) * self._mean_wait / staffed / 60))

    async def _publish_places(self) -> None:
        for w in list(self._waiting):
            place = self._place(w)
            if place != w.rank:
                w.rank = place
                await self._emit("queue.position", w, place=place, waited_s=self._waited(w))

    def _waited(self, w: _Waiter) -> float:
        return round(trio.current_time() - w.joined, 1)

    async def _emit(self, type_: str, w: _Waiter, **data: Any) -> None:
        await self._publish(type_, {"call_id": w.request.call.id, "queue": w.request.queue, **data})

    # ------------------------------------------------------------------------------------------ wait
    async def wait(self, request: QueueRequest) -> str:
        call = request.call
        waiting_here = sum(1 for w in self._waiting if w.request.queue == request.queue)
        if request.max_callers is not None and waiting_here >= request.max_callers:
            await self._publish("queue.left", {"call_id": call.id, "queue": request.queue, "result": "full"})
            return "full"
        if not self._reachable(request):
            await self._publish(
                "queue.left", {"call_id": call.id, "queue": request.queue, "result": "no_position"}
            )
            return "no_position"
        waiter = _Waiter(request, next(self._seq), trio.current_time())
        self._waiting.append(waiter)
        waiter.rank = self._place(waiter)
        await self._emit("queue.joined", waiter, priority=request.priority, place=waiter.rank)
        await self._publish_places()  # callers behind a higher priority moved back
        self._dispatch()
        result = "abandoned"
        try:
            if waiter.position is None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._hold, waiter, nursery.cancel_scope)
                    with trio.move_on_after(request.max_wait):
                        await waiter.assigned.wait()
                    nursery.cancel_scope.cancel()
            if waiter.hung_up is not None and waiter.position is None:
                raise waiter.hung_up
            if waiter.failed is not None and waiter.position is None:
                result = "error"
                raise waiter.failed
            if waiter.position is None:
                result = "overflow"
                return result
            waited = trio.current_time() - waiter.joined
            self._mean_wait = (1 - _HOLD_EWMA) * self._mean_wait + _HOLD_EWMA * waited
            try:
                await call.bridge(waiter.position)
            except self._call_ended:
                raise
            except Exception as exc:  # the device refused: the caller goes to the overflow branch
                log.error("bridge failed", call_id=call.id, position=waiter.position, error=str(exc))
                result = "error"
                return result
            result = "answered"
            await self._emit(
                "queue.left", waiter, result=result, position=waiter.position, waited_s=round(waited, 1)
            )
            await call.ended.wait()
            return result
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            if waiter.position is not None:
                self._release(waiter.position)
            with trio.CancelScope(shield=True):
                if result != "answered":
                    await self._emit("queue.left", waiter, result=result, waited_s=self._waited(waiter))
                await self._publish_places()

    def _release(self, position_id: str) -> None:
        pos = self.positions[position_id]
        pos.call_id = None
        pos.state = AWAY if pos.away_after_call else READY
        pos.away_after_call = False
        pos.since = trio.current_time()
        self._dispatch()

    async def _hold(self, waiter: _Waiter, scope: trio.CancelScope) -> None:
        """Loop the playlist; announcements at joining and every ``announce_every`` s interrupt it."""
        request = waiter.request
        try:
            items = itertools.cycle(request.playlist) if request.playlist else None
            next_announcement = trio.current_time()
            while True:
                if request.announcement is not None and trio.current_time() >= next_announcement:
                    assert request.announce_every is not None
                    next_announcement = trio.current_time() + request.announce_every
                    await self._publish_places()
                    await self._emit(
                        "queue.position", waiter, place=self._place(waiter), waited_s=self._waited(waiter)
                    )
                    files = request.announcement(self._place(waiter), self._estimate_minutes(waiter))
                    if files:
                        await request.call.play(files)
                deadline = next_announcement if request.announcement is not None else math.inf
                with trio.move_on_at(deadline):
                    if items is None:
                        await trio.sleep_forever()
                    await request.call.play([next(items)])
        except self._call_ended as exc:
            waiter.hung_up = exc
            scope.cancel()
        except Exception as exc:  # a broken device must not leave the caller in the queue forever
            log.error("hold content failed; caller left on silence", call_id=request.call.id, error=str(exc))
            waiter.failed = exc
            scope.cancel()
