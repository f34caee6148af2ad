"""Follow-up call campaigns over HTTP (issue 6): ``/v1/call-campaigns``.

    POST /v1/call-campaigns                          calls:write  create and start (201)
    GET  /v1/call-campaigns[?state=]                 calls:read   newest first, with progress counts
    GET  /v1/call-campaigns/{id}                     calls:read
    POST /v1/call-campaigns/{id}/pause|resume|cancel calls:write  409 when the state does not allow it
    GET  /v1/call-campaigns/{id}/results[?format=csv] calls:read  one row per patient, survey answers included

The routes only translate HTTP to ``gateway.ivr.call_campaigns.CallCampaignService``; its
``CallCampaignError`` codes become problem+json (existing catalogue codes only).
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from pydantic import BaseModel, ConfigDict
from quart import Blueprint, g, request
from quart_trio.wrappers import TrioResponse

from api import openapi
from api.auth import SCOPE_CALLS_READ, SCOPE_CALLS_WRITE, requires_scope
from api.problems import ApiProblem, FieldError
from api.services import api_state
from api.templates import json_response, parse_json_body
from gateway.ivr.call_campaigns import CallCampaignError, CallCampaignSpec

blueprint = Blueprint("call_campaigns", __name__)
_STATES = ("running", "paused", "canceled", "completed")


class CampaignView(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    name: str | None
    state: str
    entry: str
    lines: list[str]
    max_concurrent: int
    created_by: str
    created_at: str
    finished_at: str | None
    progress: dict[str, int]


class CallCampaignList(BaseModel):
    items: list[CampaignView]


class CampaignResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    seq: int
    numbers: list[str]
    vars: dict[str, Any]
    state: str
    outcome: str | None
    attempts: int
    last_cause: str | None
    answered_number: str | None
    answered_by: str | None
    call_id: str | None
    answers: list[dict[str, Any]]


class ResultList(BaseModel):
    campaign_id: str
    items: list[CampaignResult]


def _campaigns():
    service = getattr(api_state().services, "call_campaigns", None)
    if service is None:
        raise ApiProblem("not_found", "call campaigns are not enabled on this gateway")
    return service


def _problem(exc: CallCampaignError) -> ApiProblem:
    errors = [FieldError(exc.field, exc.detail)] if exc.field is not None else []
    return ApiProblem(exc.code, exc.detail, errors=errors)


async def _act(coro) -> Any:
    try:
        return await coro
    except CallCampaignError as exc:
        raise _problem(exc) from None


def _actor() -> str:
    principal = g.get("principal")
    return principal.name if principal is not None else "unknown"


@blueprint.post("/v1/call-campaigns")
@requires_scope(SCOPE_CALLS_WRITE)
async def create_campaign() -> Any:
    body: CallCampaignSpec = await parse_json_body(CallCampaignSpec)
    view = await _act(_campaigns().create(body, _actor()))
    return json_response(view, 201, {"Location": f"/v1/call-campaigns/{view['id']}"})


@blueprint.get("/v1/call-campaigns")
@requires_scope(SCOPE_CALLS_READ)
async def list_campaigns() -> Any:
    state = request.args.get("state")
    if state is not None and state not in _STATES:
        raise ApiProblem("invalid_parameter", f"unknown state {state!r}; one of {', '.join(_STATES)}")
    return {"items": await _campaigns().list(state)}


@blueprint.get("/v1/call-campaigns/<campaign_id>")
@requires_scope(SCOPE_CALLS_READ)
async def get_campaign(campaign_id: str) -> Any:
    view = await _campaigns().get(campaign_id)
    if view is None:
        raise ApiProblem("not_found", f"no call campaign {campaign_id}")
    return view


@blueprint.post("/v1/call-campaigns/<campaign_id>/pause")
@requires_scope(SCOPE_CALLS_WRITE)
async def pause_campaign(campaign_id: str) -> Any:
    return await _act(_campaigns().pause(campaign_id, _actor()))


@blueprint.post("/v1/call-campaigns/<campaign_id>/resume")
@requires_scope(SCOPE_CALLS_WRITE)
async def resume_campaign(campaign_id: str) -> Any:
    return await _act(_campaigns().resume(campaign_id, _actor()))


@blueprint.post("/v1/call-campaigns/<campaign_id>/cancel")
@requires_scope(SCOPE_CALLS_WRITE)
async def cancel_campaign(campaign_id: str) -> Any:
    return await _act(_campaigns().cancel(campaign_id, _actor()))


@blueprint.get("/v1/call-campaigns/<campaign_id>/results")
@requires_scope(SCOPE_CALLS_READ)
async def campaign_results(campaign_id: str) -> Any:
    kind = request.args.get("format", "json")
    if kind not in ("json", "csv"):
        raise ApiProblem("invalid_parameter", f"unknown format {kind!r}; json or csv")
    items = await _act(_campaigns().results(campaign_id))
    if kind == "json":
        return {"campaign_id": campaign_id, "items": items}
    response = TrioResponse(results_csv(items), status=200, content_type="text/csv; charset=utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="{campaign_id}-results.csv"'
    return response


# --- CSV ------------------------------------------------------------------------------------------------
_FIXED = (
    "seq",
    "numbers",
    "state",
    "outcome",
    "attempts",
    "busy_attempts",
    "no_answer_attempts",
    "failed_attempts",
    "last_cause",
    "answered_number",
    "answered_by",
    "answered_at",
    "call_id",
)
_NUMBER_LIKE = re.compile(r"^[+\-]?[0-9][0-9 ().\-]*$")


def _cell(value: Any) -> str:
    """A CSV cell a spreadsheet will not run as a formula (OWASP "CSV Injection": cells starting with
    = + - @ TAB CR are prefixed with '); phone numbers and plain numbers are left as they are."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and text[0] in "=+-@\t\r" and not _NUMBER_LIKE.match(text):
        return "'" + text
    return text


def results_csv(items: list[dict[str, Any]]) -> str:
    """One row per patient: fixed columns, then ``var:<name>`` per recipient variable and
    ``<survey>.<question>`` per survey question, both in order of first appearance."""
    var_names: dict[str, None] = {}
    questions: dict[str, None] = {}
    for item in items:
        var_names.update(dict.fromkeys(item["vars"]))
        questions.update(dict.fromkeys(f"{a['survey']}.{a['question']}" for a in item["answers"]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180 §2: CRLF line breaks
    writer.writerow([*_FIXED, *(f"var:{n}" for n in var_names), *questions])
    for item in items:
        counts = item["attempts_by_outcome"]
        answers = {f"{a['survey']}.{a['question']}": a["answer"] for a in item["answers"]}
        row = [
            item["seq"],
            " ".join(item["numbers"]),
            item["state"],
            item["outcome"],
            item["attempts"],
            counts["busy"],
            counts["no_answer"],
            counts["failed"],
            item["last_cause"],
            item["answered_number"],
            item["answered_by"],
            item["answered_at"],
            item["call_id"],
            *(item["vars"].get(n) for n in var_names),
            *(answers.get(q) for q in questions),
        ]
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


# --- OpenAPI ------------------------------------------------------------------------------------------------
_ID = {"name": "campaign_id", "in": "path", "required": True, "schema": {"type": "string"}}


_op = openapi.authenticated


OPENAPI_OPERATIONS: tuple[openapi.Operation, ...] = (
    _op(
        "/v1/call-campaigns",
        "post",
        "createCallCampaign",
        "Dial a list of patients and run an IVR node (a survey) on each answered call",
        SCOPE_CALLS_WRITE,
        {201: (CampaignView, "Created; the scheduler starts dialling inside the window")},
        problems=(400, 404, 415, 422),
        request=CallCampaignSpec,
    ),
    _op(
        "/v1/call-campaigns",
        "get",
        "listCallCampaigns",
        "Call campaigns, newest first",
        SCOPE_CALLS_READ,
        {200: (CallCampaignList, "Campaigns with progress counts")},
        problems=(400, 404),
        parameters=[openapi._query("state", {"type": "string", "enum": list(_STATES)}, "Only this state")],
    ),
    _op(
        "/v1/call-campaigns/{campaign_id}",
        "get",
        "getCallCampaign",
        "One call campaign",
        SCOPE_CALLS_READ,
        {200: (CampaignView, "The campaign")},
        problems=(404,),
        parameters=[_ID],
    ),
    *(
        _op(
            f"/v1/call-campaigns/{{campaign_id}}/{action}",
            "post",
            f"{action}CallCampaign",
            summary,
            SCOPE_CALLS_WRITE,
            {200: (CampaignView, "The campaign")},
            problems=(404, 409),
            parameters=[_ID],
        )
        for action, summary in (
            ("pause", "Pause: no new calls (calls in progress finish)"),
            ("resume", "Resume a paused campaign"),
            ("cancel", "Cancel: waiting patients are canceled, calls still dialling are hung up"),
        )
    ),
    _op(
        "/v1/call-campaigns/{campaign_id}/results",
        "get",
        "callCampaignResults",
        "One result per patient with its survey answers (JSON, or CSV with format=csv)",
        SCOPE_CALLS_READ,
        {200: (ResultList, "Results; text/csv when format=csv")},
        problems=(400, 404),
        parameters=[
            _ID,
            openapi._query("format", {"type": "string", "enum": ["json", "csv"]}, "json or csv"),
        ],
    ),
)
