"""Route selection for outgoing SMS (pure, no I/O, no clock): the priority queues, route health with cool-off,
daily caps and cost. The dispatcher (``gateway/sms/dispatcher.py``) owns the trio side.

Routes are the modems (one message at a time each) and the HTTP providers (``concurrency`` at a time). A
message names a route or takes ``auto``:

* named: it waits for that route (a named modem that cools off keeps its named messages: the client asked
  for that SIM, e.g. for its sender number);
* ``auto``: the first idle healthy modem takes the highest-priority oldest message (work stealing, which is
  "least loaded" in the strict sense: a modem that is busy takes nothing). An HTTP provider takes ``auto``
  messages only when the category allows it and no modem is healthy, or when ``provider_overflow`` is set
  and more than that many ``auto`` messages wait per healthy modem.

Health: ``cool_off_failures`` consecutive failed sends on a route (temporary or configuration errors, modem
unavailable, provider gave up) make it cool off for ``cool_off_s``: it takes no work, the dispatcher asks the
modem for a reset, and the ``auto`` messages that failed on it become due at once so healthy routes take
them. A success resets the count.

Daily caps count SMS parts per route per day in the gateway timezone (operators cap per SIM per day); a
message is counted when it starts sending and uncounted for the parts that fail.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

AUTO = "auto"
MODEM_PART_COST = 0.1  # seed figure: one modem SMS
PROVIDER_MESSAGE_COST = 0.068  # seed figure: one gateway (provider) SMS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteLimits(_Strict):
    """``sms.routes.<name>``: settings of one modem or provider route."""

    daily_cap: Annotated[int, Field(ge=1, le=10_000_000)] | None = Field(
        None, description="SMS parts per day (gateway timezone); null: no cap"
    )
    cost: Annotated[float, Field(ge=0)] | None = Field(
        None, description="cost per modem part / per provider message; null: sms.costs"
    )


class CostSettings(_Strict):
    """``sms.costs``."""

    modem_part: Annotated[float, Field(ge=0)] = MODEM_PART_COST
    provider_message: Annotated[float, Field(ge=0)] = PROVIDER_MESSAGE_COST
    currency: str = "CNY"


class CoolOffSettings(_Strict):
    """``sms.cool_off``."""

    failures: Annotated[int, Field(ge=1, le=100)] = 3
    seconds: Annotated[float, Field(gt=0, le=86400)] = 300.0


@dataclass(frozen=True)
class RoutePolicy:
    """Costs, caps and health rules for every route; built from the config (``from_config``)."""

    costs: CostSettings = CostSettings()
    limits: Mapping[str, RouteLimits] = field(default_factory=dict)
    cool_off: CoolOffSettings = CoolOffSettings()
    provider_overflow: int | None = None

    @classmethod
    def from_config(cls, sms: Any = None) -> RoutePolicy:
        if sms is None:
            return cls()
        return cls(
            costs=getattr(sms, "costs", None) or CostSettings(),
            limits=dict(getattr(sms, "routes", None) or {}),
            cool_off=getattr(sms, "cool_off", None) or CoolOffSettings(),
            provider_overflow=getattr(sms, "provider_overflow", None),
        )

    def daily_cap(self, route: str) -> int | None:
        limits = self.limits.get(route)
        return limits.daily_cap if limits else None

    def cost(self, route_kind: str, route: str | None, parts: int) -> float:
        """Modem: per part; provider: per message (the seed's figures); a route's own ``cost`` overrides."""
        limits = self.limits.get(route) if route else None
        if route_kind == "provider":
            unit = limits.cost if limits and limits.cost is not None else self.costs.provider_message
            return round(unit, 6)
        unit = limits.cost if limits and limits.cost is not None else self.costs.modem_part
        return round(unit * parts, 6)


@dataclass
class RouteHealth:
    """Consecutive failures and cool-off of one route, on a monotonic clock the caller passes in."""

    failures: int = 0
    cooling_until: float | None = None

    def cooling(self, now: float) -> bool:
        return self.cooling_until is not None and now < self.cooling_until

    def succeeded(self) -> bool:
        """Record a success; True when the route was cooling off or failing (it recovered)."""
        recovered = self.failures > 0 or self.cooling_until is not None
        self.failures, self.cooling_until = 0, None
        return recovered

    def failed(self, now: float, policy: CoolOffSettings) -> bool:
        """Record a failure; True when this one starts a cool-off."""
        self.failures += 1
        if self.failures >= policy.failures and not self.cooling(now):
            self.cooling_until = now + policy.seconds
            self.failures = 0
            return True
        return False


@dataclass(order=True)
class _Entry:
    key: tuple[int, int]  # (-priority, arrival)
    message_id: str = field(compare=False)
    route: str | None = field(compare=False)  # None: auto
    provider_ok: bool = field(compare=False)
    live: bool = field(default=True, compare=False)


class SendQueues:
    """Messages waiting to be sent: one heap per named route and two shared (``auto``) heaps, split by
    whether the category allows a provider. Highest priority first, then arrival order. Removal is lazy."""

    def __init__(self) -> None:
        self._arrival = itertools.count()
        self._named: dict[str, list[_Entry]] = {}
        self._shared_any: list[_Entry] = []  # auto, a provider may take it
        self._shared_modem: list[_Entry] = []  # auto, modems only
        self._entries: dict[str, _Entry] = {}
        self._named_count: dict[str, int] = {}
        self._shared_count = 0

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, message_id: str, *, priority: int, route: str | None, provider_ok: bool) -> bool:
        """Queue a message; False if it is queued already."""
        if message_id in self._entries:
            return False
        entry = _Entry((-priority, next(self._arrival)), message_id, route, provider_ok)
        self._entries[message_id] = entry
        if route is not None:
            heapq.heappush(self._named.setdefault(route, []), entry)
            self._named_count[route] = self._named_count.get(route, 0) + 1
        else:
            heapq.heappush(self._shared_any if provider_ok else self._shared_modem, entry)
            self._shared_count += 1
        return True

    def remove(self, message_id: str) -> bool:
        entry = self._entries.pop(message_id, None)
        if entry is None:
            return False
        entry.live = False
        self._uncount(entry)
        return True

    def _uncount(self, entry: _Entry) -> None:
        if entry.route is not None:
            self._named_count[entry.route] -= 1
        else:
            self._shared_count -= 1

    def named_depth(self, route: str) -> int:
        return self._named_count.get(route, 0)

    @property
    def shared_depth(self) -> int:
        return self._shared_count

    def named_ids(self, route: str) -> list[str]:
        return [e.message_id for e in sorted(self._named.get(route, ())) if e.live]

    @staticmethod
    def _top(heap: list[_Entry]) -> _Entry | None:
        while heap and not heap[0].live:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def pop(self, route: str, *, shared: bool, provider: bool) -> str | None:
        """The next message for ``route``: its named messages first, then (``shared``) auto ones: for a
        modem from both shared heaps by priority, for a provider only those whose category allows it."""
        candidates = [self._top(self._named.get(route, []))]
        if shared:
            candidates.append(self._top(self._shared_any))
            if not provider:
                candidates.append(self._top(self._shared_modem))
        named = candidates[0]
        if named is not None:
            best = named  # a route serves what was addressed to it before taking shared work
        else:
            present = [c for c in candidates if c is not None]
            if not present:
                return None
            best = min(present)
        self._entries.pop(best.message_id, None)
        best.live = False
        self._uncount(best)
        return best.message_id

    def pending_for(self, routes: Iterable[str]) -> bool:
        return any(self._named_count.get(r, 0) for r in routes)
