"""REST routes for SMS campaigns (gateway/sms/campaigns.py).

    POST /v1/campaigns                    sms:send  JSON {template, category?, recipients, route?, start_at?,
                                                    reply_rule?}; or a CSV: ``text/csv`` body with the other
                                                    fields as query parameters, or ``multipart/form-data``
                                                    with a ``recipients`` file part and the fields as form
                                                    fields (reply_rule as JSON text) -> 201
    GET  /v1/campaigns                    sms:read  newest first (?status, ?cursor, ?limit)
    GET  /v1/campaigns/{id}               sms:read  status, counts, throughput, ETA
    POST /v1/campaigns/{id}/pause|resume|cancel  sms:send
    GET  /v1/campaigns/{id}/rejected      sms:read  rejected rows and duplicates with row numbers

A CSV's header row names ``to`` and the template's variables; rows are numbered as a spreadsheet shows them
(header = row 1). A 100,000-row CSV is several megabytes, more than the API's general body limit: this module
raises the limit for ``POST /v1/campaigns`` only, to ``campaigns.max_upload_bytes``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, request
from werkzeug.exceptions import RequestEntityTooLarge

from api import openapi
from api.auth import SCOPE_SMS_READ, SCOPE_SMS_SEND, requires_scope
from api.problems import ApiProblem, FieldError, validation_problem
from api.services import api_state
from api.templates import json_response
from gateway.sms.campaigns import CampaignError, CampaignService, CampaignSettings
from gateway.sms.models import Conflict, NotFound

blueprint = Blueprint("campaigns", __name__)

UPLOAD_PATH = "/v1/campaigns"
_ID_MAX = 64
_FIELDS = ("template", "category", "route", "start_at", "reply_rule")


# --- bodies (also the OpenAPI schemas) ------------------------------------------------------------------
class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    to: Annotated[str, Field(max_length=64, description="Phone number; national numbers read in the region")]
    vars: Annotated[
        dict[str, str | int | float | list[str]],
        Field(max_length=100, description="Values of the template's placeholders"),
    ] = Field(default_factory=dict)


class CreateCampaignRequest(BaseModel):
    """POST /v1/campaigns as JSON."""

    model_config = ConfigDict(extra="forbid", strict=True)

    template: Annotated[str, Field(max_length=64, description="Id of a stored template (/v1/templates)")]
    recipients: Annotated[list[Recipient], Field(min_length=1, description="Up to campaigns.max_rows")]
    category: Annotated[str | None, Field(description="Default: the template's category")] = None
    route: Annotated[str | None, Field(description="auto (default), a modem or an HTTP provider")] = None
    start_at: Annotated[str | None, Field(description="ISO 8601 with offset; default: now")] = None
    reply_rule: Annotated[
        dict[str, Any] | None,
        Field(description='How replies are parsed: {"kind":"range","min":1,"max":5} or choices'),
    ] = None


class RowProblemBody(BaseModel):
    row: Annotated[int, Field(description="CSV: spreadsheet row (header = 1); JSON: position from 1")]
    code: Annotated[
        str, Field(description="invalid_number, missing_variables, too_many_parts, duplicate ...")
    ]
    field: str
    detail: str


class CountsBody(BaseModel):
    total: int
    pending: Annotated[int, Field(description="Not submitted to the send queue yet")]
    queued: int
    sending: int
    sent: int
    delivered: int
    undelivered: int
    failed: int
    canceled: int
    refused: Annotated[int, Field(description="Refused at submit, e.g. opted_out")]


class CampaignBody(BaseModel):
    id: str
    status: Annotated[str, Field(description="scheduled, running, paused, completed, canceled")]
    template: dict[str, Any]
    category: str
    route: str
    source: Annotated[str, Field(description="json or csv")]
    start_at: str
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    rows: dict[str, int]
    parts: int
    counts: CountsBody
    throughput_per_s: float | None
    eta_s: float | None
    reply_rule: dict[str, Any] | None


class CreatedBody(CampaignBody):
    rejected: list[RowProblemBody]
    rejected_truncated: Annotated[bool, Field(description="More at GET /v1/campaigns/{id}/rejected")]
    unused_columns: list[str]


class CampaignList(BaseModel):
    items: list[CampaignBody]
    next_cursor: str | None


class RejectedList(BaseModel):
    items: list[RowProblemBody]
    next_cursor: str | None


# --- upload limit ---------------------------------------------------------------------------------------
@blueprint.record_once
def _raise_upload_limit(state: Any) -> None:
    """Let ``POST /v1/campaigns`` bodies reach ``campaigns.max_upload_bytes`` (the body limit is fixed when
    the request object is built, before any handler runs, hence a request class)."""
    app = state.app
    base = app.request_class

    class CampaignUploadRequest(base):  # type: ignore[misc, valid-type]
        def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
            if method == "POST" and path == UPLOAD_PATH:
                service = getattr(api_state(app).services, "campaigns", None)
                limit = (service.settings if service is not None else CampaignSettings()).max_upload_bytes
                kwargs["max_content_length"] = limit
            super().__init__(method, scheme, path, *args, **kwargs)

    app.request_class = CampaignUploadRequest


# --- helpers --------------------------------------------------------------------------------------------
def _campaigns() -> CampaignService:
    service = getattr(api_state().services, "campaigns", None)
    if service is None:
        raise ApiProblem("not_found", "campaigns are not enabled on this gateway")
    return service


def _problem(exc: Exception) -> ApiProblem:
    if isinstance(exc, NotFound):
        return ApiProblem("not_found", str(exc))
    if isinstance(exc, Conflict):
        return ApiProblem("conflict", str(exc))
    if isinstance(exc, CampaignError):
        return ApiProblem(
            exc.code, exc.detail, status=exc.status, errors=[FieldError(f, m) for f, m in exc.errors]
        )
    raise exc


def _campaign_id(campaign_id: str) -> str:
    if len(campaign_id) > _ID_MAX:
        raise ApiProblem("not_found", "no such campaign")
    return campaign_id


def _reply_rule_text(text: str | None) -> Any:
    if text is None or not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise ApiProblem(
            "invalid_reply_rule",
            "reply_rule must be a JSON object",
            status=422,
            errors=[FieldError("reply_rule", 'JSON text, e.g. {"kind":"range","min":1,"max":5}')],
        ) from None


def _media_type() -> tuple[str, dict[str, str]]:
    header = request.headers.get("Content-Type") or ""
    mime, _, rest = header.partition(";")
    params = {}
    for item in rest.split(";"):
        key, _, value = item.partition("=")
        if key.strip():
            params[key.strip().lower()] = value.strip().strip('"')
    return mime.strip().lower(), params


async def _create_arguments() -> dict[str, Any]:
    """The create call's keyword arguments from a JSON, CSV or multipart request."""
    mime, params = _media_type()
    if mime == "application/json":
        data = await request.get_data(cache=False)
        try:
            body = CreateCampaignRequest.model_validate_json(data)
        except ValidationError as exc:
            raise validation_problem(exc) from None
        return {
            "template_id": body.template,
            "recipients": [r.model_dump() for r in body.recipients],
            "category": body.category,
            "route": body.route,
            "start_at": body.start_at,
            "reply_rule": body.reply_rule,
        }
    if mime == "text/csv":
        fields: Any = request.args
        unknown = sorted(set(fields) - set(_FIELDS))
        csv_data = await request.get_data(cache=False)
        charset = params.get("charset")
    elif mime == "multipart/form-data":
        fields = await request.form
        files = await request.files
        unknown = sorted((set(fields) | set(files)) - {*_FIELDS, "recipients"})
        upload = files.get("recipients")
        if upload is None:
            raise ApiProblem(
                "validation_error",
                "the form has no 'recipients' file part (the CSV)",
                errors=[FieldError("recipients", "a CSV file part is required")],
            )
        csv_data = upload.read()
        charset = (upload.mimetype_params or {}).get("charset")
    else:
        raise ApiProblem(
            "unsupported_media_type",
            "send application/json, text/csv (fields as query parameters) or multipart/form-data",
        )
    if unknown:
        raise ApiProblem(
            "validation_error",
            f"unknown field(s): {', '.join(unknown)}",
            errors=[FieldError(name, "unknown field") for name in unknown],
        )
    if not fields.get("template"):
        raise ApiProblem(
            "validation_error", "'template' is required", errors=[FieldError("template", "field required")]
        )
    return {
        "template_id": fields.get("template"),
        "csv_data": csv_data,
        "csv_charset": charset,
        "category": fields.get("category") or None,
        "route": fields.get("route") or None,
        "start_at": fields.get("start_at") or None,
        "reply_rule": _reply_rule_text(fields.get("reply_rule")),
    }


