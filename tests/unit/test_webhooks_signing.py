"""Standard Webhooks signing, event type patterns, endpoint URL rules and the retry schedule (pure parts of
gateway/webhooks.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.webhooks import (
    SECRET_PREFIX,
    EventFilter,
    InvalidWebhook,
    WebhookSecretError,
    WebhookSettings,
    decode_secret,
    generate_secret,
    parse_retry_after,
    retry_delay,
    sign,
    signature_header,
    validate_patterns,
    validate_url,
    webhook_headers,
)

# The reference vector of the Standard Webhooks libraries: standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py, test_sign_function (the same vector is in the other languages'
# test suites; the spec is spec/standard-webhooks.md "Signature scheme").
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

KNOWN = frozenset({"sms.queued", "sms.sent", "sms.delivered", "modem.state_changed", "webhook.dead_lettered"})


def test_standard_webhooks_reference_vector():
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_secret_prefix_is_optional_as_in_the_reference_libraries():
    bare = VECTOR_SECRET.removeprefix(SECRET_PREFIX)
    assert sign(bare, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_signature_covers_id_timestamp_and_every_body_byte():
    reference = sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert sign(VECTOR_SECRET, VECTOR_ID + "x", VECTOR_TIMESTAMP, VECTOR_BODY) != reference
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP + 1, VECTOR_BODY) != reference
    # A re-serialised body (no space after the colon) is a different message: receivers must use raw bytes.
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, b'{"test":2432232314}') != reference


def test_rotation_header_carries_one_signature_per_secret():
    new = generate_secret()
    header = signature_header([new, VECTOR_SECRET], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    first, second = header.split(" ")
    assert second == VECTOR_SIGNATURE
    assert first == sign(new, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)


def test_headers_are_the_standard_names():
    headers = webhook_headers([VECTOR_SECRET], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert headers == {
        "content-type": "application/json",
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": VECTOR_SIGNATURE,
    }


def test_generated_secret_is_whsec_base64_of_32_random_bytes():
    secret = generate_secret()
    assert secret.startswith("whsec_")
    key = decode_secret(secret)
    assert len(key) == 32  # the spec asks for 24 to 64 bytes
    assert generate_secret() != secret
    # Independent check of the HMAC with the decoded key.
    expected = base64.b64encode(hmac.new(key, b"a.1.b", hashlib.sha256).digest()).decode()
    assert sign(secret, "a", 1, b"b") == "v1," + expected


def test_malformed_secret_is_refused():
    with pytest.raises(WebhookSecretError, match="whsec_"):
        decode_secret("whsec_not base64!")


# --- event type patterns --------------------------------------------------------------------------------
def test_filter_matches_exact_prefix_and_everything():
    sms = EventFilter(["sms.*"])
    assert sms.matches("sms.sent") and sms.matches("sms.delivered")
    assert not sms.matches("modem.state_changed") and not sms.matches("smsx.sent")
    exact = EventFilter(["sms.delivered", "modem.state_changed"])
    assert exact.matches("sms.delivered") and not exact.matches("sms.sent")
    assert EventFilter(["*"]).matches("anything.at_all")


def test_patterns_are_validated_against_known_types():
    assert validate_patterns(["sms.*", "sms.*", "modem.state_changed"], KNOWN) == (
        "sms.*",
        "modem.state_changed",
    )
    with pytest.raises(InvalidWebhook, match="'sms.deliverd'") as info:
        validate_patterns(["sms.deliverd"], KNOWN)
    assert info.value.field == "event_types"
    with pytest.raises(InvalidWebhook, match="'call.*'"):
        validate_patterns(["call.*"], KNOWN)
    for bad in ("sms.*.sent", "SMS.sent", "sms.", "*.sent", "sms*"):
        with pytest.raises(InvalidWebhook, match="malformed"):
            validate_patterns([bad], KNOWN)
    with pytest.raises(InvalidWebhook, match="at least one"):
        validate_patterns([], KNOWN)


# --- endpoint URLs --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://crm.example.jp/hooks/sms",
        "https://10.0.0.5:8443/hook?tenant=3",
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://[::1]:9000/hook",
    ],
)
def test_accepted_urls(url):
    assert validate_url(url, allow_http=False) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://crm.example.jp/hook", "plain http"),
        ("http://10.0.0.5/hook", "plain http"),
        ("ftp://crm.example.jp/hook", "https://"),
        ("crm.example.jp/hook", "https://"),
        ("https:///hook", "no host"),
        ("https://user:pw@crm.example.jp/hook", "credentials"),
        ("https://crm.example.jp/hook#x", "fragment"),
        ("https://crm.example.jp:99999/hook", "not a valid URL"),
        ("https://crm.example.jp/a b", "whitespace"),
        ("https://crm.example.jp/" + "a" * 2100, "at most"),
    ],
)
def test_refused_urls(url, message):
    with pytest.raises(InvalidWebhook, match=message) as info:
        validate_url(url, allow_http=False)
    assert info.value.field == "url"


def test_allow_http_opens_plain_http_to_any_host():
    assert validate_url("http://10.0.0.5/hook", allow_http=True) == "http://10.0.0.5/hook"


# --- retry schedule -------------------------------------------------------------------------------------
class _FixedRandom(random.Random):
    def __init__(self, value: float):
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_schedule_without_jitter_is_the_configured_list_then_its_last_value():
    settings = WebhookSettings(jitter=0.0)
    rng = random.Random(1)
    delays = [retry_delay(settings, n, rng) for n in range(1, 9)]
    assert delays == [5.0, 30.0, 120.0, 600.0, 3600.0, 3600.0, 3600.0, 3600.0]


def test_jitter_spreads_each_delay_both_ways():
    settings = WebhookSettings(jitter=0.2)
    assert retry_delay(settings, 1, _FixedRandom(0.0)) == pytest.approx(4.0)
    assert retry_delay(settings, 1, _FixedRandom(0.5)) == pytest.approx(5.0)
    assert retry_delay(settings, 2, _FixedRandom(0.999999)) == pytest.approx(36.0, rel=1e-5)


def test_retry_after_is_honoured_up_to_the_largest_delay():
    settings = WebhookSettings(jitter=0.0)
    rng = random.Random(1)
    assert retry_delay(settings, 1, rng, retry_after=20.0) == 20.0
    assert retry_delay(settings, 1, rng, retry_after=1.0) == 5.0
    assert retry_delay(settings, 1, rng, retry_after=99999.0) == 3600.0


def test_parse_retry_after_seconds_and_http_date():
    now = datetime(2026, 11, 27, 6, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Fri, 27 Nov 2026 06:01:30 GMT", now) == 90.0
    assert parse_retry_after("Fri, 27 Nov 2026 05:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# --- the CRM's snippet in docs/webhooks.md ----------------------------------------------------------------
def _doc_verifier():
    text = (Path(__file__).parents[2] / "docs" / "webhooks.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    namespace: dict = {}
    exec(compile(code, "docs/webhooks.md", "exec"), namespace)
    return namespace["verify_webhook"], namespace


def test_documented_verifier_accepts_the_reference_vector_and_our_rotation_headers(monkeypatch):
    verify_webhook, namespace = _doc_verifier()
    monkeypatch.setattr(namespace["time"], "time", lambda: VECTOR_TIMESTAMP + 10)
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP)}
    assert verify_webhook(VECTOR_SECRET, {**headers, "webhook-signature": VECTOR_SIGNATURE}, VECTOR_BODY) == (
        VECTOR_ID
    )
    ours = webhook_headers([generate_secret(), VECTOR_SECRET], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert verify_webhook(VECTOR_SECRET, ours, VECTOR_BODY) == VECTOR_ID


def test_documented_verifier_refuses_tampering_and_replays(monkeypatch):
    verify_webhook, namespace = _doc_verifier()
    headers = webhook_headers([VECTOR_SECRET], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    monkeypatch.setattr(namespace["time"], "time", lambda: VECTOR_TIMESTAMP + 10)
    with pytest.raises(ValueError, match="no valid webhook signature"):
        verify_webhook(VECTOR_SECRET, headers, VECTOR_BODY + b" ")
    with pytest.raises(ValueError, match="no valid webhook signature"):
        verify_webhook(generate_secret(), headers, VECTOR_BODY)
    monkeypatch.setattr(namespace["time"], "time", lambda: VECTOR_TIMESTAMP + 301)
    with pytest.raises(ValueError, match="tolerance"):
        verify_webhook(VECTOR_SECRET, headers, VECTOR_BODY)
