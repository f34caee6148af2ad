"""REST routes for verification codes (``gateway.verify``): start, check, resend, read, cancel.

All need ``sms:send`` (reading one needs ``sms:read``): the CRM's booking backend calls them, never the
patient's browser directly. No response ever contains the code. Rate limits answer 429 problem+json with a
Retry-After header (RFC 9110 §10.2.3, seconds).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint

from api import openapi
from api.auth import SCOPE_SMS_READ, SCOPE_SMS_SEND, requires_scope
from api.problems import ApiProblem, FieldError
from api.services import api_state
from api.templates import json_response, parse_json_body, render_problem
from gateway.sms.models import InvalidRequest
from gateway.sms.templates import TemplateError
from gateway.verify import (
    RateLimited,
    VerificationConflict,
    VerificationNotFound,
    VerificationService,
)

blueprint = Blueprint("verifications", __name__)

_ID = re.compile(r"^ver_[0-9A-Z]{26}$")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartVerificationRequest(_Request):
    """POST /v1/verifications."""

    to: Annotated[str, Field(min_length=1, max_length=64, description="Mobile number: E.164 or national")]
    purpose: Annotated[
        str,
        Field(min_length=1, max_length=64, description="What the code protects, e.g. appointment_booking"),
    ]
    template: Annotated[
        str | None, Field(max_length=64, description="An otp template id; default verification_code.<locale>")
    ] = None
    locale: Annotated[str | None, Field(max_length=16, description="ja, zh ...; default: the gateway's")] = (
        None
    )


class CheckVerificationRequest(_Request):
    """POST /v1/verifications/{id}/check."""

    code: Annotated[str, Field(min_length=1, max_length=32, description="The digits the patient typed")]


class VerificationBody(_Response):
    id: str
    to: str
    purpose: str
    status: Annotated[
        str, Field(description="pending, approved, expired, too_many_attempts, canceled, failed")
    ]
    created_at: str
    expires_at: str
    resend_after: Annotated[str, Field(description="No resend before this time")]
    attempts_remaining: int


class CheckBody(_Response):
    id: str
    status: Annotated[str, Field(description="approved, denied, expired, too_many_attempts or canceled")]
    attempts_remaining: int
    reason: Annotated[str | None, Field(description="wrong_code, already_used or failed_to_send")] = None


def _service() -> VerificationService:
    service = api_state().services.verifications
    if service is None:
        raise ApiProblem("not_found", "verification codes are not enabled on this gateway")
    return service


def _verification_id(verification_id: str) -> str:
    if not _ID.match(verification_id):
        raise ApiProblem("not_found", "no such verification")
    return verification_id


def _problem(exc: Exception) -> ApiProblem:
    if isinstance(exc, RateLimited):
        return ApiProblem(exc.code, exc.detail, status=429, headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, InvalidRequest):
        errors = [FieldError(exc.field, exc.detail)] if exc.field else []
        return ApiProblem(exc.code, exc.detail, status=422, errors=errors)
    if isinstance(exc, VerificationNotFound):
        return ApiProblem("not_found", str(exc))
    if isinstance(exc, VerificationConflict):
        return ApiProblem("conflict", str(exc))
    if isinstance(exc, TemplateError):
        return render_problem(exc, "template")
    raise TypeError(f"not a verification error: {exc!r}")


_ERRORS = (RateLimited, InvalidRequest, VerificationNotFound, VerificationConflict, TemplateError)


@blueprint.post("/v1/verifications")
@requires_scope(SCOPE_SMS_SEND)
async def start_verification() -> Any:
    body: StartVerificationRequest = await parse_json_body(StartVerificationRequest)
    try:
        verification = await _service().start(
            body.to, body.purpose, template_id=body.template, locale=body.locale
        )
    except _ERRORS as exc:
        raise _problem(exc) from None
    return json_response(verification.to_json(), 201, {"Location": f"/v1/verifications/{verification.id}"})


@blueprint.get("/v1/verifications/<verification_id>")
@requires_scope(SCOPE_SMS_READ)
async def get_verification(verification_id: str) -> Any:
    verification = await _service().get(_verification_id(verification_id))
    if verification is None:
        raise ApiProblem("not_found", "no such verification")
    return verification.to_json()


@blueprint.post("/v1/verifications/<verification_id>/check")
@requires_scope(SCOPE_SMS_SEND)
async def check_verification(verification_id: str) -> Any:
    verification_id = _verification_id(verification_id)
    body: CheckVerificationRequest = await parse_json_body(CheckVerificationRequest)
    try:
        result = await _service().check(verification_id, body.code)
    except _ERRORS as exc:
        raise _problem(exc) from None
    return result.to_json()


@blueprint.post("/v1/verifications/<verification_id>/resend")
@requires_scope(SCOPE_SMS_SEND)
async def resend_verification(verification_id: str) -> Any:
    try:
        verification = await _service().resend(_verification_id(verification_id))
    except _ERRORS as exc:
        raise _problem(exc) from None
    return verification.to_json()


@blueprint.delete("/v1/verifications/<verification_id>")
@requires_scope(SCOPE_SMS_SEND)
async def cancel_verification(verification_id: str) -> Any:
    try:
        verification = await _service().cancel(_verification_id(verification_id))
    except _ERRORS as exc:
        raise _problem(exc) from None
    return verification.to_json()


_ID_PARAM = {"name": "verification_id", "in": "path", "required": True, "schema": {"type": "string"}}
_AUTH = (401, 403)

# Collected by api/app.py into /openapi.json (build_openapi(extra=...)).
OPENAPI_OPERATIONS: tuple[openapi.Operation, ...] = (
    openapi.Operation(
        "/v1/verifications",
        "post",
        "startVerification",
        "Send a verification code by SMS",
        SCOPE_SMS_SEND,
        {201: (VerificationBody, "Sent (queued); the code is never returned")},
        problems=(400, *_AUTH, 415, 422, 429),
        request=StartVerificationRequest,
        description="429 rate_limited (per number, number range or gateway) carries Retry-After.",
    ),
    openapi.Operation(
        "/v1/verifications/{verification_id}",
        "get",
        "getVerification",
        "Read a verification's state",
        SCOPE_SMS_READ,
        {200: (VerificationBody, "The verification")},
        problems=(*_AUTH, 404),
        parameters=[_ID_PARAM],
    ),
    openapi.Operation(
        "/v1/verifications/{verification_id}/check",
        "post",
        "checkVerification",
        "Check a code (each check counts as an attempt)",
        SCOPE_SMS_SEND,
        {200: (CheckBody, "approved, denied, expired, too_many_attempts or canceled")},
        problems=(400, *_AUTH, 404, 415, 422),
        request=CheckVerificationRequest,
        parameters=[_ID_PARAM],
    ),
    openapi.Operation(
        "/v1/verifications/{verification_id}/resend",
        "post",
        "resendVerification",
        "Send a new code (the previous one stops working)",
        SCOPE_SMS_SEND,
        {200: (VerificationBody, "Sent again")},
        problems=(*_AUTH, 404, 409, 422, 429),
        parameters=[_ID_PARAM],
    ),
    openapi.Operation(
        "/v1/verifications/{verification_id}",
        "delete",
        "cancelVerification",
        "Cancel a pending verification",
        SCOPE_SMS_SEND,
        {200: (VerificationBody, "Canceled")},
        problems=(*_AUTH, 404, 409),
        parameters=[_ID_PARAM],
    ),
)