def _query_limit(default: int) -> int:
    text = request.args.get("limit")
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ApiProblem(
            "invalid_parameter", "limit must be an integer", errors=[FieldError("limit", "an integer")]
        ) from None


def _check_query(allowed: set[str]) -> None:
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise ApiProblem(
            "invalid_parameter",
            f"unknown query parameter(s): {', '.join(unknown)}",
            errors=[FieldError(name, "unknown parameter") for name in unknown],
        )


# --- routes ---------------------------------------------------------------------------------------------
@blueprint.post(UPLOAD_PATH)
@requires_scope(SCOPE_SMS_SEND)
async def create_campaign() -> Any:
    service = _campaigns()
    try:
        arguments = await _create_arguments()
    except RequestEntityTooLarge:
        raise ApiProblem(
            "body_too_large",
            f"the upload is larger than {service.settings.max_upload_bytes} bytes "
            "(campaigns.max_upload_bytes)",
            headers={"Connection": "close"},
        ) from None
    try:
        created = await service.create(**arguments)
    except (CampaignError, NotFound, Conflict) as exc:
        raise _problem(exc) from None
    body = created.campaign.to_json()
    body["rejected"] = [p.to_json() for p in created.rejected]
    body["rejected_truncated"] = created.more_rejected
    body["unused_columns"] = list(created.unused_columns)
    return json_response(body, 201, {"Location": f"{UPLOAD_PATH}/{created.campaign.id}"})


