"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the API returns has ``type`` = ``urn:hcrm:problem:<code>``, ``title`` (fixed per code),
``status``, ``detail`` (what was wrong with this request), ``instance`` (the request path), a stable
machine-readable ``code``, the ``request_id`` that the server log carries too, and for input errors an
``errors`` list of ``{field, message}``. RFC 9457 §3.2 allows such extension members; clients must
switch on ``code`` (or ``type``), never on ``title`` or ``detail``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import HTTPException
from werkzeug.routing.exceptions import WebsocketMismatch

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:hcrm:problem:"

# code -> (HTTP status, title). The title is the same for every occurrence of the code (RFC 9457 §3.1.3).
PROBLEM_CATALOGUE: dict[str, tuple[int, str]] = {
    "malformed_json": (400, "Request body is not valid JSON"),
    "invalid_idempotency_key": (400, "Malformed Idempotency-Key header"),
    "invalid_parameter": (400, "Invalid query parameter"),
    "missing_token": (401, "Authentication required"),
    "invalid_token": (401, "Invalid token"),
    "insufficient_scope": (403, "Insufficient scope"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "not_acceptable": (406, "Not acceptable"),
    "conflict": (409, "Conflict with the resource state"),
    "idempotency_key_in_flight": (409, "A request with this Idempotency-Key is still being processed"),
    "body_too_large": (413, "Request body too large"),
    "unsupported_media_type": (415, "Unsupported media type"),
    "websocket_required": (426, "WebSocket upgrade required"),
    "validation_error": (422, "Request body failed validation"),
    "invalid_number": (422, "Invalid phone number"),
    "empty_text": (422, "Message text is empty"),
    "too_many_parts": (422, "Message needs more parts than allowed"),
    "unknown_modem": (422, "Unknown modem"),
    "invalid_send_at": (422, "Invalid send_at"),
    "idempotency_key_reused": (422, "Idempotency-Key reused with a different request"),
    "invalid_request": (422, "Invalid request"),
    # SMS platform (issue 4)
    "unknown_category": (422, "Unknown message category"),
    "unknown_route": (422, "Unknown route"),
    "opted_out": (422, "The recipient opted out of this category"),
    "invalid_category": (422, "Invalid category"),
    "invalid_reply_rule": (422, "Invalid reply rule"),
    "missing_variables": (422, "Template variables missing"),
    "unknown_template": (422, "Unknown template"),
    "invalid_start_at": (422, "Invalid start_at"),
    "invalid_csv": (422, "Malformed CSV"),
    "missing_columns": (422, "CSV lacks template columns"),
    "too_many_rows": (422, "Too many recipient rows"),
    "no_valid_recipients": (422, "No recipient can be sent"),
    "invalid_provider_signature": (401, "Invalid provider signature"),
    "unmapped_report_status": (422, "Unknown delivery-report status"),
    "invalid_report": (400, "Invalid delivery report"),
    # voice and IVR (issues 5 and 6)
    "line_busy": (409, "The line is busy"),
    "invalid_ivr_tree": (422, "The IVR tree is invalid"),
    "internal_error": (500, "Internal server error"),
    "service_unavailable": (503, "Service unavailable"),
}

# Werkzeug HTTPException status -> our code, for errors raised by routing or by the framework itself.
_CODE_BY_STATUS = {
    400: "invalid_request_syntax",
    401: "missing_token",
    403: "insufficient_scope",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
    500: "internal_error",
    503: "service_unavailable",
}
PROBLEM_CATALOGUE.update(
    {
        "invalid_request_syntax": (400, "Bad request"),
        "request_timeout": (408, "Request timeout"),
        "headers_too_large": (431, "Request header fields too large"),
    }
)


@dataclass(frozen=True)
class FieldError:
    """One invalid input: ``field`` is a dotted path into the JSON body ("" for the body itself)."""

    field: str
    message: str


@dataclass(eq=False)
class ApiProblem(Exception):
    """Raise anywhere in a handler; the app turns it into a problem+json response."""

    code: str
    detail: str
    status: int | None = None
    errors: Sequence[FieldError] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)
        if self.status is None:
            if self.code not in PROBLEM_CATALOGUE:
                raise ValueError(
                    f"unknown problem code {self.code!r}: give a status or add it to the catalogue"
                )
            self.status = PROBLEM_CATALOGUE[self.code][0]

    @property
    def title(self) -> str:
        known = PROBLEM_CATALOGUE.get(self.code)
        return known[1] if known else self.code.replace("_", " ").capitalize()

    def to_dict(self, *, instance: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance is not None:
            body["instance"] = instance
        if request_id is not None:
            body["request_id"] = request_id
        if self.errors:
            body["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        return body

    def to_response(self, *, instance: str | None = None, request_id: str | None = None) -> TrioResponse:
        payload = json.dumps(self.to_dict(instance=instance, request_id=request_id), ensure_ascii=False)
        response = TrioResponse(payload, status=self.status, content_type=PROBLEM_CONTENT_TYPE)
        for name, value in self.headers.items():
            response.headers[name] = value
        return response


def field_path(loc: Sequence[str | int]) -> str:
    """Pydantic ``loc`` -> ``"parts.0.status"``; the empty string means the body as a whole."""
    return ".".join(str(part) for part in loc)


def validation_problem(exc: ValidationError) -> ApiProblem:
    """422 ``validation_error`` listing every invalid or unknown field, or 400 for unparsable JSON."""
    errors: list[FieldError] = []
    for error in exc.errors(include_url=False, include_input=False):
        kind = error["type"]
        if kind == "json_invalid":
            return ApiProblem(
                "malformed_json", f"the body is not valid JSON: {error.get('ctx', {}).get('error')}"
            )
        path = field_path(error["loc"])
        if kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing":
            message = "field required"
        elif kind == "model_type" and not path:
            message = "the body must be a JSON object"
        else:
            message = error["msg"]
        errors.append(FieldError(path, message))
    names = ", ".join(sorted({e.field or "(body)" for e in errors}))
    return ApiProblem("validation_error", f"invalid or unknown fields: {names}", errors=errors)


def http_exception_problem(exc: HTTPException) -> ApiProblem:
    """Map a werkzeug/Quart HTTPException (routing, 405, 413 ...) to a problem with a stable code."""
    if isinstance(exc, WebsocketMismatch):
        # RFC 9110 §15.5.22: a 426 names the protocol to switch to in an Upgrade header.
        return ApiProblem(
            "websocket_required",
            "this endpoint is a WebSocket: send an Upgrade: websocket request",
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )
    status = exc.code or 500
    code = _CODE_BY_STATUS.get(status, "internal_error" if status >= 500 else "invalid_request_syntax")
    detail = {
        404: "no such resource",
        405: "this method is not allowed on this resource",
        413: "the request body is larger than the configured limit",
    }.get(status) or (exc.description or PROBLEM_CATALOGUE[code][1])
    headers: dict[str, str] = {}
    if status == 405:
        allowed = getattr(exc, "valid_methods", None)
        if allowed:
            headers["Allow"] = ", ".join(sorted(allowed))
    if status == 413:
        # The rest of the oversize body is never read, so the connection cannot carry another request
        # (RFC 9112 §9.6): tell the client, and hypercorn closes it after this response.
        headers["Connection"] = "close"
    return ApiProblem(code, detail, status=status, headers=headers)
