"""Problem details (RFC 9457): shape, stable codes, validation error lists, HTTP exception mapping."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from werkzeug.exceptions import MethodNotAllowed, NotFound, RequestEntityTooLarge

from api.problems import (
    PROBLEM_CATALOGUE,
    PROBLEM_CONTENT_TYPE,
    ApiProblem,
    FieldError,
    http_exception_problem,
    validation_problem,
)
from api.schemas import SendMessageRequest


def test_problem_document_has_rfc9457_members_and_code() -> None:
    problem = ApiProblem("invalid_number", "'123' is not a valid number", errors=[FieldError("to", "bad")])
    body = problem.to_dict(instance="/v1/messages", request_id="r1")
    assert body == {
        "type": "urn:hcrm:problem:invalid_number",
        "title": "Invalid phone number",
        "status": 422,
        "detail": "'123' is not a valid number",
        "code": "invalid_number",
        "instance": "/v1/messages",
        "request_id": "r1",
        "errors": [{"field": "to", "message": "bad"}],
    }


def test_optional_members_are_left_out_when_empty() -> None:
    body = ApiProblem("not_found", "no such message").to_dict()
    assert set(body) == {"type", "title", "status", "detail", "code"}
    assert body["status"] == 404


async def test_response_is_problem_json_with_extra_headers() -> None:
    problem = ApiProblem("missing_token", "send a token", headers={"WWW-Authenticate": 'Bearer realm="x"'})
    response = problem.to_response(instance="/v1/modems", request_id="abc")
    assert response.status_code == 401
    assert response.mimetype == PROBLEM_CONTENT_TYPE
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="x"'
    body = json.loads(await response.get_data())
    assert body["code"] == "missing_token" and body["instance"] == "/v1/modems"


def test_unknown_code_needs_an_explicit_status() -> None:
    with pytest.raises(ValueError, match="unknown problem code 'made_up'"):
        ApiProblem("made_up", "x")
    problem = ApiProblem("made_up_thing", "x", status=422)
    assert problem.status == 422 and problem.title == "Made up thing"


def test_catalogue_titles_and_statuses_are_sane() -> None:
    for code, (status, title) in PROBLEM_CATALOGUE.items():
        assert 400 <= status <= 599, code
        assert title and title[0].isupper(), code
        assert code == code.lower() and " " not in code


def _validation_error(raw: bytes) -> ValidationError:
    with pytest.raises(ValidationError) as excinfo:
        SendMessageRequest.model_validate_json(raw)
    return excinfo.value


def test_unknown_and_mistyped_fields_are_all_listed() -> None:
    raw = b'{"to": 819012345678, "text": "hi", "report": "yes", "colour": "red"}'
    problem = validation_problem(_validation_error(raw))
    assert problem.code == "validation_error" and problem.status == 422
    by_field = {e.field: e.message for e in problem.errors}
    assert by_field["colour"] == "unknown field"
    assert set(by_field) == {"to", "report", "colour"}
    assert "colour" in problem.detail and "report" in problem.detail


def test_missing_fields_and_naive_send_at() -> None:
    problem = validation_problem(
        _validation_error(b'{"to": "+819012345678", "send_at": "2026-12-01T09:00:00"}')
    )
    by_field = {e.field: e.message for e in problem.errors}
    assert by_field["text"] == "field required"
    assert "send_at" in by_field and "timezone" in by_field["send_at"].lower()


def test_body_that_is_not_an_object() -> None:
    problem = validation_problem(_validation_error(b'["+819012345678", "hi"]'))
    assert problem.code == "validation_error"
    assert problem.errors == [FieldError("", "the body must be a JSON object")]


@pytest.mark.parametrize("raw", [b'{"to": "+81", ', b"", b"not json", b'{"to": "x"} trailing'])
def test_unparsable_json_is_a_400(raw: bytes) -> None:
    problem = validation_problem(_validation_error(raw))
    assert problem.code == "malformed_json" and problem.status == 400
    assert problem.detail.startswith("the body is not valid JSON")


def test_http_exceptions_map_to_stable_codes() -> None:
    not_found = http_exception_problem(NotFound())
    assert (not_found.code, not_found.status) == ("not_found", 404)
    not_allowed = http_exception_problem(MethodNotAllowed(valid_methods=["POST", "GET"]))
    assert (not_allowed.code, not_allowed.status) == ("method_not_allowed", 405)
    assert not_allowed.headers["Allow"] == "GET, POST"
    too_large = http_exception_problem(RequestEntityTooLarge())
    assert (too_large.code, too_large.status) == ("body_too_large", 413)


def test_problem_is_an_exception_with_its_detail() -> None:
    problem = ApiProblem("conflict", "already sending")
    assert str(problem) == "already sending"
    with pytest.raises(ApiProblem):
        raise problem
