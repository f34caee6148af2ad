"""Bearer-token authentication with scopes (RFC 6750).

Tokens are configured only as ``sha256:<hex>`` digests, so the configuration file never holds a usable secret.
A SHA-256 digest without salt or stretching is enough because tokens are high-entropy random strings
(``generate_token`` gives 256 bits), not passwords a person chose: a dictionary attack has nothing to guess.
Every presented token is compared against every configured digest with ``hmac.compare_digest`` and without an
early exit, so the response time does not tell which digest (or how much of it) matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from quart import g, request

from api.problems import ApiProblem
from api.services import api_state

SCOPE_SMS_SEND = "sms:send"
SCOPE_SMS_READ = "sms:read"
SCOPE_EVENTS_READ = "events:read"
SCOPE_ADMIN = "admin"
SCOPE_CALLS_WRITE = "calls:write"  # voice lines (issue 5)
SCOPE_CALLS_READ = "calls:read"
SCOPE_RECORDINGS_READ = "recordings:read"
SCOPE_IVR_WRITE = "ivr:write"  # IVR tree revisions (issue 6)
SCOPE_IVR_READ = "ivr:read"
SCOPES = frozenset({SCOPE_SMS_SEND, SCOPE_SMS_READ, SCOPE_EVENTS_READ, SCOPE_ADMIN,
                    SCOPE_CALLS_WRITE, SCOPE_CALLS_READ, SCOPE_RECORDINGS_READ,
                    SCOPE_IVR_WRITE, SCOPE_IVR_READ})

_HASH_PREFIX = "sha256:"
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN_RE = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
MAX_TOKEN_LENGTH = 512


class TokenConfigError(ValueError):
    """The configured token list is unusable; the message names the entry and the problem."""


def hash_token(token: str) -> str:
    """The configuration form of a token: ``sha256:`` + the lowercase hex SHA-256 of its UTF-8 bytes."""
    return _HASH_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_token() -> str:
    """A new random token with 256 bits of entropy (URL-safe base64, 43 characters)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who made a request: the configured token's name and the scopes it was granted."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """``admin`` implies every scope."""
        return scope in self.scopes or SCOPE_ADMIN in self.scopes


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    digest: bytes


class BearerHeaderError(ValueError):
    """The Authorization header is present but is not a well-formed ``Bearer <token>``."""


def parse_bearer(header: str | None) -> str | None:
    """The token from an ``Authorization: Bearer <token>`` header, or None when no header was sent.

    Raises BearerHeaderError for another scheme, an empty token or characters outside RFC 6750 b64token.
    """
    if header is None or header.strip() == "":
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise BearerHeaderError("the Authorization header must use the Bearer scheme")
    token = token.strip()
    if not token:
        raise BearerHeaderError("the Bearer token is empty")
    if len(token) > MAX_TOKEN_LENGTH or not _B64TOKEN_RE.match(token):
        raise BearerHeaderError("the Bearer token is not a valid RFC 6750 token")
    return token


class TokenStore:
    """The configured tokens; ``authenticate`` turns a presented token into a Principal or None."""

    def __init__(self, entries: Iterable[tuple[str, str, Iterable[str]]] = ()) -> None:
        self._entries: list[_Entry] = []
        names: set[str] = set()
        digests: set[str] = set()
        for position, (name, digest, scopes) in enumerate(entries):
            where = f"token #{position + 1} ({name!r})" if name else f"token #{position + 1}"
            if not isinstance(name, str) or not name:
                raise TokenConfigError(f"{where}: a name is required")
            if name in names:
                raise TokenConfigError(f"{where}: the name is used by another token")
            if not isinstance(digest, str) or not _HASH_RE.match(digest):
                raise TokenConfigError(
                    f"{where}: hash must be 'sha256:' followed by 64 lowercase hex digits "
                    "(see `hash_token`); the token itself must never be configured"
                )
            if digest in digests:
                raise TokenConfigError(f"{where}: the same hash is configured for another token")
            scope_set = frozenset(scopes)
            if not scope_set:
                raise TokenConfigError(f"{where}: at least one scope is required")
            unknown = sorted(scope_set - SCOPES)
            if unknown:
                raise TokenConfigError(
                    f"{where}: unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(SCOPES))}"
                )
            names.add(name)
            digests.add(digest)
            self._entries.append(
                _Entry(Principal(name, scope_set), bytes.fromhex(digest.removeprefix(_HASH_PREFIX)))
            )

    @classmethod
    def from_config(cls, items: Iterable[Mapping[str, Any] | Any]) -> TokenStore:
        """Build from ``[{name, hash, scopes}, ...]`` (dicts or objects with those attributes)."""
        triples = []
        for item in items:
            if isinstance(item, Mapping):
                triples.append((item.get("name"), item.get("hash"), item.get("scopes") or ()))
            else:
                triples.append((item.name, item.hash, item.scopes))
        return cls(triples)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        """The principal whose digest matches ``token``; constant time in the token and the digests."""
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: Principal | None = None
        for entry in self._entries:  # no early exit: every digest is compared
            if hmac.compare_digest(presented, entry.digest):
                found = entry.principal
        return found


# --- request-time checks (RFC 6750 §3: WWW-Authenticate challenges and error codes) ---

REALM = "hcrm-gateway"
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def bearer_challenge(error: str | None = None, scope: str | None = None) -> str:
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


class AuthFailure(Exception):
    """Why a token was refused; ``code`` is missing_token, invalid_token or insufficient_scope."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def check_token(tokens: TokenStore, token: str | None, scope: str) -> Principal:
    """The principal for ``token`` if it is valid and carries ``scope``; AuthFailure otherwise."""
    if token is None:
        raise AuthFailure("missing_token", "send the header 'Authorization: Bearer <token>'")
    principal = tokens.authenticate(token)
    if principal is None:
        raise AuthFailure("invalid_token", "the token is not valid")
    if not principal.allows(scope):
        raise AuthFailure("insufficient_scope", f"this operation needs the scope {scope!r}")
    return principal


def authorize(scope: str) -> Principal:
    """Authenticate the current HTTP request and check ``scope``; raises the matching ApiProblem."""
    principal = authenticate_header(api_state().services.tokens, request.headers.get("Authorization"), scope)
    g.principal = principal
    return principal


def authenticate_header(tokens: TokenStore, authorization: str | None, scope: str) -> Principal:
    """The principal for an ``Authorization`` header value, or the matching 401/403 ApiProblem (with its
    ``WWW-Authenticate`` challenge, RFC 6750 §3). Framework-free: the submit fast path uses it too."""
    try:
        return check_token(tokens, parse_bearer(authorization), scope)
    except BearerHeaderError as exc:
        raise ApiProblem(
            "invalid_token", str(exc), headers={"WWW-Authenticate": bearer_challenge("invalid_token")}
        ) from None
    except AuthFailure as exc:
        challenge = {
            "missing_token": bearer_challenge(),
            "invalid_token": bearer_challenge("invalid_token"),
            "insufficient_scope": bearer_challenge("insufficient_scope", scope),
        }[exc.code]
        raise ApiProblem(exc.code, exc.detail, headers={"WWW-Authenticate": challenge}) from None


def requires_scope(scope: str) -> Callable[[F], F]:
    """Route decorator: authenticate and check ``scope`` before the handler runs (read by api/openapi.py)."""

    def decorate(handler: F) -> F:
        @wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            authorize(scope)
            return await handler(*args, **kwargs)

        wrapper.required_scope = scope  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
