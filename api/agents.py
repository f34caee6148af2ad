"""REST routes for operator positions and the queues: ``POST /v1/agents/{id}/ready|away``, ``GET /v1/queues``.

An agent id is an operator position (headset port) configured under ``ivr.positions``. Setting a position
ready hands it the best waiting call at once; away during a call takes effect when the call ends.
Scopes: ``calls:write`` to change a position, ``calls:read`` to look at the queues.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint

from api import openapi
from api.auth import SCOPE_CALLS_READ, SCOPE_CALLS_WRITE, requires_scope
from api.problems import ApiProblem
from api.services import api_state
from gateway.ivr.queue import QueueManager, UnknownPosition

blueprint = Blueprint("agents", __name__)
_AUTH = (401, 403)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PositionBody(_Response):
    id: str
    state: Annotated[str, Field(description="ready, away or busy")]
    call_id: str | None
    away_after_call: Annotated[bool, Field(description="away was asked during a call")] = False


class WaitingCall(_Response):
    call_id: str
    priority: int
    place: int
    waited_s: float
    caller: str | None


class QueueBody(_Response):
    queue: Annotated[str, Field(description="the queue node's id")]
    waiting: list[WaitingCall]


class QueuesBody(_Response):
    positions: list[PositionBody]
    queues: list[QueueBody]


def _queues() -> QueueManager:
    queues = api_state().services.queues
    if queues is None:
        raise ApiProblem("not_found", "operator queues are not enabled on this gateway")
    return queues


def _change(agent_id: str, ready: bool) -> dict[str, Any]:
    queues = _queues()
    try:
        pos = queues.set_ready(agent_id) if ready else queues.set_away(agent_id)
    except UnknownPosition:
        known = ", ".join(queues.positions) or "none configured"
        raise ApiProblem("not_found", f"no operator position {agent_id!r} (positions: {known})") from None
    return {**pos.to_json(), "away_after_call": pos.away_after_call}


@blueprint.post("/v1/agents/<agent_id>/ready")
@requires_scope(SCOPE_CALLS_WRITE)
async def agent_ready(agent_id: str) -> Any:
    return _change(agent_id, True)


@blueprint.post("/v1/agents/<agent_id>/away")
@requires_scope(SCOPE_CALLS_WRITE)
async def agent_away(agent_id: str) -> Any:
    return _change(agent_id, False)


@blueprint.get("/v1/queues")
@requires_scope(SCOPE_CALLS_READ)
async def list_queues() -> Any:
    return _queues().snapshot()


_AGENT = {"name": "agent_id", "in": "path", "required": True, "schema": {"type": "string"}}

OPENAPI_OPERATIONS: tuple[openapi.Operation, ...] = (
    openapi.Operation(
        "/v1/agents/{agent_id}/ready",
        "post",
        "setAgentReady",
        "The operator at this position takes calls (the best waiting call at once)",
        SCOPE_CALLS_WRITE,
        {200: (PositionBody, "The position")},
        problems=(*_AUTH, 404),
        parameters=[_AGENT],
    ),
    openapi.Operation(
        "/v1/agents/{agent_id}/away",
        "post",
        "setAgentAway",
        "The operator takes no more calls (after the current one)",
        SCOPE_CALLS_WRITE,
        {200: (PositionBody, "The position")},
        problems=(*_AUTH, 404),
        parameters=[_AGENT],
    ),
    openapi.Operation(
        "/v1/queues",
        "get",
        "listQueues",
        "Operator positions and the calls waiting in each queue",
        SCOPE_CALLS_READ,
        {200: (QueuesBody, "Positions and waiting calls")},
        problems=(*_AUTH, 404),
    ),
)
