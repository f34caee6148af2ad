"""REST routes for SMS templates: ``/v1/templates`` CRUD and ``POST /v1/templates/{id}/preview``.

Scopes: reading and previewing need ``sms:read``; creating, replacing and deleting need ``admin``. A template
decides what every later message says, the verification-code template included (a rewritten otp template
could carry a phishing link to every patient who books online), so a CRM token that may send messages may
not rewrite them. Documented in docs/api-sms-platform.md.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, current_app, request
from quart_trio.wrappers import TrioResponse

from api import openapi
from api.auth import SCOPE_ADMIN, SCOPE_SMS_READ, requires_scope
from api.problems import ApiProblem, FieldError, validation_problem
from api.services import api_state
from gateway.sms.template_store import TemplateExists, TemplateNotFound, TemplateStore
from gateway.sms.templates import MissingVariables, TemplateError, UnknownVariables

blueprint = Blueprint("templates", __name__)

_ID_MAX = 64
MAX_VARS = 100


# --- bodies (also the OpenAPI schemas) ------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TemplateFields(_Request):
    """PUT /v1/templates/{id}: the editable fields (the id is the path)."""

    category: Annotated[
        str, Field(description="otp, lab_result, appointment, billing, care, education, report")
    ]
    language: Annotated[str, Field(max_length=16, description="BCP 47 language tag: ja, zh, zh-TW")]
    body: Annotated[
        str,
        Field(min_length=1, max_length=2000, description="Text with {placeholders}; {{ and }} are braces"),
    ]
    name: Annotated[str, Field(max_length=200, description="Human-readable title")] = ""


class CreateTemplateRequest(TemplateFields):
    """POST /v1/templates."""

    id: Annotated[str, Field(max_length=_ID_MAX, description="Lower case, digits, '_', '.', '-'")]


class PreviewRequest(_Request):
    """POST /v1/templates/{id}/preview."""

    vars: Annotated[
        dict[str, str | int | list[str]], Field(max_length=MAX_VARS, description="Placeholder values")
    ] = Field(default_factory=dict)
    price_per_part: Annotated[
        str | int | float | None,
        Field(description="Price of one SMS part (decimal string preferred); default: the gateway's"),
    ] = None


class TemplateBody(_Response):
    id: str
    category: str
    language: str
    name: str
    body: str
    placeholders: list[str]
    revision: int
    source: Annotated[str, Field(description="seed (built in) or api")]
    created_at: str
    updated_at: str


class TemplateList(_Response):
    items: list[TemplateBody]


class PreviewBody(_Response):
    text: str
    encoding: Annotated[str, Field(description="gsm7 or ucs2")]
    parts: int
    characters: int
    cost: Annotated[str | None, Field(description="parts x price per part (decimal string); null: no price")]
    unused: Annotated[list[str], Field(description="Values given that the template does not use")]


# --- helpers shared with api/verifications.py -----------------------------------------------------------
async def parse_json_body(model: type[BaseModel]) -> Any:
    """The request body validated against ``model`` (415 / 400 malformed_json / 422 validation_error)."""
    mime = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if mime != "application/json":
        raise ApiProblem("unsupported_media_type", "send the body as Content-Type: application/json")
    data = await request.get_data(cache=False)
    if not data and model is PreviewRequest:  # every field of a preview is optional
        data = b"{}"
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise validation_problem(exc) from None


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> TrioResponse:
    response = current_app.json.response(payload)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _templates() -> TemplateStore:
    service = api_state().services.templates
    if service is None:
        raise ApiProblem("not_found", "templates are not enabled on this gateway")
    return service


def _invalid_template(exc: TemplateError) -> ApiProblem:
    return ApiProblem("invalid_template", str(exc), status=422, errors=[FieldError("", str(exc))])


def render_problem(exc: TemplateError, field: str = "vars") -> ApiProblem:
    """422 for values that do not fit a template: one error per missing (or unknown) variable."""
    if isinstance(exc, MissingVariables):
        return ApiProblem(
            "missing_variables",
            str(exc),
            status=422,
            errors=[FieldError(f"{field}.{name}", "required by the template") for name in exc.missing],
        )
    if isinstance(exc, UnknownVariables):
        return ApiProblem(
            "unknown_variables",
            str(exc),
            status=422,
            errors=[FieldError(f"{field}.{name}", "not used by the template") for name in exc.unknown],
        )
    return ApiProblem("invalid_request", str(exc), status=422)


def _template_id(template_id: str) -> str:
    if len(template_id) > _ID_MAX:
        raise ApiProblem("not_found", "no such template")
    return template_id


# --- routes ---------------------------------------------------------------------------------------------
@blueprint.get("/v1/templates")
@requires_scope(SCOPE_SMS_READ)
async def list_templates() -> Any:
    args = request.args
    unknown = sorted(set(args) - {"category", "language"})
    if unknown:
        raise ApiProblem(
            "invalid_parameter",
            f"unknown query parameter(s): {', '.join(unknown)}",
            errors=[FieldError(name, "unknown parameter") for name in unknown],
        )
    items = await _templates().list(
        category=args.get("category") or None, language=args.get("language") or None
    )
    return {"items": [t.to_json() for t in items]}


@blueprint.post("/v1/templates")
@requires_scope(SCOPE_ADMIN)
async def create_template() -> Any:
    body: CreateTemplateRequest = await parse_json_body(CreateTemplateRequest)
    try:
        stored = await _templates().create(body.id, body.category, body.language, body.body, body.name)
    except TemplateExists as exc:
        raise ApiProblem("conflict", str(exc)) from None
    except TemplateError as exc:
        raise _invalid_template(exc) from None
    return json_response(stored.to_json(), 201, {"Location": f"/v1/templates/{stored.id}"})


@blueprint.get("/v1/templates/<template_id>")
@requires_scope(SCOPE_SMS_READ)
async def get_template(template_id: str) -> Any:
    stored = await _templates().get(_template_id(template_id))
    if stored is None:
        raise ApiProblem("not_found", f"no template with id {template_id!r}")
    return stored.to_json()


@blueprint.put("/v1/templates/<template_id>")
@requires_scope(SCOPE_ADMIN)
async def replace_template(template_id: str) -> Any:
    body: TemplateFields = await parse_json_body(TemplateFields)
    try:
        stored = await _templates().replace(
            _template_id(template_id),
            category=body.category,
            language=body.language,
            body=body.body,
            name=body.name,
        )
    except TemplateNotFound as exc:
        raise ApiProblem("not_found", str(exc)) from None
    except TemplateError as exc:
        raise _invalid_template(exc) from None
    return stored.to_json()


@blueprint.delete("/v1/templates/<template_id>")
@requires_scope(SCOPE_ADMIN)
async def delete_template(template_id: str) -> Any:
    try:
        await _templates().delete(_template_id(template_id))
    except TemplateNotFound as exc:
        raise ApiProblem("not_found", str(exc)) from None
    return TrioResponse("", status=204)


@blueprint.post("/v1/templates/<template_id>/preview")
@requires_scope(SCOPE_SMS_READ)
async def preview_template(template_id: str) -> Any:
    body: PreviewRequest = await parse_json_body(PreviewRequest)
    price: Any = body.price_per_part
    if isinstance(price, float):  # JSON numbers arrive as floats; read them as the decimal the client wrote
        price = str(price)
    if price is not None:
        try:
            if not Decimal(price).is_finite() or Decimal(price) < 0:
                raise InvalidOperation
        except InvalidOperation:
            raise ApiProblem(
                "validation_error",
                "price_per_part must be a decimal number >= 0",
                errors=[FieldError("price_per_part", 'a decimal number >= 0, e.g. "0.068"')],
            ) from None
    try:
        result = await _templates().preview(_template_id(template_id), body.vars, price_per_part=price)
    except TemplateNotFound as exc:
        raise ApiProblem("not_found", str(exc)) from None
    except TemplateError as exc:
        raise render_problem(exc) from None
    return {
        "text": result.text,
        "encoding": result.encoding,
        "parts": result.parts,
        "characters": result.characters,
        "cost": None if result.cost is None else str(result.cost),
        "unused": list(result.unused),
    }


# --- OpenAPI --------------------------------------------------------------------------------------------
_ID_PARAM = {"name": "template_id", "in": "path", "required": True, "schema": {"type": "string"}}
_AUTH = (401, 403)

# Collected by api/app.py into /openapi.json (build_openapi(extra=...)).
OPENAPI_OPERATIONS: tuple[openapi.Operation, ...] = (
    openapi.Operation(
        "/v1/templates",
        "get",
        "listTemplates",
        "List stored SMS templates",
        SCOPE_SMS_READ,
        {200: (TemplateList, "Templates in id order")},
        problems=(400, *_AUTH),
        parameters=[
            openapi._query("category", {"type": "string"}, "Only this category"),
            openapi._query("language", {"type": "string"}, "Only this language (ja, zh ...)"),
        ],
    ),
    openapi.Operation(
        "/v1/templates",
        "post",
        "createTemplate",
        "Create a template",
        SCOPE_ADMIN,
        {201: (TemplateBody, "Created")},
        problems=(400, *_AUTH, 409, 415, 422),
        request=CreateTemplateRequest,
    ),
    openapi.Operation(
        "/v1/templates/{template_id}",
        "get",
        "getTemplate",
        "Read a template",
        SCOPE_SMS_READ,
        {200: (TemplateBody, "The template")},
        problems=(*_AUTH, 404),
        parameters=[_ID_PARAM],
    ),
    openapi.Operation(
        "/v1/templates/{template_id}",
        "put",
        "replaceTemplate",
        "Replace a template's category, language, name and body (revision + 1)",
        SCOPE_ADMIN,
        {200: (TemplateBody, "The new revision")},
        problems=(400, *_AUTH, 404, 415, 422),
        request=TemplateFields,
        parameters=[_ID_PARAM],
    ),
    openapi.Operation(
        "/v1/templates/{template_id}",
        "delete",
        "deleteTemplate",
        "Delete a template",
        SCOPE_ADMIN,
        {204: (None, "Deleted")},
        problems=(*_AUTH, 404),
        parameters=[_ID_PARAM],
    ),
    openapi.Operation(
        "/v1/templates/{template_id}/preview",
        "post",
        "previewTemplate",
        "Render a template: text, encoding, parts and cost",
        SCOPE_SMS_READ,
        {200: (PreviewBody, "The rendered text and its SMS cost")},
        problems=(400, *_AUTH, 404, 415, 422),
        request=PreviewRequest,
        parameters=[_ID_PARAM],
        description="Missing values answer 422 missing_variables with one errors[] entry per variable.",
    ),
)