@blueprint.get("/v1/campaigns")
@requires_scope(SCOPE_SMS_READ)
async def list_campaigns() -> Any:
    _check_query({"status", "cursor", "limit"})
    try:
        items, cursor = await _campaigns().list(
            status=request.args.get("status") or None,
            cursor=request.args.get("cursor") or None,
            limit=_query_limit(50),
        )
    except CampaignError as exc:
        raise _problem(exc) from None
    return {"items": [c.to_json() for c in items], "next_cursor": cursor}


@blueprint.get("/v1/campaigns/<campaign_id>")
@requires_scope(SCOPE_SMS_READ)
async def get_campaign(campaign_id: str) -> Any:
    try:
        return (await _campaigns().get(_campaign_id(campaign_id))).to_json()
    except NotFound as exc:
        raise _problem(exc) from None


@blueprint.get("/v1/campaigns/<campaign_id>/rejected")
@requires_scope(SCOPE_SMS_READ)
async def list_rejected(campaign_id: str) -> Any:
    _check_query({"cursor", "limit", "code"})
    try:
        items, cursor = await _campaigns().rejected(
            _campaign_id(campaign_id),
            cursor=request.args.get("cursor") or None,
            limit=_query_limit(100),
            code=request.args.get("code") or None,
        )
    except (CampaignError, NotFound) as exc:
        raise _problem(exc) from None
    return {"items": [p.to_json() for p in items], "next_cursor": cursor}


