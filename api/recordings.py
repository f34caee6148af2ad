"""``GET /v1/recordings/{id}`` and ``/media`` (scope recordings:read). Every access is audited:
a ``recording_access`` row and a ``recording.accessed`` event in one transaction, before any byte is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from pydantic import BaseModel, ConfigDict
from quart import Blueprint, g
from quart_trio.wrappers import TrioResponse

from api import openapi
from api.auth import SCOPE_RECORDINGS_READ, requires_scope
from api.problems import ApiProblem
from api.services import api_state, request_id
from gateway.events import format_time, utc_now
from gateway.store import voice_sql

blueprint = Blueprint("recordings", __name__)
_MEDIA_TYPES = {"FLAC": "audio/flac", "WAV": "audio/wav"}


class RecordingView(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    call_id: str


async def _audited(rec_id: str, action: str) -> dict[str, Any]:
    store = api_state().services.bus.journal
    principal = g.principal.name
    at = format_time(utc_now())

    def unit(tx) -> dict[str, Any] | None:
        rec = voice_sql.get_recording(tx, rec_id)
        if rec is not None:
            voice_sql.audit_recording_access(tx, rec_id, principal, action, request_id(), at)
            tx.append_event(
                "recording.accessed",
                {"recording_id": rec_id, "call_id": rec["call_id"], "principal": principal, "action": action},
            )
        return rec

    rec = await store.write(unit)
    if rec is None:
        raise ApiProblem("not_found", f"no recording {rec_id}")
    return rec


@blueprint.get("/v1/recordings/<rec_id>")
@requires_scope(SCOPE_RECORDINGS_READ)
async def get_recording(rec_id: str) -> Any:
    rec = await _audited(rec_id, "metadata")
    rec.pop("path")
    return {**rec, "media": f"/v1/recordings/{rec_id}/media"}


@blueprint.get("/v1/recordings/<rec_id>/media")
@requires_scope(SCOPE_RECORDINGS_READ)
async def get_media(rec_id: str) -> Any:
    rec = await _audited(rec_id, "media")
    path = Path(rec["path"])
    try:
        data = await trio.to_thread.run_sync(path.read_bytes)
    except FileNotFoundError:
        raise ApiProblem("not_found", f"the file of recording {rec_id} is missing") from None
    return TrioResponse(
        data, status=200, content_type=_MEDIA_TYPES.get(rec["format"], "application/octet-stream")
    )


_ID = {"name": "rec_id", "in": "path", "required": True, "schema": {"type": "string"}}
OPENAPI_OPERATIONS: tuple[openapi.Operation, ...] = (
    openapi.Operation(
        "/v1/recordings/{rec_id}",
        "get",
        "getRecording",
        "Recording metadata (audited)",
        SCOPE_RECORDINGS_READ,
        {200: (RecordingView, "The recording")},
        problems=(401, 403, 404),
        parameters=[_ID],
    ),
    openapi.Operation(
        "/v1/recordings/{rec_id}/media",
        "get",
        "getRecordingMedia",
        "The audio file (audited)",
        SCOPE_RECORDINGS_READ,
        {200: (None, "audio/flac or audio/wav")},
        problems=(401, 403, 404),
        parameters=[_ID],
    ),
)
