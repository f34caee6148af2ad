"""HTTP SMS provider route: send one SMS through a provider's HTTP API described entirely by configuration.

Layers, like the modem driver: ``build_request`` (values -> method, URL, headers, body bytes) and
``classify_response`` (status, headers, body -> accepted / temporary / permanent, provider id) are pure and
tested without a network; ``HttpSmsRoute`` is the thin trio part around them (httpx.AsyncClient over
gateway/sms/http_transport.py, a trio.CapacityLimiter for concurrency, a token bucket on trio's clock for the
rate, a cancel scope per attempt, retries with exponential backoff and jitter).

Outcome rules (``classify_response``):
  * status in ``success.status_codes`` and every configured body rule holds -> accepted, provider id
    extracted by ``provider_id`` (a missing id is reported in ``error`` but the message stays accepted:
    sending it again would duplicate it);
  * status in ``success.status_codes`` but a body rule fails, or the body cannot be read as the rule needs
    -> permanent (the provider answered and refused; we cannot tell a retry would not duplicate);
  * 5xx, a status in ``retry.statuses`` (default 429), a per-attempt timeout or a connection error ->
    temporary: retried up to ``retry.attempts`` in total, then returned as not accepted, not permanent
    (the caller requeues the message later);
  * any other status (4xx, 3xx, unexpected 2xx) -> permanent, never retried.

A timeout or a connection dropped after the request left may mean the provider did accept it: a retry can
then duplicate the SMS (at-least-once, like the modem path). Put ``{message_id}`` in the request when the
provider de-duplicates on a client reference.

Placeholders (same ``{name}`` / ``{{`` syntax as SMS templates): ``{to}`` (E.164 with "+"), ``{to_digits}``
(without "+"), ``{text}``, ``{message_id}``, ``{sender}``, ``{callback_url}``, ``{provider}``, plus any key of
``variables`` (static values such as an account id). In the URL path and query string values are
percent-encoded; in headers, form fields and JSON string values they are inserted as they are.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode, urlsplit
from urllib.request import getproxies

import httpx
import structlog
import trio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.sms.http_transport import H11Transport
from gateway.sms.templates import MissingVariables, TemplateError, parse_placeholders, substitute

log = structlog.get_logger("sms.http_provider")

BUILTIN_PLACEHOLDERS = ("to", "to_digits", "text", "message_id", "sender", "callback_url", "provider")
_ERROR_BODY_CHARS = 200  # how much of a provider's answer an error message quotes


# --- JSON path subset --------------------------------------------------------------------------------------
class JsonPathError(ValueError):
    pass


_MISSING = object()
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(-?\d+)\]|\[\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*')\s*\]")
_COMPARISON = re.compile(r"^(?P<path>.*?)\s*(?P<op>==|!=)\s*(?P<literal>.+)$", re.S)


@dataclass(frozen=True)
class JsonPath:
    """``$.a.b[0]["c-d"]`` optionally followed by ``== <JSON literal>`` or ``!= <JSON literal>``.

    Only child names and list indexes: no wildcards, filters or recursive descent. Enough for the provider
    answers and delivery reports seen in practice, small enough to reason about.
    """

    expression: str
    steps: tuple[str | int, ...]
    op: str | None = None
    literal: Any = None

    @classmethod
    def parse(cls, expression: str) -> JsonPath:
        text = expression.strip()
        op = literal = None
        m = _COMPARISON.match(text)
        if m:
            text, op = m.group("path").strip(), m.group("op")
            try:
                literal = json.loads(m.group("literal"))
            except json.JSONDecodeError:
                raise JsonPathError(
                    f'{expression!r}: the value after {op} must be a JSON literal, e.g. "ok", 0, true'
                ) from None
        if not text.startswith("$"):
            raise JsonPathError(f"{expression!r}: a JSON path starts with '$', e.g. $.result.status")
        steps: list[str | int] = []
        pos = 1
        while pos < len(text):
            seg = _SEGMENT.match(text, pos)
            if not seg:
                raise JsonPathError(
                    f"{expression!r}: cannot read the path at position {pos} ({text[pos : pos + 10]!r}); "
                    'use .name, [index] or ["name"]'
                )
            if seg.group(1) is not None:
                steps.append(seg.group(1))
            elif seg.group(2) is not None:
                steps.append(int(seg.group(2)))
            else:
                quoted = seg.group(3)
                steps.append(json.loads(quoted) if quoted[0] == '"' else quoted[1:-1])
            pos = seg.end()
        return cls(expression=expression, steps=tuple(steps), op=op, literal=literal)

    def extract(self, document: Any) -> Any:
        """The value at the path, or ``MISSING``."""
        node = document
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(node, list) or not -len(node) <= step < len(node):
                    return _MISSING
                node = node[step]
            else:
                if not isinstance(node, Mapping) or step not in node:
                    return _MISSING
                node = node[step]
        return node

    def holds(self, document: Any) -> bool:
        """With a comparison: whether it is true. Without: whether the value exists and is not null/false."""
        value = self.extract(document)
        if self.op is None:
            return value is not _MISSING and value is not None and value is not False
        equal = value is not _MISSING and _json_equal(value, self.literal)
        return equal if self.op == "==" else not equal


MISSING = _MISSING


@functools.lru_cache(maxsize=256)
def compiled_path(expression: str) -> JsonPath:
    """JsonPath.parse, cached: rules are parsed once per configured expression, not per response."""
    return JsonPath.parse(expression)


def _json_equal(a: Any, b: Any) -> bool:
    # JSON has no bool/int distinction problem in the spec, Python does: true must not equal 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


# --- configuration ------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(v: str | None) -> str | None:
    if v is not None:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
    return v


def _check_path(v: str | None) -> str | None:
    if v is not None:
        JsonPath.parse(v)  # JsonPathError is a ValueError: pydantic reports it against the field
    return v


class SuccessRule(_Strict):
    status_codes: frozenset[Annotated[int, Field(ge=100, le=599)]] = frozenset({200, 201, 202})
    json_path: str | None = Field(None, description='e.g. $.result.status == "ok"')
    regex: str | None = Field(None, description="searched in the response body text")

    @field_validator("json_path")
    @classmethod
    def _valid_path(cls, v: str | None) -> str | None:
        return _check_path(v)

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, v: str | None) -> str | None:
        return _check_regex(v)


class ProviderIdRule(_Strict):
    json_path: str | None = Field(None, description="e.g. $.messages[0].id")
    regex: str | None = Field(None, description="group 'id', else group 1, else the whole match")

    @field_validator("json_path")
    @classmethod
    def _valid_path(cls, v: str | None) -> str | None:
        return _check_path(v)

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, v: str | None) -> str | None:
        return _check_regex(v)

    @model_validator(mode="after")
    def _exactly_one(self) -> ProviderIdRule:
        if (self.json_path is None) == (self.regex is None):
            raise ValueError("give exactly one of json_path or regex")
        return self


class RetryPolicy(_Strict):
    attempts: Annotated[int, Field(ge=1, le=20)] = 4  # in total, the first included
    backoff_initial_s: Annotated[float, Field(ge=0, le=600)] = 0.5
    backoff_max_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    multiplier: Annotated[float, Field(ge=1, le=10)] = 2.0
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.5  # fraction of each delay that is randomised away
    statuses: frozenset[Annotated[int, Field(ge=400, le=499)]] = frozenset({429})  # 4xx retried like 5xx
    honor_retry_after: bool = True  # wait at least Retry-After (seconds form), capped at backoff_max_s


class RateLimit(_Strict):
    per_second: Annotated[float, Field(gt=0, le=100_000)]
    burst: Annotated[int, Field(ge=1, le=100_000)] = 1


class HttpProviderConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
    method: Literal["GET", "POST", "PUT", "PATCH"] = "POST"
    url: str
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    body_format: Literal["json", "form", "none"] = "json"
    body: dict[str, Any] = {}
    variables: dict[str, str] = {}
    sender: str | None = None
    callback_url: str | None = None
    success: SuccessRule = SuccessRule()
    provider_id: ProviderIdRule | None = None
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 8
    rate_limit: RateLimit | None = None
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0  # per attempt, connect to last body byte
    retry: RetryPolicy = RetryPolicy()

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        if "{" in parts.netloc:
            raise ValueError("placeholders are not allowed in the host part of the URL")
        return v

    @field_validator("headers")
    @classmethod
    def _header_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):  # RFC 9110 §5.6.2 token
                raise ValueError(f"{name!r} is not a valid header name")
        return v

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if name in BUILTIN_PLACEHOLDERS:
                raise ValueError(f"variable {name!r} would hide the built-in placeholder {{{name}}}")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"variable name {name!r}: letters, digits and '_', not a leading digit")
        return v

    @model_validator(mode="after")
    def _placeholders_known(self) -> HttpProviderConfig:
        known = set(BUILTIN_PLACEHOLDERS) | set(self.variables)
        problems = []
        for where, text in _template_strings(self):
            try:
                names = parse_placeholders(text)
            except TemplateError as exc:
                problems.append(f"{where}: {exc}")
                continue
            unknown = [n for n in names if n not in known]
            if unknown:
                problems.append(
                    f"{where}: unknown placeholder {', '.join('{' + n + '}' for n in unknown)} "
                    f"(known: {', '.join(sorted(known))})"
                )
        if self.body and self.body_format == "none":
            problems.append("body: a body is configured but body_format is 'none'")
        if self.body_format == "form":
            nested = [k for k, v in self.body.items() if isinstance(v, (dict, list))]
            if nested:
                problems.append(f"body: form fields must be plain values, not objects: {', '.join(nested)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _template_strings(config: HttpProviderConfig) -> list[tuple[str, str]]:
    out = [("url", config.url)]
    out += [(f"headers.{k}", v) for k, v in config.headers.items()]
    out += [(f"query.{k}", v) for k, v in config.query.items()]

    def walk(node: Any, where: str) -> None:
        if isinstance(node, str):
            out.append((where, node))
        elif isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(config.body, "body")
    return out


# --- pure request building and response classification -------------------------------------------
class RequestBuildError(ValueError):
    """The configured request cannot be built for this message (a configuration or input problem)."""


@dataclass(frozen=True)
class PreparedRequest:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None


def placeholder_values(
    config: HttpProviderConfig,
    *,
    to: str,
    text: str,
    message_id: str,
    sender: str | None = None,
    callback_url: str | None = None,
) -> dict[str, str]:
    values = dict(config.variables)
    values.update(
        to=to,
        to_digits=to.lstrip("+"),
        text=text,
        message_id=message_id,
        provider=config.name,
    )
    chosen_sender = sender if sender is not None else config.sender
    if chosen_sender is not None:
        values["sender"] = chosen_sender
    chosen_callback = callback_url if callback_url is not None else config.callback_url
    if chosen_callback is not None:
        values["callback_url"] = chosen_callback
    return values


_WHOLE_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@functools.lru_cache(maxsize=1024)
def _shape(text: str) -> str | None:
    """The empty string for text without braces (it renders as itself), the name when the text is exactly one
    ``{name}``, else None."""
    if "{" not in text and "}" not in text:
        return ""
    m = _WHOLE_PLACEHOLDER.fullmatch(text)
    return m.group(1) if m else None


def _fill(text: str, values: Mapping[str, str], where: str) -> str:
    # Fast paths for the two common shapes, with substitute()'s result; anything else goes through it.
    shape = _shape(text)
    if shape == "":
        return text
    if shape is not None:
        value = values.get(shape)
        if isinstance(value, str) and value.strip():  # substitute() treats a blank value as missing
            return value
    try:
        return substitute(text, values).text
    except MissingVariables as exc:
        raise RequestBuildError(f"{where}: no value for {', '.join(exc.missing)}") from None


def build_request(config: HttpProviderConfig, values: Mapping[str, str]) -> PreparedRequest:
    """Method, URL, headers and body bytes for one message. Raises RequestBuildError."""
    url_values = {k: quote(values[k], safe="") for k in parse_placeholders(config.url) if k in values}
    url = _fill(config.url, url_values, "url")
    if config.query:
        query = {k: _fill(v, values, f"query.{k}") for k, v in config.query.items()}
        url += ("&" if urlsplit(url).query else "?") + urlencode(query, quote_via=quote)
    headers: dict[str, str] = {}
    for name, template in config.headers.items():
        value = _fill(template, values, f"headers.{name}")
        if not value.isascii() or any(c in value for c in "\r\n\0"):
            raise RequestBuildError(
                f"headers.{name}: the value must be ASCII without line breaks after substitution"
            )
        headers[name] = value
    content: bytes | None = None
    if config.body_format == "json":
        content = json.dumps(_fill_json(config.body, values, "body"), ensure_ascii=False).encode("utf-8")
        headers.setdefault("Content-Type", "application/json; charset=utf-8")
    elif config.body_format == "form":
        fields = {
            k: _fill(v, values, f"body.{k}") if isinstance(v, str) else _form_scalar(v)
            for k, v in config.body.items()
        }
        content = urlencode(fields, quote_via=quote).encode("ascii")  # UTF-8 percent-encoded (WHATWG)
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return PreparedRequest(method=config.method, url=url, headers=headers, content=content)


def _form_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def _fill_json(node: Any, values: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return _fill(node, values, where)
    if isinstance(node, Mapping):
        return {k: _fill_json(v, values, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_fill_json(v, values, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


Verdict = Literal["accepted", "temporary", "permanent"]


@dataclass(frozen=True)
class Classification:
    verdict: Verdict
    provider_id: str | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds, from a Retry-After header


def _snippet(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= _ERROR_BODY_CHARS else text[:_ERROR_BODY_CHARS] + "…"


def _retry_after(headers: Mapping[str, str]) -> float | None:
    # RFC 9110 §10.2.3: delay-seconds or an HTTP-date. Only the seconds form is used; a date needs a
    # trustworthy wall clock on both sides and falls back to our own backoff.
    raw = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if raw is not None and raw.strip().isdigit():
        return float(raw.strip())
    return None


def classify_response(
    config: HttpProviderConfig, status_code: int, headers: Mapping[str, str], body: bytes
) -> Classification:
    """Decide what a provider's answer means; see the module docstring for the rules."""
    if status_code in config.success.status_codes:
        document: Any = _MISSING
        needs_json = config.success.json_path is not None or (
            config.provider_id is not None and config.provider_id.json_path is not None
        )
        if needs_json:
            try:
                document = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return Classification(
                    "permanent", error=f"HTTP {status_code} but the body is not JSON: {_snippet(body)}"
                )
        rule = config.success
        if rule.json_path is not None and not compiled_path(rule.json_path).holds(document):
            return Classification(
                "permanent",
                error=f"HTTP {status_code} but {rule.json_path} does not hold: {_snippet(body)}",
            )
        text = body.decode("utf-8", "replace")
        if rule.regex is not None and not re.search(rule.regex, text):
            return Classification(
                "permanent",
                error=f"HTTP {status_code} but the body does not match {rule.regex!r}: {_snippet(body)}",
            )
        if config.provider_id is None:
            return Classification("accepted")
        provider_id = _extract_id(config.provider_id, document, text)
        if provider_id is None:
            where = config.provider_id.json_path or config.provider_id.regex
            return Classification("accepted", error=f"accepted, but no provider id found by {where}")
        return Classification("accepted", provider_id=provider_id)
    if status_code >= 500 or status_code in config.retry.statuses:
        return Classification(
            "temporary", error=f"HTTP {status_code}: {_snippet(body)}", retry_after=_retry_after(headers)
        )
    return Classification("permanent", error=f"HTTP {status_code}: {_snippet(body)}")


