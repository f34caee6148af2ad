"""The quart-trio application: routes, authentication, problem+json errors, metrics, CORS.

Error contract: every response with status >= 400 is ``application/problem+json`` (api/problems.py), including
routing errors (404/405), framework errors (413) and unexpected exceptions (500, logged with the request id
and never shown to the client). The app starts no background tasks on ``app.nursery``: WebSocket handlers own
their tasks, so shutdown is not held up (see /work/shared/notes/api.md §8).
"""

from __future__ import annotations

import importlib
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from quart import g, request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import HTTPException

from api import events_ws, messages
from api.auth import authorize
from api.metrics import UNMATCHED_ROUTE, ApiMetrics
from api.openapi import OPENAPI_KEY, build_openapi
from api.problems import ApiProblem, http_exception_problem
from api.services import STATE_KEY, ApiServices, ApiSettings, ApiState, api_state, request_id
from api.submit_fast import SubmitFastPath

log = structlog.get_logger("api")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-Id"
_CORS_EXPOSE_HEADERS = "Location, X-Request-Id, Idempotent-Replayed, WWW-Authenticate"


def _route_label() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED_ROUTE


def _problem_response(problem: ApiProblem) -> TrioResponse:
    return problem.to_response(instance=request.path, request_id=request_id())


def create_app(services: ApiServices, settings: ApiSettings | None = None, *,
               extra_routes: Sequence[Any] = ()) -> QuartTrio:
    """The API application; serve it with ``api.server.serve``. ``extra_routes``: route modules (objects with
    ``blueprint`` and ``OPENAPI_OPERATIONS``) that only a given composition has, e.g. the demo's."""
    settings = settings or ApiSettings()
    app = QuartTrio("hcrm_api")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,  # enforced by Quart's Body while the body streams in
        BODY_TIMEOUT=30,
        RESPONSE_TIMEOUT=60,
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=1,
        PROVIDE_AUTOMATIC_OPTIONS=True,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    state = ApiState(services=services, settings=settings, metrics=ApiMetrics(services.registry))
    app.extensions[STATE_KEY] = state

    app.register_blueprint(messages.blueprint)
    app.register_blueprint(events_ws.blueprint)
    features = [*_feature_route_modules(), *extra_routes]
    for module in features:
        app.register_blueprint(module.blueprint)
    _register_operational_routes(app)
    _register_hooks(app, state)
    _register_error_handlers(app)
    # Built once, after every route exists.
    extra = [op for module in features for op in getattr(module, "OPENAPI_OPERATIONS", ())]
    app.extensions[OPENAPI_KEY] = build_openapi(app, metrics_public=settings.metrics_public, extra=extra)
    # The ingest hot path answers POST /v1/messages before Quart's machinery (see api/submit_fast.py).
    app.asgi_app = SubmitFastPath(  # type: ignore[method-assign]
        app.asgi_app, state, lambda out, origin, _method: cors_headers(out, origin, settings.cors_origins)
    )
    return app


# Feature route modules, each exposing ``blueprint`` and documenting its routes in ``OPENAPI_OPERATIONS``.
FEATURE_ROUTE_MODULES = (
    "api.templates", "api.verifications", "api.webhooks", "api.consent", "api.providers",  # SMS platform
    "api.calls", "api.recordings", "api.history",  # voice lines (issue 5)
    "api.ivr", "api.agents", "api.call_campaigns",  # IVR (issue 6)
    "api.campaigns",  # SMS campaigns (issue 4)
    "api.console_routes",  # the operator console (issue 7)
)


def _feature_route_modules() -> list:
    modules = []
    for name in FEATURE_ROUTE_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:  # only while a feature module is being written
            if exc.name != name:
                raise
    return modules


def _register_operational_routes(app: QuartTrio) -> None:
    @app.get("/health")
    async def health() -> Any:
        """Liveness and a modem summary; no authentication (load balancers, systemd watchdogs)."""
        state = api_state()
        modems = state.services.sms.modems()
        states: dict[str, int] = {}
        for modem in modems:
            states[modem.state] = states.get(modem.state, 0) + 1
        bus = state.services.bus
        return {
            "status": "ok",
            "epoch": bus.epoch,
            "seq": events_ws.latest_seq(bus),
            "uptime_s": round(max(0.0, time.time() - state.services.started_at), 3),
            "modems": {"total": len(modems), "ready": states.get("ready", 0), "states": states},
        }

    @app.get("/metrics")
    async def metrics() -> Any:
        """Prometheus text format; admin scope unless ``metrics_public`` is configured."""
        state = api_state()
        if not state.settings.metrics_public:
            authorize("admin")
        body, content_type = state.metrics.exposition()
        return TrioResponse(body, status=200, content_type=content_type)

    @app.get("/openapi.json")
    async def openapi() -> Any:
        return app.extensions[OPENAPI_KEY]


def _register_hooks(app: QuartTrio, state: ApiState) -> None:
    @app.before_request
    async def start_request() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    async def finish_request(response: Any) -> Any:
        response.headers["X-Request-Id"] = request_id()
        response.headers.setdefault("Cache-Control", "no-store")
        _apply_cors(response, state.settings.cors_origins)
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = _route_label()
        state.metrics.observe_request(route, request.method, response.status_code, elapsed)
        log.debug(
            "request",
            method=request.method,
            route=route,
            status=response.status_code,
            ms=round(elapsed * 1000, 2),
            request_id=request_id(),
        )
        return response


def cors_headers(out: dict[str, str], origin: str | None, origins: list[str]) -> None:
    """CORS response headers for an allowed ``origin`` (framework-free: the submit fast path uses it)."""
    if not origins or origin is None or (origin not in origins and "*" not in origins):
        return
    out["Access-Control-Allow-Origin"] = origin
    out["Vary"] = "Origin"
    out["Access-Control-Expose-Headers"] = _CORS_EXPOSE_HEADERS


def _apply_cors(response: Any, origins: list[str]) -> None:
    origin = request.headers.get("Origin")
    if not origins or origin is None or (origin not in origins and "*" not in origins):
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers.add("Vary", "Origin")
    response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE_HEADERS
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"


def _register_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(ApiProblem)
    async def on_problem(exc: ApiProblem) -> Any:
        return _problem_response(exc)

    @app.errorhandler(HTTPException)
    async def on_http_exception(exc: HTTPException) -> Any:
        return _problem_response(http_exception_problem(exc))

    @app.errorhandler(Exception)
    async def on_unexpected(exc: Exception) -> Any:
        original = getattr(exc, "original_exception", None) or exc
        log.error(
            "unhandled error in request",
            request_id=request_id(),
            method=request.method,
            route=_route_label(),
            exc_info=original,
        )
        return _problem_response(
            ApiProblem("internal_error", f"an internal error occurred; quote request id {request_id()}")
        )
