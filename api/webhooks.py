"""REST routes for outbound webhook subscriptions and their dead letters (scope ``admin``).

The secret is in the answer to ``POST /v1/webhooks`` and ``POST /v1/webhooks/{id}/rotate-secret`` only; it is
never listed again. Delivery itself runs in ``gateway.webhooks.WebhookService.run`` (see docs/webhooks.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, current_app, request
from quart_trio.wrappers import TrioResponse

from api.auth import SCOPE_ADMIN, requires_scope
from api.openapi import Operation
from api.problems import ApiProblem, FieldError, validation_problem
from api.schemas import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT
from api.services import api_state
from api.submit_fast import check_json_content_type
from gateway.webhooks import (
    MAX_PATTERNS,
    MAX_URL_LENGTH,
    InvalidWebhook,
    WebhookConflict,
    WebhookNotFound,
    dead_letter_json,
    subscription_json,
)

blueprint = Blueprint("webhooks", __name__)

_SUBSCRIPTION_ID = re.compile(r"^whk_[0-9A-Z]{26}$")
_DEAD_LETTER_ID = re.compile(r"^whdl_[0-9A-Z]{26}$")
_DEAD_LETTER_STATUSES = ("dead", "pending", "redelivered")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Patterns = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=100)]],
    Field(
        min_length=1,
        max_length=MAX_PATTERNS,
        description="Event types to deliver: exact ('sms.delivered'), a prefix ('sms.*') or '*'",
    ),
]
Url = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="https URL of the endpoint (http only to a loopback host unless webhooks.allow_http)",
    ),
]
Description = Annotated[str | None, Field(max_length=200)]


class CreateWebhookRequest(_Request):
    """POST /v1/webhooks."""

    url: Url
    event_types: Patterns
    description: Description = None
    enabled: bool = True


class UpdateWebhookRequest(_Request):
    """PATCH /v1/webhooks/{id}: only the fields present change."""

    url: Url | None = None
    event_types: Patterns | None = None
    description: Description = None
    enabled: bool | None = None
    skip_backlog: Annotated[
        bool, Field(description="With enabled=true: start from now instead of the saved position")
    ] = False


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookCursor(_Response):
    epoch: str
    seq: Annotated[int, Field(description="Last journal event handled (delivered, filtered out or dead)")]


class WebhookRetry(_Response):
    event_id: str
    attempts: int
    first_attempt_at: str | None = None
    next_attempt_at: str | None = None


class WebhookDelivery(_Response):
    cursor: WebhookCursor
    retrying: Annotated[WebhookRetry | None, Field(description="The event being retried, if any")] = None
    last_status: Annotated[int | None, Field(description="HTTP status of the last attempt")] = None
    last_error: str | None = None
    last_attempt_at: str | None = None
    last_success_at: str | None = None
    delivered: int
    dead_lettered: int
    gaps: Annotated[int, Field(description="Times events were lost to journal pruning or a reset")]


class WebhookSubscriptionBody(_Response):
    """A webhook subscription; ``secret`` only in the answers of create and rotate-secret."""

    id: str
    url: str
    event_types: list[str]
    description: str | None = None
    enabled: bool
    disabled_reason: str | None = None
    created_at: str
    updated_at: str
    secret_rotated_at: str | None = None
    delivery: WebhookDelivery
    secret: Annotated[str | None, Field(description="whsec_<base64>: shown once")] = None


class WebhookList(_Response):
    items: list[WebhookSubscriptionBody]


class DeadLetterBody(_Response):
    id: str
    subscription_id: str
    event_id: Annotated[str, Field(description="The webhook-id (dedupe key)")]
    event_type: str
    status: Annotated[str, Field(description="dead, pending (redelivery queued) or redelivered")]
    attempts: int
    last_status: int | None = None
    last_error: str | None = None
    first_attempt_at: str
    last_attempt_at: str
    created_at: str
    updated_at: str
    redelivered_at: str | None = None
    event: Annotated[dict[str, Any], Field(description="The event envelope as sent")]


class DeadLetterPage(_Response):
    items: list[DeadLetterBody]
    next_cursor: str | None = None


def _service() -> Any:
    service = api_state().services.webhooks
    if service is None:
        raise ApiProblem("not_found", "webhooks are not enabled on this gateway")
    return service


async def _body(model: type[_Request]) -> Any:
    check_json_content_type(request.headers.get("Content-Type"))
    try:
        return model.model_validate_json(await request.get_data(cache=False) or b"")
    except ValidationError as exc:
        raise validation_problem(exc) from None


def _problem(exc: Exception) -> ApiProblem:
    if isinstance(exc, InvalidWebhook):
        return ApiProblem("validation_error", exc.detail, errors=[FieldError(exc.field, exc.detail)])
    if isinstance(exc, WebhookNotFound):
        return ApiProblem("not_found", str(exc))
    if isinstance(exc, WebhookConflict):
        return ApiProblem("conflict", str(exc))
    raise TypeError(f"not a webhook error: {exc!r}")


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> TrioResponse:
    response = current_app.json.response(payload)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _subscription_id(value: str) -> str:
    if not _SUBSCRIPTION_ID.match(value):
        raise ApiProblem("not_found", f"no webhook subscription {value[:64]!r}")
    return value


@blueprint.get("/v1/webhooks")
@requires_scope(SCOPE_ADMIN)
async def list_webhooks() -> Any:
    subs = await _service().list()
    return {"items": [subscription_json(s) for s in subs]}


@blueprint.post("/v1/webhooks")
@requires_scope(SCOPE_ADMIN)
async def create_webhook() -> Any:
    """201 with the subscription and its ``secret`` (shown only here)."""
    body = await _body(CreateWebhookRequest)
    try:
        sub, secret = await _service().create(
            url=body.url, event_types=body.event_types, description=body.description, enabled=body.enabled
        )
    except (InvalidWebhook, WebhookConflict) as exc:
        raise _problem(exc) from None
    return _json(subscription_json(sub, secret=secret), 201, {"Location": f"/v1/webhooks/{sub.id}"})


@blueprint.get("/v1/webhooks/dead-letters")
@requires_scope(SCOPE_ADMIN)
async def list_dead_letters() -> Any:
    """Newest first; filters ``subscription_id`` and ``status`` (dead, pending, redelivered)."""
    args = request.args
    unknown = sorted(set(args) - {"subscription_id", "status", "cursor", "limit"})
    if unknown:
        raise ApiProblem(
            "invalid_parameter",
            f"unknown query parameter(s): {', '.join(unknown)}",
            errors=[FieldError(name, "unknown parameter") for name in unknown],
        )
    limit = DEFAULT_PAGE_LIMIT
    limit_text = args.get("limit")
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE_LIMIT:
            raise ApiProblem(
                "invalid_parameter",
                f"limit must be an integer from 1 to {MAX_PAGE_LIMIT}",
                errors=[FieldError("limit", f"integer from 1 to {MAX_PAGE_LIMIT}")],
            )
        limit = int(limit_text)
    status = args.get("status") or None
    if status is not None and status not in _DEAD_LETTER_STATUSES:
        raise ApiProblem(
            "invalid_parameter",
            f"status must be one of {', '.join(_DEAD_LETTER_STATUSES)}",
            errors=[FieldError("status", "dead, pending or redelivered")],
        )
    cursor = args.get("cursor") or None
    if cursor is not None and not _DEAD_LETTER_ID.match(cursor):
        raise ApiProblem(
            "invalid_parameter",
            "cursor must be the next_cursor of a previous page",
            errors=[FieldError("cursor", "not a cursor from this API")],
        )
    letters, next_cursor = await _service().dead_letters(
        subscription_id=args.get("subscription_id") or None, status=status, cursor=cursor, limit=limit
    )
    return {"items": [dead_letter_json(d) for d in letters], "next_cursor": next_cursor}


@blueprint.post("/v1/webhooks/dead-letters/<letter_id>/redeliver")
@requires_scope(SCOPE_ADMIN)
async def redeliver_dead_letter(letter_id: str) -> Any:
    """202: one more attempt is queued for the subscription's worker; the outcome shows in the list."""
    if not _DEAD_LETTER_ID.match(letter_id):
        raise ApiProblem("not_found", f"no dead letter {letter_id[:64]!r}")
    try:
        letter = await _service().redeliver(letter_id)
    except (WebhookNotFound, WebhookConflict) as exc:
        raise _problem(exc) from None
    return _json(dead_letter_json(letter), 202)


