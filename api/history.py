"""``GET /v1/history?number=``: every call and SMS to and from one number, matched on its E.164 form."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from quart import Blueprint, request

from api import openapi
from api.auth import SCOPE_CALLS_READ, requires_scope
from api.problems import ApiProblem
from api.services import api_state
from gateway.numbers import InvalidNumber, normalize
from gateway.store import voice_sql

blueprint = Blueprint("history", __name__)


class History(BaseModel):
    number: str
    items: list[dict[str, Any]]


@blueprint.get("/v1/history")
@requires_scope(SCOPE_CALLS_READ)
async def history() -> Any:
    raw = request.args.get("number")
    if not raw:
        raise ApiProblem("invalid_parameter", "give the number: /v1/history?number=...")
    voice = api_state().services.voice
    region = voice.settings.region if voice is not None else "JP"
    try:
        e164 = normalize(raw, region, strict=False).e164
    except InvalidNumber as exc:
        raise ApiProblem("invalid_parameter", str(exc)) from None
    store = api_state().services.bus.journal
    items = await store.read(lambda tx: voice_sql.history(tx, e164))
    return {"number": e164, "items": items}


OPENAPI_OPERATIONS: tuple[openapi.Operation, ...] = (
    openapi.Operation(
        "/v1/history",
        "get",
        "getHistory",
        "Calls and SMS to and from a number",
        SCOPE_CALLS_READ,
        {200: (History, "Newest first")},
        problems=(400, 401, 403),
        parameters=[openapi._query("number", {"type": "string"}, "Any format; normalised")],
    ),
)
