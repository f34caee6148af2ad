"""/openapi.json: an OpenAPI 3.1 document built from the pydantic models and the route table below.

OpenAPI 3.1 uses JSON Schema 2020-12, which is what pydantic v2 emits, so the model schemas are used as they
are. ``build_openapi`` refuses to build (RuntimeError at app creation) when the app has a route that is not
documented here, so the document cannot silently fall behind the code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import schemas
from api.auth import SCOPE_ADMIN, SCOPE_EVENTS_READ, SCOPE_SMS_READ, SCOPE_SMS_SEND
from api.problems import PROBLEM_CATALOGUE, PROBLEM_CONTENT_TYPE

OPENAPI_KEY = "hcrm_openapi"
API_VERSION = "1.0.0"
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    path: str  # OpenAPI form: /v1/messages/{message_id}
    method: str
    operation_id: str
    summary: str
    scope: str | None  # None: no authentication
    responses: dict[int, tuple[type[BaseModel] | None, str]]
    problems: tuple[int, ...] = ()
    request: type[BaseModel] | None = None
    parameters: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    headers: dict[int, dict[str, Any]] = field(default_factory=dict)


def authenticated(path: str, method: str, operation_id: str, summary: str, scope: str,
                  responses: dict[int, tuple[type[BaseModel] | None, str]], *, problems: tuple[int, ...] = (),
                  request: type[BaseModel] | None = None,
                  parameters: list[dict[str, Any]] | None = None) -> Operation:
    """An Operation behind a bearer token: 401 and 403 are added to its problems."""
    return Operation(path, method, operation_id, summary, scope, responses, problems=(*problems, 401, 403),
                     request=request, parameters=parameters or [])


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_MESSAGE_ID = {"name": "message_id", "in": "path", "required": True, "schema": {"type": "string"}}
_AUTH_PROBLEMS = (401, 403)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/v1/messages",
        "post",
        "submitMessage",
        "Queue an SMS",
        SCOPE_SMS_SEND,
        {202: (schemas.Message, "Accepted: the message is queued (or scheduled)")},
        problems=(400, *_AUTH_PROBLEMS, 409, 413, 415, 422),
        request=schemas.SendMessageRequest,
        parameters=[
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "draft-ietf-httpapi-idempotency-key-header: a retry with the same key and "
                "body gets the first answer again (header Idempotent-Replayed: true); other body: 422; "
                "first still running: 409",
            }
        ],
        headers={202: {"Location": {"schema": {"type": "string"}, "description": "/v1/messages/{id}"}}},
    ),
    Operation(
        "/v1/messages",
        "get",
        "listMessages",
        "List messages, newest first",
        SCOPE_SMS_READ,
        {200: (schemas.MessagePage, "One page of messages")},
        problems=(400, *_AUTH_PROBLEMS),
        parameters=[
            _query("status", {"type": "string"}, "Only messages with this status"),
            _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
            _query(
                "limit",
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": schemas.MAX_PAGE_LIMIT,
                    "default": schemas.DEFAULT_PAGE_LIMIT,
                },
                "Page size",
            ),
        ],
    ),
    Operation(
        "/v1/messages/{message_id}",
        "get",
        "getMessage",
        "One message with its parts",
        SCOPE_SMS_READ,
        {200: (schemas.Message, "The message")},
        problems=(*_AUTH_PROBLEMS, 404),
        parameters=[_MESSAGE_ID],
    ),
    Operation(
        "/v1/messages/{message_id}",
        "delete",
        "cancelMessage",
        "Cancel a message not yet being sent",
        SCOPE_SMS_SEND,
        {200: (schemas.Message, "The canceled message")},
        problems=(*_AUTH_PROBLEMS, 404, 409),
        parameters=[_MESSAGE_ID],
    ),
    Operation(
        "/v1/modems",
        "get",
        "listModems",
        "Modems and their state",
        SCOPE_SMS_READ,
        {200: (schemas.ModemList, "Every configured modem")},
        problems=_AUTH_PROBLEMS,
    ),
    Operation(
        "/v1/events",
        "get",
        "events",
        "Event stream (WebSocket)",
        SCOPE_EVENTS_READ,
        {101: (None, "Switching Protocols: the WebSocket is open")},
        parameters=[
            _query(
                "since",
                {"type": "string", "pattern": "^.+:[0-9]+$"},
                "Resume after this event id (EPOCH:SEQ); replays from the journal or sends resync_required",
            ),
            _query("types", {"type": "string"}, "Comma-separated event types or prefixes: sms.*,modem.*"),
        ],
        description="WebSocket upgrade. Authenticate with the Authorization header or a first message "
        '{"type":"auth","token":"..."} within 5 s. Frames: hello, events {id,type,epoch,seq,time,data}, '
        "resync_required, ping. Close codes: 4000 bad query, 4001 no token, 4003 bad token or scope, "
        "4008 slow consumer, 1001 shutting down. See docs/api.md.",
    ),
    Operation(
        "/health",
        "get",
        "health",
        "Liveness and modem summary",
        None,
        {200: (schemas.Health, "The gateway is serving")},
    ),
    Operation(
        "/metrics",
        "get",
        "metrics",
        "Prometheus metrics (text format)",
        SCOPE_ADMIN,
        {200: (None, "Prometheus text exposition format")},
        problems=_AUTH_PROBLEMS,
    ),
    Operation(
        "/openapi.json", "get", "openapi", "This document", None, {200: (None, "OpenAPI 3.1 document")}
    ),
)


def _problem_response(status: int) -> dict[str, Any]:
    codes = sorted(code for code, (code_status, _) in PROBLEM_CATALOGUE.items() if code_status == status)
    return {
        "description": "Problem details (RFC 9457); code: " + ", ".join(codes),
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}},
    }


def _component_schemas(operations: Sequence[Operation]) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], str]] = [(schemas.Problem, "serialization")]
    for op in operations:
        if op.request is not None:
            models.append((op.request, "validation"))
        models.extend((model, "serialization") for model, _ in op.responses.values() if model is not None)
    unique = list(dict.fromkeys(models))
    _, top = models_json_schema(unique, ref_template=_REF)
    return top.get("$defs", {})


def _path_of_rule(rule: str) -> str:
    """Quart ``/v1/messages/<message_id>`` (or ``<string:message_id>``) -> ``/v1/messages/{message_id}``."""
    out = []
    for piece in rule.split("/"):
        if piece.startswith("<") and piece.endswith(">"):
            piece = "{" + piece[1:-1].split(":")[-1] + "}"
        out.append(piece)
    return "/".join(out)


def app_operations(app: Any) -> set[tuple[str, str]]:
    """(path, method) of every route the app serves (HEAD/OPTIONS and static files excluded)."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
        if getattr(rule, "websocket", False):
            methods = {"GET"}
        for method in methods:
            found.add((_path_of_rule(rule.rule), method.lower()))
    return found