@blueprint.get("/v1/webhooks/<subscription_id>")
@requires_scope(SCOPE_ADMIN)
async def get_webhook(subscription_id: str) -> Any:
    sub = await _service().get(_subscription_id(subscription_id))
    if sub is None:
        raise ApiProblem("not_found", f"no webhook subscription {subscription_id!r}")
    return subscription_json(sub)


@blueprint.patch("/v1/webhooks/<subscription_id>")
@requires_scope(SCOPE_ADMIN)
async def update_webhook(subscription_id: str) -> Any:
    subscription_id = _subscription_id(subscription_id)
    body = await _body(UpdateWebhookRequest)
    given = body.model_fields_set
    changes: dict[str, Any] = {name: getattr(body, name) for name in given - {"skip_backlog"}}
    for name in ("url", "event_types", "enabled"):
        if name in changes and changes[name] is None:
            raise ApiProblem(
                "validation_error", f"{name} cannot be null", errors=[FieldError(name, "cannot be null")]
            )
    if body.skip_backlog and changes.get("enabled") is not True:
        raise ApiProblem(
            "validation_error",
            "skip_backlog only applies together with enabled: true",
            errors=[FieldError("skip_backlog", "needs enabled: true")],
        )
    try:
        sub = await _service().update(subscription_id, skip_backlog=body.skip_backlog, **changes)
    except (InvalidWebhook, WebhookNotFound, WebhookConflict) as exc:
        raise _problem(exc) from None
    return subscription_json(sub)


