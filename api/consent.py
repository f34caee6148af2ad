"""REST routes of the opt-out registry and of reply rules (gateway.sms.consent, gateway.sms.replies).

    GET    /v1/opt-outs?number=&cursor=&limit=     sms:read   the registry (one number, or all by number)
    POST   /v1/opt-outs {number, categories?, reason?}  sms:send   201 new rows, 200 when nothing was new
    DELETE /v1/opt-outs/{number}?category=         sms:send   one category ('*' included) or every row
    POST   /v1/reply-rules {scope, ref_id, rule}   sms:send   how replies to a message/campaign are parsed
    GET    /v1/reply-rules/{scope}/{ref_id}        sms:read
    DELETE /v1/reply-rules/{scope}/{ref_id}        sms:send

Numbers are normalised like submitted messages (gateway.numbers, default region), so "090-1234-5678" and
"+819012345678" name the same row. Without ``ApiServices.consent`` every route answers 404.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, current_app, request

from api import openapi
from api.auth import SCOPE_SMS_READ, SCOPE_SMS_SEND, requires_scope
from api.problems import ApiProblem, FieldError, validation_problem
from api.schemas import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT
from api.services import api_state
from api.submit_fast import check_json_content_type
from gateway.sms.models import InvalidRequest, NotFound

blueprint = Blueprint("consent", __name__)


# --- bodies (also the OpenAPI schemas) ----------------------------------------------------------------------
class OptOutRequest(BaseModel):
    """POST /v1/opt-outs."""

    model_config = ConfigDict(extra="forbid", strict=True)

    number: Annotated[str, Field(min_length=1, max_length=64, examples=["+819012345678", "090-1234-5678"])]
    categories: Annotated[
        list[str] | None,
        Field(
            min_length=1,
            max_length=32,
            description="Categories to refuse; default ['*'] (all that honour "
            "opt-outs). Categories that bypass opt-outs (otp, lab_result, appointment) are refused.",
        ),
    ] = None
    reason: Annotated[str | None, Field(max_length=500)] = None


class OptOutEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: str
    category: str
    source: Literal["api", "keyword"]
    reason: str | None
    message_id: str | None
    created_at: str


class OptOutList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[OptOutEntry]
    next_cursor: str | None = None
    added: list[str] | None = None  # POST only: the categories that were new


class ReplyRuleRequest(BaseModel):
    """POST /v1/reply-rules. ``rule``: {"kind": "range", "min": 1, "max": 5} or {"kind": "choices",
    "values": ["はい", "いいえ"]}."""

    model_config = ConfigDict(extra="forbid", strict=True)

    scope: Literal["message", "campaign"]
    ref_id: Annotated[str, Field(min_length=1, max_length=128)]
    rule: dict[str, Any]


class ReplyRuleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Literal["message", "campaign"]
    ref_id: str
    rule: dict[str, Any]


# --- helpers ------------------------------------------------------------------------------------------------
def _consent() -> Any:
    service = api_state().services.consent
    if service is None:
        raise ApiProblem("not_found", "the opt-out registry is not enabled on this gateway")
    return service


def _reply_rules() -> Any:
    rules = getattr(_consent(), "reply_rules", None)
    if rules is None:
        raise ApiProblem("not_found", "reply rules are not enabled on this gateway")
    return rules


def _problem(exc: InvalidRequest | NotFound, *, query: bool = False) -> ApiProblem:
    if isinstance(exc, NotFound):
        return ApiProblem("not_found", str(exc))
    errors = [FieldError(exc.field, exc.detail)] if exc.field else []
    if query and exc.code == "invalid_parameter":
        return ApiProblem("invalid_parameter", exc.detail, errors=errors)
    return ApiProblem(exc.code, exc.detail, status=422, errors=errors)


def _check_query(allowed: set[str]) -> None:
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise ApiProblem(
            "invalid_parameter",
            f"unknown query parameter(s): {', '.join(unknown)}",
            errors=[FieldError(name, "unknown parameter") for name in unknown],
        )


async def _body(model: type[BaseModel]) -> Any:
    check_json_content_type(request.headers.get("Content-Type"))
    try:
        return model.model_validate_json(await request.get_data(cache=False) or b"")
    except ValidationError as exc:
        raise validation_problem(exc) from None


def _json(payload: Any, status: int = 200) -> Any:
    response = current_app.json.response(payload)
    response.status_code = status
    return response


# --- opt-outs -----------------------------------------------------------------------------------------------
@blueprint.get("/v1/opt-outs")
@requires_scope(SCOPE_SMS_READ)
async def list_opt_outs() -> Any:
    _check_query({"number", "cursor", "limit"})
    limit_text = request.args.get("limit")
    limit = DEFAULT_PAGE_LIMIT
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE_LIMIT:
            raise ApiProblem(
                "invalid_parameter",
                f"limit must be an integer from 1 to {MAX_PAGE_LIMIT}",
                errors=[FieldError("limit", f"integer from 1 to {MAX_PAGE_LIMIT}")],
            )
        limit = int(limit_text)
    number = request.args.get("number") or None
    try:
        rows, next_cursor = await _consent().list(
            number, cursor=request.args.get("cursor") or None, limit=limit
        )
    except InvalidRequest as exc:
        raise _problem(exc, query=True) from None
    return {"items": [r.to_json() for r in rows], "next_cursor": next_cursor}


@blueprint.post("/v1/opt-outs")
@requires_scope(SCOPE_SMS_SEND)
async def add_opt_out() -> Any:
    body = await _body(OptOutRequest)
    try:
        rows, added = await _consent().add(body.number, body.categories, body.reason)
    except InvalidRequest as exc:
        raise _problem(exc) from None
    return _json(
        {"items": [r.to_json() for r in rows], "next_cursor": None, "added": added}, 201 if added else 200
    )


@blueprint.delete("/v1/opt-outs/<number>")
@requires_scope(SCOPE_SMS_SEND)
async def remove_opt_out(number: str) -> Any:
    _check_query({"category"})
    category = request.args.get("category")
    try:
        removed = await _consent().remove(number, category)
    except (InvalidRequest, NotFound) as exc:
        raise _problem(exc) from None
    return {"removed": removed}


# --- reply rules --------------------------------------------------------------------------------------------
@blueprint.post("/v1/reply-rules")
@requires_scope(SCOPE_SMS_SEND)
async def put_reply_rule() -> Any:
    body = await _body(ReplyRuleRequest)
    try:
        rule = await _reply_rules().put(body.scope, body.ref_id, body.rule)
    except (InvalidRequest, NotFound) as exc:
        raise _problem(exc) from None
    return {"scope": body.scope, "ref_id": body.ref_id, "rule": rule.to_json()}


def _rule_scope(scope: str) -> str:
    if scope not in ("message", "campaign"):
        raise ApiProblem("not_found", "reply rules live under /v1/reply-rules/message/… or /campaign/…")
    return scope


@blueprint.get("/v1/reply-rules/<scope>/<ref_id>")
@requires_scope(SCOPE_SMS_READ)
async def get_reply_rule(scope: str, ref_id: str) -> Any:
    rule = await _reply_rules().get(_rule_scope(scope), ref_id)
    if rule is None:
        raise ApiProblem("not_found", f"no reply rule for {scope} {ref_id!r}")
    return {"scope": scope, "ref_id": ref_id, "rule": rule.to_json()}


@blueprint.delete("/v1/reply-rules/<scope>/<ref_id>")
@requires_scope(SCOPE_SMS_SEND)
async def delete_reply_rule(scope: str, ref_id: str) -> Any:
    if not await _reply_rules().delete(_rule_scope(scope), ref_id):
        raise ApiProblem("not_found", f"no reply rule for {scope} {ref_id!r}")
    return {"deleted": True}


# --- OpenAPI ------------------------------------------------------------------------------------------------
_AUTH = (401, 403)
_NUMBER = {"name": "number", "in": "path", "required": True, "schema": {"type": "string"}}
_SCOPE = {"name": "scope", "in": "path", "required": True, "schema": {"enum": ["message", "campaign"]}}
_REF_ID = {"name": "ref_id", "in": "path", "required": True, "schema": {"type": "string"}}

# Collected by api/app.py (``build_openapi(extra=...)``): every route here is documented next to it.
OPENAPI_OPERATIONS: tuple[openapi.Operation, ...] = (
    openapi.Operation(
        "/v1/opt-outs",
        "get",
        "listOptOuts",
        "The opt-out registry, by number then category",
        SCOPE_SMS_READ,
        {200: (OptOutList, "One page of opt-outs")},
        problems=(400, *_AUTH, 422),
        parameters=[
            openapi._query("number", {"type": "string"}, "Only this number (normalised like 'to')"),
            openapi._query("cursor", {"type": "string"}, "next_cursor of the previous page"),
            openapi._query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT, "default": DEFAULT_PAGE_LIMIT},
                "Page size",
            ),
        ],
    ),
    openapi.Operation(
        "/v1/opt-outs",
        "post",
        "addOptOut",
        "Opt a number out of categories",
        SCOPE_SMS_SEND,
        {
            201: (OptOutList, "Added; items: every opt-out of the number"),
            200: (OptOutList, "Nothing new: the number was already opted out"),
        },
        problems=(400, *_AUTH, 413, 415, 422),
        request=OptOutRequest,
        description="Messages in those categories to the number are then refused with 422 opted_out; "
        "'*' (default) covers every category that honours opt-outs.",
    ),
    openapi.Operation(
        "/v1/opt-outs/{number}",
        "delete",
        "removeOptOut",
        "Remove a number's opt-out(s)",
        SCOPE_SMS_SEND,
        {200: (None, "{removed: n}")},
        problems=(400, *_AUTH, 404, 422),
        parameters=[_NUMBER, openapi._query("category", {"type": "string"}, "Only this category ('*' too)")],
    ),
    openapi.Operation(
        "/v1/reply-rules",
        "post",
        "putReplyRule",
        "Set how replies to a message or campaign are parsed",
        SCOPE_SMS_SEND,
        {200: (ReplyRuleBody, "The stored rule")},
        problems=(400, *_AUTH, 404, 413, 415, 422),
        request=ReplyRuleRequest,
        description="Replies within the correlation window carry a parsed 'answer' in sms.received.",
    ),
    openapi.Operation(
        "/v1/reply-rules/{scope}/{ref_id}",
        "get",
        "getReplyRule",
        "The reply rule of a message or campaign",
        SCOPE_SMS_READ,
        {200: (ReplyRuleBody, "The rule")},
        problems=(*_AUTH, 404),
        parameters=[_SCOPE, _REF_ID],
    ),
    openapi.Operation(
        "/v1/reply-rules/{scope}/{ref_id}",
        "delete",
        "deleteReplyRule",
        "Remove a reply rule",
        SCOPE_SMS_SEND,
        {200: (None, "{deleted: true}")},
        problems=(*_AUTH, 404),
        parameters=[_SCOPE, _REF_ID],
    ),
)