def build_openapi(
    app: Any, *, metrics_public: bool = False, extra: Sequence[Operation] = ()
) -> dict[str, Any]:
    """The OpenAPI document of ``app``. ``extra``: operations documented by feature route modules (their
    ``OPENAPI_OPERATIONS``), so each module documents its own routes next to them."""
    operations = (*OPERATIONS, *extra)
    documented = {(op.path, op.method) for op in operations}
    missing = sorted(app_operations(app) - documented)
    if missing:
        raise RuntimeError(
            "routes missing from the OpenAPI document (add them to OPERATIONS in api/openapi.py, or to "
            f"OPENAPI_OPERATIONS in the route's own module): {missing}"
        )

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        if (op.path, op.method) not in app_operations(app):
            continue  # documented but not mounted in this app
        responses: dict[str, Any] = {}
        for status, (model, description) in op.responses.items():
            response: dict[str, Any] = {"description": description}
            if model is not None:
                response["content"] = {
                    "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}
                }
            if status in op.headers:
                response["headers"] = op.headers[status]
            responses[str(status)] = response
        for status in (*op.problems, 500):
            responses[str(status)] = _problem_response(status)
        entry: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "responses": responses,
        }
        if op.description:
            entry["description"] = op.description
        if op.parameters:
            entry["parameters"] = op.parameters
        if op.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": _REF.format(model=op.request.__name__)}}},
            }
        if op.scope is None or (op.path == "/metrics" and metrics_public):
            entry["security"] = []
        else:
            # OpenAPI 3.1 §4.8.30: for schemes other than oauth2/openIdConnect the array lists required roles.
            entry["security"] = [{"bearerAuth": [op.scope]}]
            entry["description"] = (
                entry.get("description", "") + f" Requires scope {op.scope} (or admin)."
            ).strip()
        paths.setdefault(op.path, {})[op.method] = entry

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hcrm-gateway API",
            "version": API_VERSION,
            "description": "SMS and telephony gateway for hospital patient-relations centres. Errors are "
            "application/problem+json (RFC 9457) with a stable `code`.",
        },
        "paths": paths,
        "components": {
            "schemas": _component_schemas(operations),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Scopes: sms:send, sms:read, events:read, admin (implies all).",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }
