"""REST routes for outgoing SMS: submit, read, list, cancel; and the modem list.

The routes only translate HTTP <-> ``SmsService`` calls: validation of numbers, text and modems, the single
transaction and the idempotency record all live in the service, so nothing is queued when a request fails.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, current_app, request
from quart_trio.wrappers import TrioResponse

from api import submit_fast
from api.auth import SCOPE_SMS_READ, SCOPE_SMS_SEND, requires_scope
from api.problems import ApiProblem, FieldError
from api.schemas import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
)
from api.services import api_state
from gateway.sms.service import Conflict, IdempotencyConflict, InvalidRequest, NotFound

blueprint = Blueprint("messages", __name__)

_MESSAGE_ID_MAX = 128


def _service_problem(exc: Exception) -> ApiProblem:
    """Map the SMS service's errors to problems (unknown codes of InvalidRequest stay 422)."""
    if isinstance(exc, InvalidRequest):
        errors = [FieldError(exc.field, exc.detail)] if exc.field else []
        return ApiProblem(exc.code, exc.detail, status=422, errors=errors)
    if isinstance(exc, IdempotencyConflict):
        return ApiProblem(
            "idempotency_key_reused",
            str(exc) or "this Idempotency-Key was used with a different request body",
        )
    if isinstance(exc, NotFound):
        return ApiProblem("not_found", str(exc) or "no such message")
    if isinstance(exc, Conflict):
        return ApiProblem("conflict", str(exc) or "the message is no longer in a state that allows this")
    raise TypeError(f"not a service error: {exc!r}")


def message_body(message: Any) -> dict[str, Any]:
    """The public JSON form of a gateway Message (documented by ``schemas.Message``)."""
    return message.to_json()


def _message_id(message_id: str) -> str:
    if len(message_id) > _MESSAGE_ID_MAX:
        raise ApiProblem("not_found", "no such message")
    return message_id


@blueprint.post("/v1/messages")
@requires_scope(SCOPE_SMS_SEND)
async def submit_message() -> Any:
    """Queue an SMS: 202 + Location; with Idempotency-Key, a retry gets the same message back.

    Served by ``api.submit_fast.SubmitFastPath`` in front of Quart; this route (same ``submit`` core) is what
    Quart's own test client and the OpenAPI builder see."""
    payload, headers = await submit_fast.submit(
        api_state(),
        authorization=request.headers.get("Authorization"),
        content_type=request.headers.get("Content-Type"),
        idempotency_key=request.headers.get("Idempotency-Key"),
        body=await request.get_data(cache=False),
    )
    response = _json_response(payload, 202)
    for name, value in headers.items():
        response.headers[name] = value
    return response


def _json_response(payload: Any, status: int) -> TrioResponse:
    response = current_app.json.response(payload)
    response.status_code = status
    return response


@blueprint.get("/v1/messages/<message_id>")
@requires_scope(SCOPE_SMS_READ)
async def get_message(message_id: str) -> Any:
    message = await api_state().services.sms.get(_message_id(message_id))
    if message is None:
        raise ApiProblem("not_found", f"no message with id {message_id!r}")
    return message_body(message)


@blueprint.get("/v1/messages")
@requires_scope(SCOPE_SMS_READ)
async def list_messages() -> Any:
    args = request.args
    unknown = sorted(set(args) - {"status", "cursor", "limit"})
    if unknown:
        raise ApiProblem(
            "invalid_parameter",
            f"unknown query parameter(s): {', '.join(unknown)}",
            errors=[FieldError(name, "unknown parameter") for name in unknown],
        )
    limit_text = args.get("limit")
    limit = DEFAULT_PAGE_LIMIT
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE_LIMIT:
            raise ApiProblem(
                "invalid_parameter",
                f"limit must be an integer from 1 to {MAX_PAGE_LIMIT}",
                errors=[FieldError("limit", f"integer from 1 to {MAX_PAGE_LIMIT}")],
            )
        limit = int(limit_text)
    status = args.get("status") or None
    cursor = args.get("cursor") or None
    try:
        messages, next_cursor = await api_state().services.sms.list(status=status, cursor=cursor, limit=limit)
    except InvalidRequest as exc:
        errors = [FieldError(exc.field, exc.detail)] if exc.field else []
        raise ApiProblem("invalid_parameter", exc.detail, errors=errors) from None
    return {"items": [message_body(m) for m in messages], "next_cursor": next_cursor}


@blueprint.delete("/v1/messages/<message_id>")
@requires_scope(SCOPE_SMS_SEND)
async def cancel_message(message_id: str) -> Any:
    """Cancel while the message has not started sending; 409 once it has."""
    try:
        message = await api_state().services.sms.cancel(_message_id(message_id))
    except (NotFound, Conflict) as exc:
        raise _service_problem(exc) from None
    return message_body(message)


@blueprint.get("/v1/modems")
@requires_scope(SCOPE_SMS_READ)
async def list_modems() -> Any:
    views = api_state().services.sms.modems()
    return {"items": [view.to_json() for view in views]}