@blueprint.delete("/v1/webhooks/<subscription_id>")
@requires_scope(SCOPE_ADMIN)
async def delete_webhook(subscription_id: str) -> Any:
    """204; the subscription's dead letters go with it."""
    try:
        await _service().delete(_subscription_id(subscription_id))
    except WebhookNotFound as exc:
        raise _problem(exc) from None
    return TrioResponse("", status=204)


@blueprint.post("/v1/webhooks/<subscription_id>/rotate-secret")
@requires_scope(SCOPE_ADMIN)
async def rotate_webhook_secret(subscription_id: str) -> Any:
    """A new ``secret`` (shown only here); the old one keeps signing for webhooks.rotation_overlap_s."""
    try:
        sub, secret = await _service().rotate_secret(_subscription_id(subscription_id))
    except WebhookNotFound as exc:
        raise _problem(exc) from None
    return subscription_json(sub, secret=secret)


# --- /openapi.json entries (api/openapi.py refuses to build without an entry per route) --------------------
_WEBHOOK_ID = {"name": "subscription_id", "in": "path", "required": True, "schema": {"type": "string"}}
_LETTER_ID = {"name": "letter_id", "in": "path", "required": True, "schema": {"type": "string"}}
_AUTH = (401, 403)

OPENAPI_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/v1/webhooks",
        "get",
        "listWebhooks",
        "Webhook subscriptions",
        SCOPE_ADMIN,
        {200: (WebhookList, "Every subscription (without secrets)")},
        problems=(*_AUTH, 404),
    ),
    Operation(
        "/v1/webhooks",
        "post",
        "createWebhook",
        "Subscribe an endpoint to events (Standard Webhooks signing)",
        SCOPE_ADMIN,
        {201: (WebhookSubscriptionBody, "Created; the secret is shown only in this answer")},
        problems=(400, *_AUTH, 404, 409, 415, 422),
        request=CreateWebhookRequest,
        headers={201: {"Location": {"schema": {"type": "string"}, "description": "/v1/webhooks/{id}"}}},
    ),
    Operation(
        "/v1/webhooks/{subscription_id}",
        "get",
        "getWebhook",
        "One webhook subscription and its delivery state",
        SCOPE_ADMIN,
        {200: (WebhookSubscriptionBody, "The subscription")},
        problems=(*_AUTH, 404),
        parameters=[_WEBHOOK_ID],
    ),
    Operation(
        "/v1/webhooks/{subscription_id}",
        "patch",
        "updateWebhook",
        "Change, disable or re-enable a subscription",
        SCOPE_ADMIN,
        {200: (WebhookSubscriptionBody, "The updated subscription")},
        problems=(400, *_AUTH, 404, 415, 422),
        request=UpdateWebhookRequest,
        parameters=[_WEBHOOK_ID],
    ),
    Operation(
        "/v1/webhooks/{subscription_id}",
        "delete",
        "deleteWebhook",
        "Delete a subscription and its dead letters",
        SCOPE_ADMIN,
        {204: (None, "Deleted")},
        problems=(*_AUTH, 404),
        parameters=[_WEBHOOK_ID],
    ),
    Operation(
        "/v1/webhooks/{subscription_id}/rotate-secret",
        "post",
        "rotateWebhookSecret",
        "New signing secret; the old one keeps signing during the overlap",
        SCOPE_ADMIN,
        {200: (WebhookSubscriptionBody, "The subscription with its new secret (shown only here)")},
        problems=(*_AUTH, 404),
        parameters=[_WEBHOOK_ID],
    ),
    Operation(
        "/v1/webhooks/dead-letters",
        "get",
        "listWebhookDeadLetters",
        "Events a subscription gave up on, newest first",
        SCOPE_ADMIN,
        {200: (DeadLetterPage, "One page of dead letters")},
        problems=(400, *_AUTH, 404),
        parameters=[
            {"name": "subscription_id", "in": "query", "required": False, "schema": {"type": "string"}},
            {
                "name": "status",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": list(_DEAD_LETTER_STATUSES)},
            },
            {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT},
            },
        ],
    ),
    Operation(
        "/v1/webhooks/dead-letters/{letter_id}/redeliver",
        "post",
        "redeliverWebhookDeadLetter",
        "Queue one more delivery attempt of a dead letter",
        SCOPE_ADMIN,
        {202: (DeadLetterBody, "Queued (status pending); the outcome shows in the list")},
        problems=(*_AUTH, 404, 409),
        parameters=[_LETTER_ID],
    ),
)
