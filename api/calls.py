"""Voice lines and calls: ``/v1/lines`` and ``/v1/calls`` (issue 5). The routes only translate HTTP to
``gateway.voice.service.VoiceService`` calls; its ``VoiceError`` codes become problem+json."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, request

from api import openapi
from api.auth import SCOPE_CALLS_READ, SCOPE_CALLS_WRITE, requires_scope
from api.problems import ApiProblem
from api.services import api_state
from api.templates import json_response, parse_json_body
from gateway.voice.service import VoiceError

blueprint = Blueprint("calls", __name__)
_STATUS = {
    "not_found": None,
    "conflict": None,
    "invalid_number": None,
    "invalid_request": None,
    "line_busy": 409,
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DialRequest(_Request):
    to: list[str] = Field(min_length=1, max_length=10, description="Numbers tried in order")
    line: str | None = None
    play: list[str] = Field(
        default_factory=list, description="Prompt files (under prompts_dir) played on answer"
    )
    ivr_entry: str | None = Field(default=None, description="IVR node the answered call starts at")
    record: bool = False
    timeout_s: float | None = Field(default=None, gt=0, le=300, description="No-answer timeout per number")


class DtmfRequest(_Request):
    digits: str = Field(pattern=r"^[0-9*#A-Da-d]{1,32}$")


class PlaybackRequest(_Request):
    prompts: list[str] = Field(min_length=1, max_length=20)


class RecordingRequest(_Request):
    max_seconds: float | None = Field(default=None, gt=0, le=7200)


class BridgeRequest(_Request):
    position: str | None = None
    back: bool = False


class CallView(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    direction: str
    line: str
    state: str


class CallList(BaseModel):
    items: list[CallView]


class LineList(BaseModel):
    model_config = ConfigDict(extra="allow")
    items: list[dict[str, Any]]


class Created(BaseModel):
    id: str
    call_id: str


def _voice():
    voice = api_state().services.voice
    if voice is None:
        raise ApiProblem("not_found", "this gateway runs no voice lines")
    return voice


def _problem(exc: VoiceError) -> ApiProblem:
    return ApiProblem(exc.code, exc.detail, status=_STATUS.get(exc.code))


@blueprint.get("/v1/lines")
@requires_scope(SCOPE_CALLS_READ)
async def list_lines() -> Any:
    return {"items": _voice().line_views()}


@blueprint.get("/v1/calls")
@requires_scope(SCOPE_CALLS_READ)
async def list_calls() -> Any:
    state = request.args.get("state")
    if state is not None and state not in ("ringing", "dialling", "connected", "ended", "answering"):
        raise ApiProblem("invalid_parameter", f"unknown state {state!r}")
    voice = _voice()
    if state in (None, "ringing", "dialling", "connected", "answering"):
        live = [c.to_json() for c in voice.active_calls() if state is None or c.state == state]
        if state is not None:
            return {"items": live}
        stored = [c for c in await voice.list_calls(None) if c["id"] not in {x["id"] for x in live}]
        return {"items": live + stored}
    return {"items": await voice.list_calls(state)}


@blueprint.get("/v1/calls/<call_id>")
@requires_scope(SCOPE_CALLS_READ)
async def get_call(call_id: str) -> Any:
    call = await _voice().get_call(call_id)
    if call is None:
        raise ApiProblem("not_found", f"no call {call_id}")
    return call


@blueprint.post("/v1/calls")
@requires_scope(SCOPE_CALLS_WRITE)
async def place_call() -> Any:
    body: DialRequest = await parse_json_body(DialRequest)
    try:
        call = await _voice().dial(
            body.to,
            line=body.line,
            play=body.play,
            ivr_entry=body.ivr_entry,
            record=body.record,
            timeout_s=body.timeout_s,
        )
    except VoiceError as exc:
        raise _problem(exc) from None
    return json_response(call.to_json(), 202, {"Location": f"/v1/calls/{call.id}"})


async def _act(coro) -> Any:
    try:
        return await coro
    except VoiceError as exc:
        raise _problem(exc) from None


@blueprint.post("/v1/calls/<call_id>/hangup")
@requires_scope(SCOPE_CALLS_WRITE)
async def hangup(call_id: str) -> Any:
    call = await _act(_voice().hangup(call_id))
    return call.to_json()


@blueprint.post("/v1/calls/<call_id>/answer")
@requires_scope(SCOPE_CALLS_WRITE)
async def answer(call_id: str) -> Any:
    call = await _act(_voice().answer(call_id))
    return call.to_json()


@blueprint.post("/v1/calls/<call_id>/dtmf")
@requires_scope(SCOPE_CALLS_WRITE)
async def send_dtmf(call_id: str) -> Any:
    body: DtmfRequest = await parse_json_body(DtmfRequest)
    await _act(_voice().send_dtmf(call_id, body.digits.upper()))
    return json_response({"call_id": call_id, "digits": body.digits.upper()}, 202)


@blueprint.post("/v1/calls/<call_id>/playbacks")
@requires_scope(SCOPE_CALLS_WRITE)
async def start_playback(call_id: str) -> Any:
    body: PlaybackRequest = await parse_json_body(PlaybackRequest)
    playback_id = await _act(_voice().start_playback(call_id, body.prompts))
    return json_response({"id": playback_id, "call_id": call_id}, 202)


@blueprint.delete("/v1/calls/<call_id>/playbacks/<playback_id>")
@requires_scope(SCOPE_CALLS_WRITE)
async def stop_playback(call_id: str, playback_id: str) -> Any:
    try:
        _voice().stop_playback(call_id, playback_id)
    except VoiceError as exc:
        raise _problem(exc) from None
    return json_response({"id": playback_id, "call_id": call_id}, 202)


@blueprint.post("/v1/calls/<call_id>/recordings")
@requires_scope(SCOPE_CALLS_WRITE)
async def start_recording(call_id: str) -> Any:
    body: RecordingRequest = await parse_json_body(RecordingRequest)
    rec_id = await _act(_voice().start_recording(call_id, body.max_seconds))
    return json_response({"id": rec_id, "call_id": call_id}, 201, {"Location": f"/v1/recordings/{rec_id}"})


@blueprint.post("/v1/calls/<call_id>/bridge")
@requires_scope(SCOPE_CALLS_WRITE)
async def bridge(call_id: str) -> Any:
    body: BridgeRequest = await parse_json_body(BridgeRequest)
    if body.back == (body.position is not None):
        raise ApiProblem("invalid_request", "give either position (bridge to it) or back: true (unbridge)")
    call = await _act(_voice().bridge(call_id, None if body.back else body.position))
    return call.to_json()


# --- OpenAPI ------------------------------------------------------------------------------------------------
_CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}}
_PB_ID = {"name": "playback_id", "in": "path", "required": True, "schema": {"type": "string"}}


_op = openapi.authenticated


OPENAPI_OPERATIONS: tuple[openapi.Operation, ...] = (
    _op(
        "/v1/lines",
        "get",
        "listLines",
        "Voice lines and their state",
        SCOPE_CALLS_READ,
        {200: (LineList, "Every configured line")},
    ),
    _op(
        "/v1/calls",
        "get",
        "listCalls",
        "Calls, newest first",
        SCOPE_CALLS_READ,
        {200: (CallList, "Active and recent calls")},
        problems=(400,),
        parameters=[openapi._query("state", {"type": "string"}, "ringing | dialling | connected | ended")],
    ),
    _op(
        "/v1/calls/{call_id}",
        "get",
        "getCall",
        "One call",
        SCOPE_CALLS_READ,
        {200: (CallView, "The call")},
        problems=(404,),
        parameters=[_CALL_ID],
    ),
    _op(
        "/v1/calls",
        "post",
        "placeCall",
        "Dial numbers in order until one answers",
        SCOPE_CALLS_WRITE,
        {202: (CallView, "Accepted: dialling started")},
        problems=(404, 409, 415, 422),
        request=DialRequest,
    ),
    _op(
        "/v1/calls/{call_id}/hangup",
        "post",
        "hangupCall",
        "Hang up",
        SCOPE_CALLS_WRITE,
        {200: (CallView, "The ended call")},
        problems=(404,),
        parameters=[_CALL_ID],
    ),
    _op(
        "/v1/calls/{call_id}/answer",
        "post",
        "answerCall",
        "Answer a ringing call",
        SCOPE_CALLS_WRITE,
        {200: (CallView, "The answered call")},
        problems=(404, 409),
        parameters=[_CALL_ID],
    ),
    _op(
        "/v1/calls/{call_id}/dtmf",
        "post",
        "sendDtmf",
        "Send DTMF digits",
        SCOPE_CALLS_WRITE,
        {202: (None, "Digits sent")},
        problems=(404, 409, 415, 422),
        request=DtmfRequest,
        parameters=[_CALL_ID],
    ),
    _op(
        "/v1/calls/{call_id}/playbacks",
        "post",
        "startPlayback",
        "Play prompts",
        SCOPE_CALLS_WRITE,
        {202: (Created, "Playback accepted: playback.finished tells when it ends")},
        problems=(404, 409, 415, 422),
        request=PlaybackRequest,
        parameters=[_CALL_ID],
    ),
    _op(
        "/v1/calls/{call_id}/playbacks/{playback_id}",
        "delete",
        "stopPlayback",
        "Stop a playback",
        SCOPE_CALLS_WRITE,
        {202: (None, "Stopping")},
        problems=(404,),
        parameters=[_CALL_ID, _PB_ID],
    ),
    _op(
        "/v1/calls/{call_id}/recordings",
        "post",
        "startRecording",
        "Record the call",
        SCOPE_CALLS_WRITE,
        {201: (Created, "Recording started")},
        problems=(404, 409, 415, 422),
        request=RecordingRequest,
        parameters=[_CALL_ID],
    ),
    _op(
        "/v1/calls/{call_id}/bridge",
        "post",
        "bridgeCall",
        "Bridge to an operator headset, or back",
        SCOPE_CALLS_WRITE,
        {200: (CallView, "The call")},
        problems=(404, 409, 415, 422),
        request=BridgeRequest,
        parameters=[_CALL_ID],
    ),
)