def _extract_id(rule: ProviderIdRule, document: Any, text: str) -> str | None:
    if rule.json_path is not None:
        value = compiled_path(rule.json_path).extract(document)
        if value is _MISSING or value is None or isinstance(value, (dict, list, bool)) or value == "":
            return None
        return str(value)
    m = re.search(rule.regex or "", text)
    if not m:
        return None
    if "id" in m.re.groupindex:
        return m.group("id")
    return m.group(1) if m.re.groups else m.group(0)


def backoff_delay(policy: RetryPolicy, retry_number: int, rng: random.Random) -> float:
    """Delay before retry ``retry_number`` (1-based): initial x multiplier^(n-1), capped, minus up to
    ``jitter`` x delay at random so that many messages failing together do not retry together."""
    base = min(policy.backoff_max_s, policy.backoff_initial_s * policy.multiplier ** (retry_number - 1))
    return base * (1.0 - policy.jitter * rng.random())


# --- trio part ----------------------------------------------------------------------------------------
class TokenBucket:
    """Token bucket on trio's clock: ``rate`` tokens per second, at most ``burst`` stored, full at first use.

    Waiters are served in arrival order (trio.Lock is fair). Waiting is one computed ``sleep_until``, so
    MockClock tests see exact times.
    """

    def __init__(self, rate: float, burst: int = 1):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated: float | None = None
        self._lock = trio.Lock()

    def _refill(self, now: float) -> None:
        if self._updated is None:
            self._updated = now
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self) -> None:
        async with self._lock:
            self._refill(trio.current_time())
            if self._tokens < 1:
                await trio.sleep_until(trio.current_time() + (1 - self._tokens) / self.rate)
                self._refill(trio.current_time())
            self._tokens -= 1


