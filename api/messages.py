"""REST routes for outgoing SMS: submit, read, list, cancel; and the modem list.

The routes only translate HTTP <-> ``SmsService`` calls: validation of numbers, text and modems, the single
transaction and the idempotency record all live in the service, so nothing is queued when a request fails.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.sms.service import Conflict, IdempotencyConflict, InvalidRequest, NotFound, SubmitRequest
from pydantic import ValidationError
from quart import Blueprint, current_app, g, request
from quart_trio.wrappers import TrioResponse

from api.auth import SCOPE_SMS_READ, SCOPE_SMS_SEND, requires_scope
from api.problems import ApiProblem, FieldError, validation_problem
from api.schemas import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    SendMessageRequest,
)
from api.services import api_state

blueprint = Blueprint("messages", __name__)

# draft-ietf-httpapi-idempotency-key-header §2: the value is an RFC 8941 sf-string ("..."), printable
# ASCII 0x20-0x7E with \" and \\ escapes. Many clients send the bare value (Stripe style); we accept that
# too when it has no spaces, quotes or backslashes. 255 characters is our limit (a UUID is 36).
_SF_STRING_RE = re.compile(r'^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"$')
_BARE_KEY_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
MAX_IDEMPOTENCY_KEY = 255
_JSON_TYPE_RE = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")
_MESSAGE_ID_MAX = 128


def parse_idempotency_key(header: str | None) -> str | None:
    """The key from an ``Idempotency-Key`` header, None when absent; ApiProblem 400 when malformed."""
    if header is None:
        return None
    value = header.strip()
    quoted = _SF_STRING_RE.match(value)
    if quoted:
        key = re.sub(r"\\(.)", r"\1", quoted.group(1))
    elif _BARE_KEY_RE.match(value):
        key = value
    else:
        raise ApiProblem(
            "invalid_idempotency_key",
            "Idempotency-Key must be a quoted string of printable ASCII, "
            'e.g. Idempotency-Key: "8e03978e-..."',
        )
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiProblem(
            "invalid_idempotency_key", f"Idempotency-Key must have 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )
    return key


def _check_json_content_type() -> None:
    content_type = request.headers.get("Content-Type")
    if content_type is None:
        return
    mime = content_type.split(";", 1)[0].strip().lower()
    if not _JSON_TYPE_RE.match(mime):
        raise ApiProblem(
            "unsupported_media_type", f"send the body as application/json, not {mime or '(empty)'}"
        )


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
    """Queue an SMS: 202 + Location; with Idempotency-Key, a retry gets the same message back."""
    state = api_state()
    key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
    _check_json_content_type()
    raw = await request.get_data(cache=False)
    try:
        body = SendMessageRequest.model_validate_json(raw or b"")
    except ValidationError as exc:
        raise validation_problem(exc) from None

    principal = g.principal
    # Keys are scoped per token: one CRM can never replay (or block) another's request.
    scoped_key = f"{principal.name}:{key}" if key is not None else None
    flight = (principal.name, key) if key is not None else None
    if flight is not None:
        if flight in state.idempotency_in_flight:
            raise ApiProblem(
                "idempotency_key_in_flight",
                "the first request with this Idempotency-Key is still being processed; retry later",
                headers={"Retry-After": "1"},
            )
        state.idempotency_in_flight.add(flight)
    try:
        result = await state.services.sms.submit(
            SubmitRequest(
                to=body.to,
                text=body.text,
                modem=body.modem,
                report=body.report,
                send_at=body.send_at,
                client_ref=body.client_ref,
            ),
            idempotency_key=scoped_key,
        )
    except (InvalidRequest, IdempotencyConflict) as exc:
        raise _service_problem(exc) from None
    finally:
        if flight is not None:
            state.idempotency_in_flight.discard(flight)

    payload = message_body(result.message)
    response = _json_response(payload, 202)
    response.headers["Location"] = f"/v1/messages/{payload['id']}"
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
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
