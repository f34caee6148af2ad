"""A simulated HTTP SMS provider for tests, benchmarks and demos: a lean HTTP/1.1 server on trio + h11.

The server is its own (one task per connection, keep-alive and pipelining handled by h11's state machine)
rather than an ASGI app on hypercorn: the issue-4 benchmark shares 2 cores between the client and this
simulator, and hypercorn's per-request machinery cost about 400 us of CPU per message. The simulator object
is still an ASGI app too (``__call__``), for embedding it in another server.

It never imports gateway/, api/ or drivers/: request parsing, number checks, its rate limiter and the report
signature are written here independently, so one misreading of the scheme cannot hide on both sides.

Send API::

    POST /sms      JSON {"to", "text", "reference"?, "from"?, "callback_url"?} or the same as a form
    200 {"result": {"status": "ok", "id": "sim-000001"}}            accepted
    200 {"result": {"status": "error", "error": "destination blocked"}} number in ``blocked_prefixes``
    400 {"result": {"status": "error", "error": "..."}}              invalid number / missing text
    401                                                            ``api_key`` set and X-Api-Key differs
    429 + Retry-After                                              over the rate limit (token bucket)
    503                                                            injected failure (failure rate / fail_next)

Delivery reports: ``report_delay`` seconds after accepting a message with a callback URL (its own
``callback_url`` or the simulator's), it POSTs JSON ``{"id", "reference", "to", "status", "error_code",
"done_at"}`` with ``status`` = ``report_status`` (default "DELIVRD"; "UNDELIV" for numbers in
``undeliverable_prefixes``).
With a ``callback_secret`` the request is signed::

    X-Signature-Timestamp: <Unix time, integer seconds>
    X-Signature: sha256=<hex HMAC-SHA256(key = secret as UTF-8, message = "<timestamp>." + raw body)>

Control: Python methods and attributes for in-process tests (``sent``, ``requests``, ``reports``,
``max_in_flight``, ``set_failure_rate``, ``fail_next``, ``hang_next``, ...) and, for a simulator in another
process, ``GET /control/stats`` and ``POST /control/settings`` (JSON with any of latency, failure_rate,
rate_limit, rate_burst, report_status, report_delay).

    python -m simulators.http_provider --port 8099 --latency 0.05 --callback-secret s3cr3t-0123456789
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import hashlib
import hmac
import json
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote

import h11
import httpx
import trio

_E164 = re.compile(r"^\+?[1-9][0-9]{6,14}$")  # ITU-T E.164: at most 15 digits, no leading zero
_MAX_BODY = 1024 * 1024
_JSON = [(b"content-type", b"application/json")]
_RECEIVE_SIZE = 64 * 1024
log = logging.getLogger("simulators.http_provider")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class SimMessage:
    provider_id: str
    to: str
    text: str
    reference: str | None
    sender: str | None
    callback_url: str | None
    received_at: float  # trio time


@dataclass(frozen=True)
class SimRequest:
    path: str
    status: int
    started_at: float  # trio time when the request reached the app
    in_flight: int  # requests being handled at that moment, this one included


@dataclass(frozen=True)
class SimReport:
    provider_id: str
    url: str
    body: bytes
    headers: dict[str, str]
    response_status: int | None  # None when the callback failed to connect or timed out
    error: str | None


class _Bucket:
    """The simulator's own token bucket (independent of the gateway's), on trio's clock, non-blocking."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp: float | None = None

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def signature_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The simulator's report signature (see the module docstring)."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode("utf-8"), str(ts).encode("ascii") + b"." + body, hashlib.sha256)
    return {"X-Signature-Timestamp": str(ts), "X-Signature": "sha256=" + mac.hexdigest()}