def _proxied(url: str) -> bool:
    """Whether proxy environment variables cover ``url``'s scheme (as httpx reads them: http, https, all)."""
    proxies = getproxies()
    return bool(proxies.get("all") or proxies.get(urlsplit(url).scheme))


def _static_url(config: HttpProviderConfig) -> tuple[str, httpx.URL] | None:
    """The request URL as text and as a parsed httpx.URL when it is the same for every message (no
    placeholders, no query parameters): httpx then does not parse it again for each request."""
    if config.query or parse_placeholders(config.url):
        return None
    text = substitute(config.url, {}).text
    try:
        return text, httpx.URL(text)
    except httpx.InvalidURL:
        return None  # reported per attempt, as for any URL httpx refuses


@dataclass(frozen=True)
class ProviderResult:
    accepted: bool
    provider_id: str | None
    status_code: int | None  # of the last attempt; None when no HTTP answer came
    permanent: bool  # not accepted and not worth retrying later
    error: str | None
    attempts: int = 1


class HttpSmsRoute:
    """Sends SMS through one configured HTTP provider. Use as ``async with HttpSmsRoute(config) as route``.

    One ``httpx.AsyncClient`` over ``H11Transport`` (gateway/sms/http_transport.py): h11 on trio streams with
    a keep-alive pool of up to ``concurrency`` connections. It replaced httpx's default transport (httpcore),
    which cost O(connections x queued requests) per request in its pool (encode/httpcore PR #1035, httpx
    #3215) and made the route spread its connections over several small clients ("lanes", no longer
    needed); the route went from 500-540 to 220-250 us of CPU per message in bench/bench_http_provider.py.
    When an HTTP(S)_PROXY/ALL_PROXY environment variable is set, the route keeps httpx's default transport,
    which applies the proxy settings (httpx ignores them when given a transport). ``transport`` replaces the
    network in tests (httpx.MockTransport); ``rng`` makes the jitter reproducible.
    """

    def __init__(
        self,
        config: HttpProviderConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ):
        self.config = config
        tls = httpx.create_ssl_context()
        if transport is None and not _proxied(config.url):
            transport = H11Transport(ssl_context=tls, max_idle=config.concurrency)
        self._client = httpx.AsyncClient(
            timeout=None,  # the per-attempt cancel scope is the one timeout
            limits=httpx.Limits(
                max_connections=config.concurrency, max_keepalive_connections=config.concurrency
            ),  # used only by httpx's own transport (proxies)
            verify=tls,
            transport=transport,
        )
        self._static_url = _static_url(config)
        self._limiter = trio.CapacityLimiter(config.concurrency)
        self._bucket = (
            TokenBucket(config.rate_limit.per_second, config.rate_limit.burst) if config.rate_limit else None
        )
        self._rng = rng or random.Random()

    @property
    def name(self) -> str:
        return self.config.name

    async def __aenter__(self) -> HttpSmsRoute:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(
        self,
        to: str,
        text: str,
        *,
        message_id: str,
        sender: str | None = None,
        callback_url: str | None = None,
    ) -> ProviderResult:
        """Send one message; never raises for provider or network trouble (see ProviderResult)."""
        values = placeholder_values(
            self.config, to=to, text=text, message_id=message_id, sender=sender, callback_url=callback_url
        )
        try:
            request = build_request(self.config, values)
        except RequestBuildError as exc:
            return ProviderResult(False, None, None, True, f"provider {self.name}: {exc}", attempts=0)

        def mlog(level: str, event: str, **fields: Any) -> None:  # bound lazily: the happy path logs nothing
            getattr(log, level)(event, provider=self.name, message_id=message_id, to=to, **fields)

        policy = self.config.retry
        status_code: int | None = None
        error: str | None = None
        for attempt in range(1, policy.attempts + 1):
            status_code, outcome = await self._attempt(request)
            error = outcome.error
            if outcome.verdict == "accepted":
                if outcome.error:
                    mlog("warning", "provider id missing", status=status_code, error=outcome.error)
                return ProviderResult(True, outcome.provider_id, status_code, False, outcome.error, attempt)
            if outcome.verdict == "permanent":
                mlog("info", "provider refused", status=status_code, error=error, attempt=attempt)
                return ProviderResult(False, None, status_code, True, error, attempt)
            if attempt == policy.attempts:
                break
            delay = backoff_delay(policy, attempt, self._rng)
            if policy.honor_retry_after and outcome.retry_after is not None:
                delay = max(delay, min(outcome.retry_after, policy.backoff_max_s))
            mlog(
                "info",
                "provider attempt failed, retrying",
                status=status_code,
                error=error,
                attempt=attempt,
                delay_s=round(delay, 3),
            )
            await trio.sleep(delay)
        mlog("warning", "provider gave up", status=status_code, error=error, attempts=policy.attempts)
        gave_up = f"gave up after {policy.attempts} attempts: {error}"
        return ProviderResult(False, None, status_code, False, gave_up, policy.attempts)

    async def _attempt(self, request: PreparedRequest) -> tuple[int | None, Classification]:
        static = self._static_url
        url: str | httpx.URL = static[1] if static is not None and request.url == static[0] else request.url
        async with self._limiter:
            if self._bucket is not None:
                await self._bucket.acquire()
            try:
                with trio.fail_after(self.config.timeout_s):
                    response = await self._client.request(
                        request.method, url, headers=request.headers, content=request.content
                    )
            except trio.TooSlowError:
                return None, Classification("temporary", error=f"no answer in {self.config.timeout_s:g} s")
            except httpx.UnsupportedProtocol as exc:
                return None, Classification("permanent", error=f"unsupported URL: {exc}")
            except httpx.TransportError as exc:  # connect/read/write errors, dropped connections
                detail = str(exc) or "connection failed"
                return None, Classification("temporary", error=f"{type(exc).__name__}: {detail}")
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                # E.g. an undecodable Content-Encoding: the provider answered, perhaps accepting the message,
                # so a retry could duplicate it.
                return None, Classification("permanent", error=f"{type(exc).__name__}: {exc}")
        return response.status_code, classify_response(
            self.config, response.status_code, response.headers, response.content
        )