def _action(name: str) -> Any:
    async def act(campaign_id: str) -> Any:
        service = _campaigns()
        try:
            campaign = await getattr(service, name)(_campaign_id(campaign_id))
        except (NotFound, Conflict) as exc:
            raise _problem(exc) from None
        return campaign.to_json()

    act.__name__ = f"{name}_campaign"
    return act


for _name in ("pause", "resume", "cancel"):
    blueprint.post(f"/v1/campaigns/<campaign_id>/{_name}")(requires_scope(SCOPE_SMS_SEND)(_action(_name)))


# --- OpenAPI --------------------------------------------------------------------------------------------
_ID_PARAM = {"name": "campaign_id", "in": "path", "required": True, "schema": {"type": "string"}}
_AUTH = (401, 403)
_CREATE_DESCRIPTION = (
    "JSON, or a CSV (header row: `to` and the template's variables) as `text/csv` with the other fields "
    "as query parameters, or as the `recipients` part of `multipart/form-data`. Every row is validated; "
    "rejected rows and duplicates (sent once) are listed with their row numbers. 422 codes: "
    "unknown_template, unknown_category, unknown_route, invalid_start_at, invalid_reply_rule, invalid_csv, "
    "missing_columns, too_many_rows, no_valid_recipients."
)

OPENAPI_OPERATIONS: tuple[openapi.Operation, ...] = (
    openapi.Operation(
        "/v1/campaigns",
        "post",
        "createCampaign",
        "Create a campaign from a template and recipients (JSON or CSV)",
        SCOPE_SMS_SEND,
        {201: (CreatedBody, "Accepted: the campaign, its rejected rows (first ones) and counts")},
        problems=(400, *_AUTH, 413, 415, 422),
        request=CreateCampaignRequest,
        description=_CREATE_DESCRIPTION,
        parameters=[
            openapi._query(name, {"type": "string"}, f"text/csv uploads only: {name}") for name in _FIELDS
        ],
    ),
    openapi.Operation(
        "/v1/campaigns",
        "get",
        "listCampaigns",
        "List campaigns, newest first",
        SCOPE_SMS_READ,
        {200: (CampaignList, "A page of campaigns")},
        problems=(400, *_AUTH),
        parameters=[
            openapi._query("status", {"type": "string"}, "scheduled, running, paused, completed, canceled"),
            openapi._query("cursor", {"type": "string"}, "next_cursor of the previous page"),
            openapi._query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "Page size (50)"),
        ],
    ),
    openapi.Operation(
        "/v1/campaigns/{campaign_id}",
        "get",
        "getCampaign",
        "A campaign with its counts, throughput and ETA",
        SCOPE_SMS_READ,
        {200: (CampaignBody, "The campaign")},
        problems=(*_AUTH, 404),
        parameters=[_ID_PARAM],
    ),
    openapi.Operation(
        "/v1/campaigns/{campaign_id}/rejected",
        "get",
        "listCampaignRejectedRows",
        "Rejected rows and duplicates with their row numbers",
        SCOPE_SMS_READ,
        {200: (RejectedList, "A page of rows, in row order")},
        problems=(400, *_AUTH, 404),
        parameters=[
            _ID_PARAM,
            openapi._query("code", {"type": "string"}, "Only this code (e.g. duplicate)"),
            openapi._query("cursor", {"type": "string"}, "next_cursor of the previous page"),
            openapi._query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Page size (100)"),
        ],
    ),
    *(
        openapi.Operation(
            f"/v1/campaigns/{{campaign_id}}/{name}",
            "post",
            f"{name}Campaign",
            summary,
            SCOPE_SMS_SEND,
            {200: (CampaignBody, "The campaign after the change")},
            problems=(*_AUTH, 404, 409),
            parameters=[_ID_PARAM],
        )
        for name, summary in (
            ("pause", "Stop feeding the send queue (queued messages still go out)"),
            ("resume", "Feed again (or wait for start_at)"),
            ("cancel", "Skip the recipients not sent and cancel the queued messages"),
        )
    ),
)