class HttpProviderSimulator:
    def __init__(
        self,
        *,
        latency: float = 0.0,
        failure_rate: float = 0.0,
        rate_limit: float | None = None,
        rate_burst: int = 1,
        api_key: str | None = None,
        callback_url: str | None = None,
        callback_secret: str | None = None,
        report_delay: float = 0.5,
        report_status: str = "DELIVRD",
        undeliverable_prefixes: tuple[str, ...] = (),
        blocked_prefixes: tuple[str, ...] = (),
        seed: int | None = None,
        keep: int = 100_000,
    ):
        self.latency = latency
        self.failure_rate = failure_rate
        self.api_key = api_key
        self.callback_url = callback_url
        self.callback_secret = callback_secret
        self.report_delay = report_delay
        self.report_status = report_status
        self.undeliverable_prefixes = tuple(undeliverable_prefixes)
        self.blocked_prefixes = tuple(blocked_prefixes)
        self._bucket = _Bucket(rate_limit, rate_burst) if rate_limit else None
        self._rng = random.Random(seed)
        self.sent: deque[SimMessage] = deque(maxlen=keep)
        self.requests: deque[SimRequest] = deque(maxlen=keep)
        self.reports: deque[SimReport] = deque(maxlen=keep)
        self.counts = {"accepted": 0, "rejected": 0, "failed": 0, "rate_limited": 0, "reports": 0}
        self.in_flight = 0
        self.max_in_flight = 0
        self._fail_next: deque[int] = deque()
        self._hang_next: deque[float] = deque()
        self._next_id = 0
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None
        self._report_sent = trio.Event()

    # --- control -------------------------------------------------------------------------------------------
    def set_failure_rate(self, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("failure rate must be between 0 and 1")
        self.failure_rate = rate

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self.latency = seconds

    def set_rate_limit(self, per_second: float | None, burst: int = 1) -> None:
        self._bucket = _Bucket(per_second, burst) if per_second else None

    def set_report_status(self, status: str) -> None:
        self.report_status = status

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """The next ``count`` send requests answer ``status`` (after auth, before anything else)."""
        self._fail_next.extend([status] * count)

    def hang_next(self, count: int = 1, seconds: float = 3600.0) -> None:
        """The next ``count`` send requests wait ``seconds`` before being handled (client timeouts)."""
        self._hang_next.extend([seconds] * count)

    async def wait_reports(self, count: int) -> None:
        """Return once at least ``count`` report callbacks have been attempted."""
        while len(self.reports) < count:
            await self._report_sent.wait()

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "max_in_flight": self.max_in_flight, "in_flight": self.in_flight}

    # --- serving -------------------------------------------------------------------------------------------
    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``task_status.started(base_url)`` once listening."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound_host, bound_port = listeners[0].socket.getsockname()[:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        async with httpx.AsyncClient(timeout=10.0) as client, trio.open_nursery() as nursery:
            self._client, self._nursery = client, nursery
            try:
                nursery.start_soon(trio.serve_listeners, self._serve_connection, listeners)
                task_status.started(f"http://{url_host}:{bound_port}")
                await trio.sleep_forever()
            finally:
                nursery.cancel_scope.cancel()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        """One client connection: requests answered in order until either side closes (RFC 9112 sec. 9)."""
        connection = h11.Connection(h11.SERVER)
        async with stream:
            try:
                while True:
                    request = await self._read_request(connection, stream)
                    if request is None:
                        return
                    method, target, headers, body = request
                    if body is None:
                        payload = {"result": {"status": "error", "error": "body too large"}}
                        await _send_response(stream, connection, 413, payload, [(b"connection", b"close")])
                        return
                    path = unquote(target.split(b"?", 1)[0].decode("latin-1"))
                    status, payload, extra = await self._handle(method, path, headers, body)
                    await _send_response(stream, connection, status, payload, extra)
                    if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                        return  # MUST_CLOSE (HTTP/1.0, "Connection: close") or a half-read request
                    connection.start_next_cycle()
            except h11.RemoteProtocolError as exc:
                # Answer a malformed request while h11 still lets us (RFC 9112 sec. 2.2), then close.
                if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    payload = {"result": {"status": "error", "error": f"bad request: {exc}"}}
                    with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError):
                        await _send_response(
                            stream, connection, exc.error_status_hint, payload, [(b"connection", b"close")]
                        )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away mid-request or mid-answer

    @staticmethod
    async def _read_request(
        connection: h11.Connection, stream: trio.SocketStream
    ) -> tuple[str, bytes, dict[str, str], bytes | None] | None:
        """The next request as (method, target, lower-cased headers, body); body None when over _MAX_BODY;
        None when the client closed the connection between requests."""
        request: h11.Request | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                if connection.they_are_waiting_for_100_continue:
                    await stream.send_all(connection.send(h11.InformationalResponse(status_code=100)))
                connection.receive_data(await stream.receive_some(_RECEIVE_SIZE))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                chunks.append(event.data)
                if size > _MAX_BODY and request is not None:
                    return _request_parts(request, None)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return _request_parts(request, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                return None
            # h11.PAUSED cannot happen here: the previous cycle is always finished first.

    async def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        """Route one complete request and record it (shared by the h11 server and the ASGI entry point)."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        started, in_flight = trio.current_time(), self.in_flight
        try:
            try:
                status, payload, extra = await self._route(method, path, headers, body)
            except Exception:
                log.exception("simulator failed on %s %s", method, path)
                status, payload, extra = 500, {"result": {"status": "error", "error": "internal error"}}, []
        finally:
            self.in_flight -= 1
        # Recorded before answering: a client holding its answer always finds the request here.
        self.requests.append(SimRequest(path, status, started, in_flight))
        return status, payload, extra

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The same simulator as an ASGI application."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > _MAX_BODY:
                await _asgi_respond(send, 413, {"result": {"status": "error", "error": "body too large"}})
                return
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status, payload, extra = await self._handle(scope["method"], scope["path"], headers, body)
        await _asgi_respond(send, status, payload, extra)

    async def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        if path == "/sms" and method == "POST":
            return await self._send_sms(headers, body)
        if path == "/control/stats" and method == "GET":
            return 200, self.stats(), []
        if path == "/control/settings" and method == "POST":
            return self._settings(body)
        return 404, {"result": {"status": "error", "error": f"no route {method} {path}"}}, []

    def _settings(self, body: bytes) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        try:
            settings = json.loads(body)
            if "latency" in settings:
                self.set_latency(float(settings["latency"]))
            if "failure_rate" in settings:
                self.set_failure_rate(float(settings["failure_rate"]))
            if "rate_limit" in settings:
                self.set_rate_limit(settings["rate_limit"], int(settings.get("rate_burst", 1)))
            if "report_status" in settings:
                self.set_report_status(str(settings["report_status"]))
            if "report_delay" in settings:
                self.report_delay = float(settings["report_delay"])
        except (ValueError, TypeError, AttributeError) as exc:
            return 400, {"result": {"status": "error", "error": str(exc)}}, []
        return 200, self.stats(), []

    async def _send_sms(
        self, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        if self._hang_next:
            await trio.sleep(self._hang_next.popleft())
        if self.latency:
            await trio.sleep(self.latency)
        if self.api_key is not None and not hmac.compare_digest(
            headers.get("x-api-key", "").encode(), self.api_key.encode()
        ):
            return 401, {"result": {"status": "error", "error": "invalid api key"}}, []
        if self._bucket is not None:
            wait = self._bucket.take(trio.current_time())
            if wait > 0:
                self.counts["rate_limited"] += 1
                retry_after = [(b"retry-after", str(max(1, math.ceil(wait))).encode())]
                return 429, {"result": {"status": "error", "error": "rate limited"}}, retry_after
        if self._fail_next:
            self.counts["failed"] += 1
            return self._fail_next.popleft(), {"result": {"status": "error", "error": "injected failure"}}, []
        if self.failure_rate and self._rng.random() < self.failure_rate:
            self.counts["failed"] += 1
            return 503, {"result": {"status": "error", "error": "temporarily unavailable"}}, []
        fields = _parse_fields(headers.get("content-type", ""), body)
        if fields is None:
            self.counts["rejected"] += 1
            return 400, {"result": {"status": "error", "error": "body is neither JSON nor a form"}}, []
        to, text = str(fields.get("to") or ""), fields.get("text")
        if not _E164.fullmatch(to):
            self.counts["rejected"] += 1
            return 400, {"result": {"status": "error", "error": f"invalid destination number {to!r}"}}, []
        if not isinstance(text, str) or not text:
            self.counts["rejected"] += 1
            return 400, {"result": {"status": "error", "error": "text is missing"}}, []
        if self.blocked_prefixes and _has_prefix(to, self.blocked_prefixes):
            self.counts["rejected"] += 1
            return 200, {"result": {"status": "error", "error": "destination blocked"}}, []
        self._next_id += 1
        provider_id = f"sim-{self._next_id:06d}"
        message = SimMessage(
            provider_id=provider_id,
            to=to,
            text=text,
            reference=_str_or_none(fields.get("reference")),
            sender=_str_or_none(fields.get("from")),
            callback_url=_str_or_none(fields.get("callback_url")) or self.callback_url,
            received_at=trio.current_time(),
        )
        self.sent.append(message)
        self.counts["accepted"] += 1
        if message.callback_url and self._nursery is not None:
            self._nursery.start_soon(self._report, message)
        return 200, {"result": {"status": "ok", "id": provider_id}}, []

    async def _report(self, message: SimMessage) -> None:
        await trio.sleep(self.report_delay)
        undeliverable = self.undeliverable_prefixes and _has_prefix(message.to, self.undeliverable_prefixes)
        status = "UNDELIV" if undeliverable else self.report_status
        body = json.dumps(
            {
                "id": message.provider_id,
                "reference": message.reference,
                "to": message.to,
                "status": status,
                "error_code": "000" if status == "DELIVRD" else "001",
                "done_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.callback_secret:
            headers.update(signature_headers(self.callback_secret, body))
        assert self._client is not None and message.callback_url is not None
        response_status = error = None
        try:
            response = await self._client.post(message.callback_url, content=body, headers=headers)
            response_status = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.counts["reports"] += 1
        self.reports.append(
            SimReport(message.provider_id, message.callback_url, body, headers, response_status, error)
        )
        self._report_sent.set()
        self._report_sent = trio.Event()


def _has_prefix(number: str, prefixes: tuple[str, ...]) -> bool:
    return number.lstrip("+").startswith(tuple(p.lstrip("+") for p in prefixes))


def _str_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _parse_fields(content_type: str, body: bytes) -> dict[str, Any] | None:
    kind = content_type.split(";", 1)[0].strip().lower()
    try:
        if kind == "application/x-www-form-urlencoded":
            return {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return document if isinstance(document, dict) else None


@cache
def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _request_parts(
    request: h11.Request, body: bytes | None
) -> tuple[str, bytes, dict[str, str], bytes | None]:
    # h11 gives header names lower-cased; a repeated header keeps its last value, as the ASGI path did.
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers}
    return request.method.decode("ascii"), request.target, headers, body


class _DateHeader:
    """The Date header an origin server with a clock sends (RFC 9110 sec. 6.6.1), formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, email.utils.formatdate(now, usegmt=True).encode("ascii")
        return self._value


_date = _DateHeader()


async def _send_response(
    stream: trio.SocketStream,
    connection: h11.Connection,
    status: int,
    payload: Any,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """A whole JSON answer in one write (one TCP segment for small answers; TCP_NODELAY is trio's default)."""
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    head = [
        *_JSON,
        (b"content-length", str(len(body)).encode()),
        (b"date", _date.value()),
        (b"server", b"hcrm-sim"),
        *headers,
    ]
    data = connection.send(h11.Response(status_code=status, headers=head, reason=_reason(status)))
    data += connection.send(h11.Data(data=body))
    data += connection.send(h11.EndOfMessage())
    await stream.send_all(data)


async def _asgi_respond(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.http_provider", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="fraction answered 503")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second (429 above)")
    parser.add_argument("--rate-burst", type=int, default=1)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--callback-url", default=None, help="default delivery-report URL")
    parser.add_argument("--callback-secret", default=None, help="sign delivery reports with HMAC-SHA256")
    parser.add_argument("--report-delay", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    simulator = HttpProviderSimulator(
        latency=args.latency,
        failure_rate=args.failure_rate,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        api_key=args.api_key,
        callback_url=args.callback_url,
        callback_secret=args.callback_secret,
        report_delay=args.report_delay,
        seed=args.seed,
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(simulator.serve, args.host, args.port))
            print(f"listening on {url}", flush=True)

    try:
        trio.run(run)
    except* KeyboardInterrupt:  # trio delivers Ctrl-C wrapped in an exception group
        pass


if __name__ == "__main__":
    main()
