"""``POST /v1/providers/{name}/reports``: delivery-report callbacks from HTTP SMS providers.

No bearer token: a provider cannot hold one of our API tokens. Each provider authenticates with its own
shared secret or HMAC signature (``sms.http_providers[].reports.auth``), checked over the raw body by
``gateway.sms.providers.ProviderReportIntake``. The answer is 200 only after the reports are committed, so a
report we failed to store is retried by the provider; 401 / 400 / 422 tell it not to retry a bad request.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from api import openapi, schemas
from api.problems import ApiProblem
from api.services import api_state
from gateway.sms.provider_reports import ReportAuthError, ReportError, UnmappedStatus
from gateway.sms.providers import UnknownProvider

blueprint = Blueprint("providers", __name__)

ROUTE = "/v1/providers/<name>/reports"


@blueprint.post(ROUTE)
async def provider_reports(name: str) -> Any:
    intake = api_state().services.provider_reports
    if intake is None:
        raise ApiProblem("not_found", "this gateway has no HTTP providers that accept delivery reports")
    body = await request.get_data(cache=False)
    assert isinstance(body, bytes)
    headers = {key: value for key, value in request.headers.items()}
    try:
        results = await intake.handle(name, headers, body)
    except UnknownProvider as exc:
        raise ApiProblem("not_found", str(exc)) from None
    except ReportAuthError as exc:
        raise ApiProblem("invalid_provider_signature", str(exc), status=401) from None
    except UnmappedStatus as exc:
        raise ApiProblem("unmapped_report_status", str(exc), status=422) from None
    except ReportError as exc:
        raise ApiProblem("invalid_report", str(exc), status=exc.http_status) from None
    return {"accepted": len(results), "items": [r.to_json() for r in results]}


# --- OpenAPI ------------------------------------------------------------------------------------------------
OPERATIONS: tuple[openapi.Operation, ...] = (
    openapi.Operation(
        "/v1/providers/{name}/reports",
        "post",
        "postProviderReports",
        "Delivery reports from an HTTP SMS provider",
        None,
        {200: (schemas.ProviderReportAck, "Committed: every report is stored and applied")},
        problems=(400, 401, 404, 413, 422),
        parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        description="Authenticated by the provider's shared secret header or HMAC-SHA256 signature "
        "(X-Signature-Timestamp / X-Signature: sha256=<hex over '<timestamp>.' + body) as configured in "
        "sms.http_providers[].reports.auth; no bearer token. The body format is the provider's own "
        "(JSON or form), read with the configured field paths.",
    ),
)

# api/openapi.py refuses to build without an entry for every route; until it collects ``OPERATIONS`` from the
# feature route modules itself, this module adds its own (once: a module is imported once per process).
if not any(op.operation_id == "postProviderReports" for op in openapi.OPERATIONS):
    openapi.OPERATIONS = (*openapi.OPERATIONS, *OPERATIONS)
