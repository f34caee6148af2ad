"""Bearer tokens: configuration checks, hashing, constant-time lookup, scopes, header parsing (RFC 6750)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from api.auth import (
    SCOPES,
    AuthFailure,
    BearerHeaderError,
    Principal,
    TokenConfigError,
    TokenStore,
    check_token,
    generate_token,
    hash_token,
    parse_bearer,
)

SENDER = "s3nder-token-with-enough-entropy-0123456789"
READER = "r3ader-token-with-enough-entropy-0123456789"
ADMIN = "adm1n-token-with-enough-entropy-0123456789"


@pytest.fixture
def store() -> TokenStore:
    return TokenStore.from_config(
        [
            {"name": "crm", "hash": hash_token(SENDER), "scopes": ["sms:send", "sms:read"]},
            {"name": "dashboard", "hash": hash_token(READER), "scopes": ["sms:read", "events:read"]},
            {"name": "ops", "hash": hash_token(ADMIN), "scopes": ["admin"]},
        ]
    )


def test_hash_token_is_sha256_hex_with_prefix() -> None:
    assert hash_token("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    # The published SHA-256("abc") test vector (FIPS 180-2 appendix B.1).
    assert hash_token("abc").endswith("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_generate_token_is_random_and_long() -> None:
    tokens = {generate_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) >= 43 for t in tokens)
    assert all(parse_bearer(f"Bearer {t}") == t for t in tokens)


def test_authenticate_known_and_unknown_tokens(store: TokenStore) -> None:
    assert store.authenticate(SENDER) == Principal("crm", frozenset({"sms:send", "sms:read"}))
    assert store.authenticate(READER).name == "dashboard"
    assert store.authenticate("not-a-token") is None
    assert store.authenticate(SENDER + "x") is None
    assert store.authenticate("") is None
    assert len(store) == 3


def test_the_configured_hash_is_not_accepted_as_a_token(store: TokenStore) -> None:
    assert store.authenticate(hash_token(SENDER)) is None
    assert store.authenticate(hash_token(SENDER).removeprefix("sha256:")) is None


def test_admin_implies_every_scope(store: TokenStore) -> None:
    admin = store.authenticate(ADMIN)
    assert all(admin.allows(scope) for scope in SCOPES)
    reader = store.authenticate(READER)
    assert reader.allows("sms:read") and reader.allows("events:read")
    assert not reader.allows("sms:send") and not reader.allows("admin")


def test_check_token_reports_each_failure(store: TokenStore) -> None:
    with pytest.raises(AuthFailure) as missing:
        check_token(store, None, "sms:read")
    assert missing.value.code == "missing_token"
    with pytest.raises(AuthFailure) as invalid:
        check_token(store, "wrong", "sms:read")
    assert invalid.value.code == "invalid_token"
    with pytest.raises(AuthFailure) as scope:
        check_token(store, READER, "sms:send")
    assert scope.value.code == "insufficient_scope"
    assert "sms:send" in scope.value.detail
    assert check_token(store, ADMIN, "sms:send").name == "ops"


def test_from_config_accepts_objects_with_attributes() -> None:
    entry = SimpleNamespace(name="crm", hash=hash_token(SENDER), scopes=["sms:send"])
    assert TokenStore.from_config([entry]).authenticate(SENDER).name == "crm"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "a", "hash": "sha256:abc", "scopes": ["admin"]}], "64 lowercase hex"),
        ([{"name": "a", "hash": SENDER, "scopes": ["admin"]}], "never be configured"),
        ([{"name": "a", "hash": hash_token(SENDER).upper(), "scopes": ["admin"]}], "64 lowercase hex"),
        ([{"name": "a", "hash": hash_token(SENDER), "scopes": []}], "at least one scope"),
        ([{"name": "a", "hash": hash_token(SENDER), "scopes": ["sms:write"]}], "unknown scope(s) sms:write"),
        ([{"name": "", "hash": hash_token(SENDER), "scopes": ["admin"]}], "a name is required"),
        (
            [
                {"name": "a", "hash": hash_token(SENDER), "scopes": ["admin"]},
                {"name": "a", "hash": hash_token(READER), "scopes": ["admin"]},
            ],
            "token #2 ('a'): the name is used",
        ),
        (
            [
                {"name": "a", "hash": hash_token(SENDER), "scopes": ["admin"]},
                {"name": "b", "hash": hash_token(SENDER), "scopes": ["admin"]},
            ],
            "same hash",
        ),
    ],
)
def test_bad_configuration_is_refused_with_a_precise_message(entries: list[dict], message: str) -> None:
    with pytest.raises(TokenConfigError) as excinfo:
        TokenStore.from_config(entries)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("Bearer abc.DEF-123_~+/", "abc.DEF-123_~+/"),
        ("bearer abc", "abc"),
        ("BEARER  abc==", "abc=="),
    ],
)
def test_parse_bearer_accepts_rfc6750_tokens(header: str | None, token: str | None) -> None:
    assert parse_bearer(header) == token


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Basic dXNlcjpwYXNz", "Bearer scheme"),
        ("Bearer", "empty"),
        ("Bearer ", "empty"),
        ("Bearer abc def", "not a valid"),
        ("Bearer a=b", "not a valid"),
        ("Bearer " + "a" * 600, "not a valid"),
        ("Bearer tökén", "not a valid"),
    ],
)
def test_parse_bearer_rejects_malformed_headers(header: str, message: str) -> None:
    with pytest.raises(BearerHeaderError) as excinfo:
        parse_bearer(header)
    assert message in str(excinfo.value)
