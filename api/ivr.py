"""REST routes for the IVR tree: current revision, draft, validation, publication, revisions, rollback.

Scopes: reading needs ``ivr:read``; saving a draft, validating, publishing and rolling back need
``ivr:write``. The draft is YAML (``Content-Type: text/yaml`` or ``application/yaml``) and comes back byte
for byte as it was saved, comments included. Tree problems are reported as problem+json ``errors[]`` entries
with ``line``, ``column`` and ``severity`` besides ``field`` and ``message``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, g, request

from api import openapi
from api.auth import SCOPE_IVR_READ, SCOPE_IVR_WRITE, requires_scope
from api.problems import ApiProblem, FieldError
from api.services import api_state
from gateway.ivr.loader import Problem, validate_text
from gateway.ivr.model import tree_graph
from gateway.ivr.service import IvrInvalid, IvrService, RevisionNotFound

blueprint = Blueprint("ivr", __name__)

YAML_TYPES = ("text/yaml", "application/yaml", "application/x-yaml", "text/x-yaml")
_AUTH = (401, 403)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TreeProblemBody(_Response):
    line: int
    column: int
    severity: Annotated[str, Field(description="error or warning")]
    message: str


class RevisionSummary(_Response):
    revision: int
    author: str
    source: Annotated[str, Field(description="api or file (SIGHUP reload)")]
    created_at: str
    updated_at: str
    published: bool
    published_at: str | None
    published_by: str | None
    current: bool


class RevisionBody(RevisionSummary):
    yaml: Annotated[str, Field(description="the tree exactly as saved")]


class DraftSaved(_Response):
    revision: RevisionSummary
    valid: Annotated[bool, Field(description="no errors (warnings allowed): publishable")]
    problems: list[TreeProblemBody]


class ValidationBody(_Response):
    revision: int
    valid: bool
    problems: Annotated[list[TreeProblemBody], Field(description="warnings only (errors answer 422)")]


class RevisionList(_Response):
    items: list[RevisionSummary]
    current: int | None


class TreeProblem(ApiProblem):
    """422 ``invalid_ivr_tree``: every problem of the tree with its line and column."""

    def __init__(self, detail: str, problems: list[Problem]):
        super().__init__(
            "invalid_ivr_tree",
            detail,
            status=422,
            errors=[FieldError(f"line {p.line}, column {p.column}", p.message) for p in problems],
        )
        self.problems = problems

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        body = super().to_dict(**kwargs)
        body["errors"] = [
            {"field": f"line {p.line}, column {p.column}", **_problem(p)} for p in self.problems
        ]
        return body


def _problem(p: Problem) -> dict[str, Any]:
    return {"line": p.line, "column": p.column, "severity": p.severity, "message": p.message}


def _ivr() -> IvrService:
    service = api_state().services.ivr
    if service is None:
        raise ApiProblem("not_found", "the IVR is not enabled on this gateway")
    return service


def _actor() -> str:
    principal = g.get("principal")
    return principal.name if principal is not None else "unknown"


# --- routes ---------------------------------------------------------------------------------------------
@blueprint.get("/v1/ivr")
@requires_scope(SCOPE_IVR_READ)
async def get_current() -> Any:
    row = await _ivr().get_current()
    if row is None:
        raise ApiProblem("not_found", "no IVR tree is published yet")
    return {**row.summary(row.revision), "yaml": row.yaml}


@blueprint.get("/v1/ivr/draft")
@requires_scope(SCOPE_IVR_READ)
async def get_draft() -> Any:
    row = await _ivr().get_draft()
    if row is None:
        raise ApiProblem("not_found", "there is no draft; PUT /v1/ivr/draft to start one")
    return {**row.summary(None), "yaml": row.yaml}


@blueprint.put("/v1/ivr/draft")
@requires_scope(SCOPE_IVR_WRITE)
async def put_draft() -> Any:
    mime = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if mime not in YAML_TYPES:
        raise ApiProblem(
            "unsupported_media_type", "send the tree as Content-Type: text/yaml (or application/yaml)"
        )
    data = await request.get_data(cache=False)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiProblem(
            "invalid_request", f"the body is not UTF-8 text (byte {exc.start})", status=400
        ) from None
    if not text.strip():
        raise ApiProblem("invalid_request", "the body is empty; send the whole tree as YAML", status=400)
    row, problems = await _ivr().put_draft(text, _actor())
    return {
        "revision": row.summary(None),
        "valid": not any(p.severity == "error" for p in problems),
        "problems": [_problem(p) for p in problems],
    }


@blueprint.post("/v1/ivr/draft/validate")
@requires_scope(SCOPE_IVR_WRITE)
async def validate_draft() -> Any:
    try:
        row, problems = await _ivr().validate_draft()
    except RevisionNotFound as exc:
        raise ApiProblem("not_found", str(exc)) from None
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise TreeProblem(f"the draft (revision {row.revision}) has {len(errors)} error(s)", problems)
    return {"revision": row.revision, "valid": True, "problems": [_problem(p) for p in problems]}


@blueprint.post("/v1/ivr/publish")
@requires_scope(SCOPE_IVR_WRITE)
async def publish() -> Any:
    try:
        published = await _ivr().publish(_actor())
    except RevisionNotFound as exc:
        raise ApiProblem("not_found", str(exc)) from None
    except IvrInvalid as exc:
        raise TreeProblem(str(exc), exc.problems) from None
    return await _revision_body(published.revision)


@blueprint.get("/v1/ivr/revisions")
@requires_scope(SCOPE_IVR_READ)
async def list_revisions() -> Any:
    rows, current = await _ivr().list_revisions()
    return {"items": [r.summary(current) for r in rows], "current": current}


@blueprint.post("/v1/ivr/revisions/<int:revision>/rollback")
@requires_scope(SCOPE_IVR_WRITE)
async def rollback(revision: int) -> Any:
    try:
        published = await _ivr().rollback(revision, _actor())
    except RevisionNotFound as exc:
        raise ApiProblem("not_found", str(exc)) from None
    except IvrInvalid as exc:
        raise TreeProblem(str(exc), exc.problems) from None
    return await _revision_body(published.revision)


@blueprint.get("/v1/ivr/graph")
@requires_scope(SCOPE_IVR_READ)
async def get_graph() -> Any:
    """Nodes and edges of the current tree (``?revision=draft`` for the draft), for drawing it."""
    which = request.args.get("revision", "current")
    if which not in ("current", "draft"):
        raise ApiProblem("invalid_parameter", "revision must be current or draft",
                         errors=[FieldError("revision", "current or draft")])
    row = await (_ivr().get_draft() if which == "draft" else _ivr().get_current())
    if row is None:
        raise ApiProblem("not_found", f"there is no {which} IVR tree")
    result = validate_text(row.yaml, filename=f"<{which}>")
    if result.tree is None:
        raise ApiProblem("invalid_ivr_tree", f"the {which} tree does not validate", status=422,
                         errors=[FieldError(f"line {p.line}", p.message) for p in result.problems])
    return {"revision": row.revision, **tree_graph(result.tree).to_json()}


async def _revision_body(revision: int) -> dict[str, Any]:
    row = await _ivr().get_current()
    assert row is not None and row.revision == revision
    return {**row.summary(revision), "yaml": row.yaml}


_REV_PARAM = {"name": "revision", "in": "path", "required": True, "schema": {"type": "integer"}}
_YAML_BODY = (
    "The request body is the whole tree as YAML (Content-Type text/yaml or application/yaml, UTF-8); it is "
    "stored exactly as sent, comments included."
)

class TreeGraphBody(_Response):
    revision: int
    entry: str
    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]


OPENAPI_OPERATIONS: tuple[openapi.Operation, ...] = (
    openapi.Operation(
        "/v1/ivr/graph",
        "get",
        "getIvrGraph",
        "The tree's nodes and edges, for drawing it (?revision=current|draft)",
        SCOPE_IVR_READ,
        {200: (TreeGraphBody, "entry, nodes [{id, type, waits_for_caller, description}], edges")},
        problems=(400, *_AUTH, 404, 422),
    ),
    openapi.Operation(
        "/v1/ivr",
        "get",
        "getIvr",
        "The published IVR tree new calls take",
        SCOPE_IVR_READ,
        {200: (RevisionBody, "The current revision with its YAML")},
        problems=(*_AUTH, 404),
    ),
    openapi.Operation(
        "/v1/ivr/draft",
        "get",
        "getIvrDraft",
        "The draft being edited",
        SCOPE_IVR_READ,
        {200: (RevisionBody, "The draft with its YAML")},
        problems=(*_AUTH, 404),
    ),
    openapi.Operation(
        "/v1/ivr/draft",
        "put",
        "putIvrDraft",
        "Save the draft (YAML body); answers its problems",
        SCOPE_IVR_WRITE,
        {200: (DraftSaved, "Saved, with every problem found (line, column)")},
        problems=(400, *_AUTH, 413, 415),
        description=_YAML_BODY,
    ),
    openapi.Operation(
        "/v1/ivr/draft/validate",
        "post",
        "validateIvrDraft",
        "Validate the draft (prompt files included)",
        SCOPE_IVR_WRITE,
        {200: (ValidationBody, "Valid; warnings listed")},
        problems=(*_AUTH, 404, 422),
        description="Errors answer 422 invalid_ivr_tree; each errors[] entry has line, column, severity.",
    ),
    openapi.Operation(
        "/v1/ivr/publish",
        "post",
        "publishIvr",
        "Publish the draft: new calls take it (audited)",
        SCOPE_IVR_WRITE,
        {200: (RevisionBody, "The published revision")},
        problems=(*_AUTH, 404, 422),
        description="Calls in progress keep the revision they started with. Publishes event ivr.published.",
    ),
    openapi.Operation(
        "/v1/ivr/revisions",
        "get",
        "listIvrRevisions",
        "Every revision, newest first",
        SCOPE_IVR_READ,
        {200: (RevisionList, "Revisions and the current one")},
        problems=_AUTH,
    ),
    openapi.Operation(
        "/v1/ivr/revisions/{revision}/rollback",
        "post",
        "rollbackIvr",
        "Make an earlier published revision current again (audited)",
        SCOPE_IVR_WRITE,
        {200: (RevisionBody, "The revision now current")},
        problems=(*_AUTH, 404, 422),
        parameters=[_REV_PARAM],
    ),
)
