"""`POST /v1/messages` served straight from ASGI: the ingest hot path.

Every other route goes through Quart. This one is what a CRM hammers when a ward sends its daily cost
notices, and Quart's request/response machinery cost more than the submission itself (profiled: ~45 % of
the request time, against ~20 % for validation + group-committed insert). So the middleware below answers
it directly, with the same behaviour as the Quart routes — same authentication (``api.auth.check_token``),
same validation model (``SendMessageRequest``), same problem+json bodies, headers, metrics and request ids —
because both paths call :func:`submit` and the same helpers.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import ValidationError

from api.auth import SCOPE_SMS_SEND, authenticate_header
from api.problems import PROBLEM_CONTENT_TYPE, ApiProblem, FieldError, validation_problem
from api.schemas import SendMessageRequest
from api.services import ApiState
from gateway.sms.service import IdempotencyConflict, InvalidRequest, SubmitRequest

ROUTE = "/v1/messages"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_JSON_TYPE_RE = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")
# draft-ietf-httpapi-idempotency-key-header §2: an RFC 8941 sf-string ("..."); many clients send the bare
# value (Stripe style), accepted when it has no spaces, quotes or backslashes.
_SF_STRING_RE = re.compile(r'^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"$')
_BARE_KEY_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
MAX_IDEMPOTENCY_KEY = 255
# json.dumps(..., ensure_ascii=False, separators=(",", ":")) builds this encoder on every call.
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


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


def check_json_content_type(content_type: str | None) -> None:
    if content_type is None:
        return
    mime = content_type.split(";", 1)[0].strip().lower()
    if not _JSON_TYPE_RE.match(mime):
        detail = f"send the body as application/json, not {mime or '(empty)'}"
        raise ApiProblem("unsupported_media_type", detail)


def service_problem(exc: Exception) -> ApiProblem:
    if isinstance(exc, InvalidRequest):
        errors = [FieldError(exc.field, exc.detail)] if exc.field else []
        return ApiProblem(exc.code, exc.detail, status=422, errors=errors)
    if isinstance(exc, IdempotencyConflict):
        detail = str(exc) or "this Idempotency-Key was used with a different request body"
        return ApiProblem("idempotency_key_reused", detail)
    raise TypeError(f"not a service error: {exc!r}")


async def submit(state: ApiState, *, authorization: str | None, content_type: str | None,
                 idempotency_key: str | None, body: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """Queue one SMS; returns (message JSON, extra response headers) or raises ApiProblem.

    The service validates and commits message, parts, idempotency record and the ``sms.queued`` event in one
    transaction before this returns: a 202 always means durable.
    """
    principal = authenticate_header(state.services.tokens, authorization, SCOPE_SMS_SEND)
    key = parse_idempotency_key(idempotency_key)
    check_json_content_type(content_type)
    try:
        request = SendMessageRequest.model_validate_json(body or b"")
    except ValidationError as exc:
        raise validation_problem(exc) from None
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
            SubmitRequest(to=request.to, text=request.text, modem=request.modem, report=request.report,
                          send_at=request.send_at, client_ref=request.client_ref,
                          category=request.category, route=request.route),
            idempotency_key=scoped_key,
        )
    except (InvalidRequest, IdempotencyConflict) as exc:
        raise service_problem(exc) from None
    finally:
        if flight is not None:
            state.idempotency_in_flight.discard(flight)
    payload = result.message.to_json()
    headers = {"Location": f"{ROUTE}/{payload['id']}"}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return payload, headers


class SubmitFastPath:
    """ASGI middleware: ``POST /v1/messages`` handled here, everything else passed to ``app``."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], state: ApiState,
                 cors: Callable[[dict[str, str], str | None, str], None]) -> None:
        self.app = app
        self.state = state
        self.cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != ROUTE or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = _headers(scope)
        incoming_id = headers.get("x-request-id", "")
        request_id = incoming_id if _REQUEST_ID_RE.match(incoming_id) else new_request_id()
        extra: dict[str, str] = {}
        try:
            body = await _read_body(receive, headers, self.state.settings.max_body_bytes)
            payload, extra = await submit(self.state, authorization=headers.get("authorization"),
                                          content_type=headers.get("content-type"),
                                          idempotency_key=headers.get("idempotency-key"), body=body)
            status, content_type = 202, "application/json"
            data = _COMPACT_JSON.encode(payload).encode()
        except ApiProblem as problem:
            status, content_type = problem.status or 500, PROBLEM_CONTENT_TYPE
            body_json = problem.to_dict(instance=ROUTE, request_id=request_id)
            data = json.dumps(body_json, ensure_ascii=False).encode()
            extra = dict(problem.headers)
        out = {"content-type": content_type, "content-length": str(len(data)), **extra,
               "x-request-id": request_id, "cache-control": "no-store"}
        self.cors(out, headers.get("origin"), "POST")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out.items()]})
        await send({"type": "http.response.body", "body": data})
        self.state.metrics.observe_request(ROUTE, "POST", status, time.perf_counter() - started)


def new_request_id(random16: bytes | None = None) -> str:
    """``uuid.uuid4().hex`` (version 4, RFC 4122 variant) without building a ``uuid.UUID``: same bits, same
    text, half the time. ``random16`` is for tests (default: 16 bytes of ``os.urandom``, as uuid4 uses)."""
    value = int.from_bytes(os.urandom(16) if random16 is None else random16, "big")
    value = (value & ~(0xC000 << 48) & ~(0xF000 << 64)) | (0x8000 << 48) | (4 << 76)
    return f"{value:032x}"


def _headers(scope: Scope) -> dict[str, str]:
    # RFC 9110 §5.3: repeated fields combine with commas; none of ours is legitimately repeated.
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


async def _read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The request body, refusing (413, connection closed) as soon as it is known to exceed ``limit``."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiProblem("invalid_request_syntax", "the client went away before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large() -> ApiProblem:
    return ApiProblem("body_too_large", "the request body is larger than the configured limit",
                      headers={"Connection": "close"})
