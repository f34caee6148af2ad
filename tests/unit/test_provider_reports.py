"""Delivery-report callbacks: authentication (shared secret, HMAC-SHA256 + timestamp), parsing, mapping."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gateway.sms.provider_reports import (
    ProviderReport,
    ProviderReportReceiver,
    ProviderReportsConfig,
    ReportAuth,
    ReportAuthError,
    ReportFormatError,
    UnmappedStatus,
    authenticate,
    map_status,
    parse_reports,
    sign,
)
from simulators.http_provider import signature_headers

SECRET = "whsec-test-0123456789abcdef"
OLD_SECRET = "old-secret-fedcba9876543210"
NOW = 1_764_223_200  # 2025-11-27T06:00:00Z
BODY = b'{"id":"sim-000042","status":"DELIVRD"}'
# Computed independently with OpenSSL:
#   printf '%s' '1764223200.{"id":"sim-000042","status":"DELIVRD"}' \
#     | openssl dgst -sha256 -hmac 'whsec-test-0123456789abcdef'            (and -binary | base64)
VECTOR_HEX = "424c191eefe5767cafa183a359228c5a449cc052f2727e16c1f861d1ab43fc86"
VECTOR_B64 = "QkwZHu/ldnyvoYOjWSKMWkScwFLycn4Wwfhh0atD/IY="


def hmac_auth(**overrides) -> ReportAuth:
    return ReportAuth(**{"method": "hmac_sha256", "secrets": [SECRET], **overrides})


def signed(body: bytes = BODY, ts: int = NOW, secret: str = SECRET) -> dict[str, str]:
    return {"X-Signature-Timestamp": str(ts), "X-Signature": "sha256=" + sign(secret, ts, body)}


def config(**overrides) -> ProviderReportsConfig:
    return ProviderReportsConfig(**{"auth": hmac_auth(), **overrides})


# --- signature scheme -----------------------------------------------------------------------------------
def test_signature_matches_an_independent_openssl_vector():
    assert sign(SECRET, NOW, BODY) == VECTOR_HEX
    assert sign(SECRET, NOW, BODY, encoding="base64") == VECTOR_B64


def test_simulator_signature_is_accepted():
    # The simulator signs with its own implementation of the documented scheme.
    authenticate(hmac_auth(), signature_headers(SECRET, BODY, timestamp=NOW), BODY, now=NOW)


def test_valid_signature_passes_and_header_names_are_case_insensitive():
    authenticate(hmac_auth(), signed(), BODY, now=NOW)
    lowered = {k.lower(): v for k, v in signed().items()}
    authenticate(hmac_auth(), lowered, BODY, now=NOW)


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"X-Signature-Timestamp": str(NOW)}, BODY, "missing X-Signature header"),
        ({"X-Signature": "sha256=" + VECTOR_HEX}, BODY, "missing X-Signature-Timestamp header"),
        ({"X-Signature-Timestamp": "17e8", "X-Signature": "sha256=" + VECTOR_HEX}, BODY, "whole seconds"),
        (signed(), BODY + b" ", "does not match the body"),  # body changed after signing
        (signed(secret="another-secret-0123456789"), BODY, "does not match the body"),
        ({"X-Signature-Timestamp": str(NOW), "X-Signature": VECTOR_HEX}, BODY, "does not match"),  # no prefix
        # the timestamp is signed too: changing it breaks the signature
        ({"X-Signature-Timestamp": str(NOW + 1), "X-Signature": f"sha256={VECTOR_HEX}"}, BODY, "does not"),
    ],
)
def test_bad_signatures_are_refused_with_a_reason(headers, body, message):
    with pytest.raises(ReportAuthError, match=message) as info:
        authenticate(hmac_auth(), headers, body, now=NOW)
    assert info.value.http_status == 401
    assert SECRET not in str(info.value)


def test_timestamp_tolerance_is_inclusive_and_symmetric():
    auth = hmac_auth(tolerance_s=300)
    for ts in (NOW - 300, NOW + 300):
        authenticate(auth, signed(ts=ts), BODY, now=NOW)
    for ts in (NOW - 301, NOW + 301):
        with pytest.raises(ReportAuthError, match="replayed request or unsynchronised clock"):
            authenticate(auth, signed(ts=ts), BODY, now=NOW)


def test_secret_rotation_accepts_old_and_new_secrets_and_several_signatures():
    auth = hmac_auth(secrets=[SECRET, OLD_SECRET])
    authenticate(auth, signed(secret=OLD_SECRET), BODY, now=NOW)
    both = f"sha256={sign('unknown-secret-000000000', NOW, BODY)}, sha256={sign(SECRET, NOW, BODY)}"
    authenticate(hmac_auth(), {"X-Signature-Timestamp": str(NOW), "X-Signature": both}, BODY, now=NOW)


def test_custom_headers_prefix_and_base64():
    auth = hmac_auth(
        header="X-Hub-Sig", timestamp_header="X-Hub-Time", signature_prefix="v1,", signature_encoding="base64"
    )
    headers = {"X-Hub-Time": str(NOW), "X-Hub-Sig": "v1," + VECTOR_B64}
    authenticate(auth, headers, BODY, now=NOW)
    rotated = {"X-Hub-Time": str(NOW), "X-Hub-Sig": f"v1,{'A' * 44} v1,{VECTOR_B64}"}
    authenticate(auth, rotated, BODY, now=NOW)
    with pytest.raises(ReportAuthError):
        authenticate(auth, {"X-Hub-Time": str(NOW), "X-Hub-Sig": "v1," + VECTOR_HEX}, BODY, now=NOW)


def test_shared_secret_header():
    auth = ReportAuth(method="shared_secret", secrets=[SECRET, OLD_SECRET])
    assert auth.header_name == "X-Provider-Secret"
    authenticate(auth, {"x-provider-secret": SECRET}, b"anything", now=0)
    authenticate(auth, {"X-Provider-Secret": OLD_SECRET}, b"anything", now=0)
    with pytest.raises(ReportAuthError, match="does not match"):
        authenticate(auth, {"X-Provider-Secret": SECRET[:-1]}, b"", now=0)
    with pytest.raises(ReportAuthError, match="missing X-Provider-Secret"):
        authenticate(auth, {}, b"", now=0)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"method": "hmac_sha256", "secrets": ["short"]}, "at least 16"),
        ({"method": "hmac_sha256", "secrets": []}, "at least 1"),
        ({"method": "hmac_sha256", "secrets": [SECRET], "header": "Bad Header"}, "not a valid header name"),
        ({"method": "hmac_sha256", "secrets": [SECRET], "colour": "red"}, "Extra inputs"),
        ({"method": "basic", "secrets": [SECRET]}, "method"),
    ],
)
def test_auth_config_is_validated(kwargs, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ReportAuth(**kwargs)


def test_secrets_do_not_appear_in_the_config_repr():
    assert SECRET not in repr(config())


# --- parsing --------------------------------------------------------------------------------------------
def test_json_object_report():
    body = json.dumps({"id": "p-1", "status": "DELIVRD", "err": "000"}).encode()
    (report,) = parse_reports("acme", config(error_field="$.err"), body)
    assert report == ProviderReport("acme", "p-1", "delivered", "DELIVRD", "000", True)
    assert report.to_json()["status"] == "delivered"


def test_json_list_and_items_path():
    body = json.dumps([{"id": "a", "status": "delivered"}, {"id": 7, "status": "failed"}]).encode()
    reports = parse_reports("acme", config(), body)
    assert [(r.provider_id, r.status) for r in reports] == [("a", "delivered"), ("7", "failed")]
    # An Infobip-like envelope: {"results": [{"messageId", "status": {"groupName"}}]}
    envelope = {"results": [{"messageId": "x1", "status": {"groupName": "UNDELIVERABLE"}}]}
    cfg = config(items_path="$.results", id_field="$.messageId", status_field="$.status.groupName")
    (report,) = parse_reports("ib", cfg, json.dumps(envelope).encode())
    assert (report.provider_id, report.status, report.raw_status) == ("x1", "undelivered", "UNDELIVERABLE")


def test_form_report():
    cfg = config(
        body_format="form", id_field="MessageSid", status_field="MessageStatus", error_field="ErrorCode"
    )
    body = b"MessageSid=SM123&MessageStatus=undelivered&ErrorCode=30003&To=%2B819012345678"
    (report,) = parse_reports("tw", cfg, body)
    assert (report.provider_id, report.status, report.error_code) == ("SM123", "undelivered", "30003")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "no reports"),
        (b'[{"id": "a", "status": "DELIVRD"}, {"status": "DELIVRD"}]', r"report 1: no message id at \$\.id"),
        (b'{"id": "a"}', r"report: no status at \$\.status"),
        (b'{"id": {"nested": 1}, "status": "DELIVRD"}', "no message id"),
        (b'{"id": "", "status": "DELIVRD"}', "no message id"),
    ],
)
def test_malformed_reports_are_refused_with_a_reason(body, message):
    with pytest.raises(ReportFormatError, match=message) as info:
        parse_reports("acme", config(), body)
    assert info.value.http_status == 400


def test_items_path_must_point_to_a_list_and_body_size_is_limited():
    with pytest.raises(ReportFormatError, match=r"\$\.results is not a list"):
        parse_reports("acme", config(items_path="$.results"), b'{"results": {}}')
    with pytest.raises(ReportFormatError, match="exceeds max_body_bytes 256"):
        parse_reports("acme", config(max_body_bytes=256), b" " * 257)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"id_field": "id"}, "id_field"),  # JSON needs a path
        ({"status_field": '$.status == "x"'}, "cannot hold a comparison"),
        ({"body_format": "form", "id_field": "$.id", "status_field": "s"}, "form field name"),
        ({"body_format": "form", "id_field": "i", "status_field": "s", "items_path": "$.x"}, "items_path"),
    ],
)
def test_field_config_matches_the_body_format(overrides, fragment):
    with pytest.raises(ValidationError, match=fragment):
        config(**overrides)


# --- status mapping -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "ours"),
    [
        ("DELIVRD", "delivered"),
        ("delivered", "delivered"),
        ("DeliveryOK", "delivered"),
        ("UNDELIV", "undelivered"),
        ("EXPIRED", "undelivered"),
        ("Undelivered", "undelivered"),
        ("REJECTD", "failed"),
        ("failed", "failed"),
        ("ENROUTE", "pending"),
        ("ACCEPTD", "pending"),
        ("sent", "pending"),
    ],
)
def test_default_map_covers_smpp_and_http_vocabularies(raw, ours):
    assert map_status(config(), raw) == (ours, True)


def test_unmapped_status_policy():
    assert map_status(config(), "weird") == ("pending", False)
    assert map_status(config(unmapped="failed"), "weird") == ("failed", False)
    with pytest.raises(UnmappedStatus, match="'weird' is not in") as info:
        map_status(config(unmapped="reject"), "weird")
    assert info.value.http_status == 422


def test_custom_map_and_case_sensitivity():
    cfg = config(status_map={"0": "delivered", "2": "failed", "Ok": "delivered"}, case_sensitive=True)
    assert map_status(cfg, "0") == ("delivered", True)
    assert map_status(cfg, "2") == ("failed", True)
    assert map_status(cfg, "OK") == ("pending", False)
    assert map_status(config(status_map={"Ok": "delivered"}), "OK") == ("delivered", True)


# --- receiver -------------------------------------------------------------------------------------------
def test_receiver_authenticates_then_parses():
    receiver = ProviderReportReceiver("acme", config(), clock=lambda: NOW + 10)
    (report,) = receiver.handle(signed(), BODY)
    assert (report.provider, report.provider_id, report.status) == ("acme", "sim-000042", "delivered")
    with pytest.raises(ReportAuthError):
        receiver.handle({}, BODY)
    late = ProviderReportReceiver("acme", config(), clock=lambda: NOW + 3600)
    with pytest.raises(ReportAuthError, match="tolerance"):
        late.handle(signed(), BODY)


def test_receiver_authenticates_before_parsing():
    # An unauthenticated caller learns nothing about the body format.
    receiver = ProviderReportReceiver("acme", config(), clock=lambda: NOW)
    with pytest.raises(ReportAuthError):
        receiver.handle({"X-Signature-Timestamp": str(NOW), "X-Signature": "sha256=00"}, b"{not json")
