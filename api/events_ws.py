"""WebSocket /v1/events: the live event stream, with resume from the durable journal.

Protocol (docs/api.md has the client view):
1. The server accepts the upgrade, then authenticates: ``Authorization: Bearer`` on the upgrade request, or
   else a first message ``{"type":"auth","token":"..."}`` within ``ws_auth_timeout`` (5 s). Tokens are never
   taken from the URL (proxies and access logs keep URLs). Scope ``events:read``.
2. Query: ``since=EPOCH:SEQ`` resumes after that event (journal replay, then live, no gap and no duplicate)
   or yields one ``resync_required`` frame when the journal cannot; ``types=sms.*,modem.state_changed``
   filters by exact type or ``prefix.*``.
3. Server frames: ``hello`` {epoch, seq = latest seq at subscription}, then each Event's payload bytes as they
   were serialised once by the bus, ``resync_required``, and ``{"type":"ping"}`` every ``ws_ping_interval``.
   A client may send ``{"type":"ping"}``; the server answers ``{"type":"pong"}``.
4. Close codes: 4001 no token, 4003 bad token or missing scope, 4000 bad query parameter, 4008 slow consumer
   (its bounded queue overflowed: reconnect with ``since``), 1001 server shutting down, 1011 internal error.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog
import trio
from quart import Blueprint, g, websocket

from api.auth import SCOPE_EVENTS_READ, AuthFailure, BearerHeaderError, Principal, check_token, parse_bearer
from api.services import ApiState, api_state
from gateway.events import EVENT_TYPES, Event

log = structlog.get_logger("api.events")

blueprint = Blueprint("events", __name__)

# Private-use close codes (RFC 6455 §7.4.2: 4000-4999). 4001/4003 follow wazo-websocketd's numbering.
CLOSE_BAD_REQUEST = 4000
CLOSE_NO_TOKEN = 4001
CLOSE_FORBIDDEN = 4003
CLOSE_SLOW_CONSUMER = 4008
CLOSE_GOING_AWAY = 1001  # RFC 6455 §7.4.1
CLOSE_INTERNAL_ERROR = 1011  # RFC 6455 §7.4.1
_QUERY_PARAMS = frozenset({"since", "types"})
_TOKEN_PARAMS = frozenset({"token", "access_token", "auth", "authorization", "api_key"})


class BadQuery(ValueError):
    pass


def latest_seq(bus: Any) -> int:
    return bus.last_seq


def parse_since(text: str) -> tuple[str, int]:
    """``EPOCH:SEQ`` -> (epoch, seq). The epoch is split off at the last colon."""
    epoch, sep, seq_text = text.rpartition(":")
    if not sep or not epoch or not seq_text.isdigit() or len(seq_text) > 18:
        raise BadQuery("since must be EPOCH:SEQ as in an event's id, e.g. since=3f2a...:42")
    return epoch, int(seq_text)


def parse_types(text: str, known: frozenset[str] = EVENT_TYPES) -> set[str]:
    """``sms.*,modem.state_changed`` -> the matching known event types; unknown patterns are errors."""
    selected: set[str] = set()
    for pattern in (p.strip() for p in text.split(",")):
        if not pattern:
            continue
        if pattern.endswith(".*"):
            prefix = pattern[:-1]
            matches = {t for t in known if t.startswith(prefix)}
        elif pattern == "*":
            matches = set(known)
        else:
            matches = {pattern} & known
        if not matches:
            raise BadQuery(f"types: {pattern!r} matches no event type; known: {', '.join(sorted(known))}")
        selected |= matches
    if not selected:
        raise BadQuery("types is empty")
    return selected


def parse_query(args: Any) -> tuple[tuple[str, int] | None, set[str] | None]:
    names = set(args.keys())
    if names & _TOKEN_PARAMS:
        raise BadQuery("tokens are not accepted in the URL; use the Authorization header or an auth message")
    unknown = sorted(names - _QUERY_PARAMS)
    if unknown:
        raise BadQuery(f"unknown query parameter(s): {', '.join(unknown)}")
    since_text = args.get("since")
    types_text = args.get("types")
    since = parse_since(since_text) if since_text else None
    types = parse_types(types_text) if types_text else None
    return since, types


def _frame(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class ClientGone(Exception):
    """The client closed the connection (close frame or EOF); nothing more can be sent to it."""


class EventSocket(Protocol):
    """One WebSocket as the event stream needs it. Two transports implement it: ``api.events_raw`` (the
    front door's own connection, the normal case) and ``QuartEventSocket`` below (an upgrade that arrives on
    a connection hypercorn already serves). Sends are serialised by the caller."""

    authorization: str | None
    query: Mapping[str, str]

    async def send_text(self, text: str) -> None: ...

    async def send_events(self, events: list[Event]) -> None:
        """One text frame per event, in order; a transport may write them all at once."""

    async def receive(self) -> str | bytes:
        """The next message from the client; raises ClientGone when the client went away."""

    async def close(self, code: int, reason: str) -> None: ...


class _Connection:
    """One authenticated client: owns its subscription and its tasks (events, pings, reads, shutdown)."""

    def __init__(self, state: ApiState, principal: Principal, sock: EventSocket, request_id: str) -> None:
        self.state = state
        self.principal = principal
        self.sock = sock
        self.request_id = request_id
        self.send_lock = trio.Lock()
        self.closed = False
        self.nursery: trio.Nursery | None = None  # the connection's tasks, once they run

    async def send(self, text: str) -> None:
        async with self.send_lock:
            if not self.closed:
                try:
                    await self.sock.send_text(text)
                except ClientGone:
                    self._gone()

    def _gone(self) -> None:
        """The client went away in the middle of a write: end the connection's tasks quietly."""
        self.closed = True
        if self.nursery is None:
            raise ClientGone()
        self.nursery.cancel_scope.cancel()

    async def close(self, code: int, reason: str, nursery: trio.Nursery, metric_reason: str) -> None:
        """Send the close frame once, then end every task of this connection."""
        async with self.send_lock:
            if self.closed:
                return
            self.closed = True
            self.state.metrics.ws_clients_closed.labels(metric_reason).inc()
            log.info(
                "event client closed", code=code, reason=reason, client=self.principal.name,
                request_id=self.request_id,
            )
            # A client that stopped reading may never take the close frame; don't wait for it forever.
            with trio.move_on_after(self.state.settings.ws_close_timeout):
                try:
                    await self.sock.close(code, reason)
                except ClientGone:
                    pass
        nursery.cancel_scope.cancel()

    def sink(self, write_now: Callable[[list[Event]], bool]) -> Callable[[list[Event]], bool]:
        """The subscription's ``direct_sink``: the synchronous write, counted, never after close."""
        events_sent = self.state.metrics.ws_events_sent

        def deliver(events: list[Event]) -> bool:
            if self.closed or not write_now(events):
                return False
            events_sent.inc(len(events))
            return True

        return deliver

    async def pump_events(self, subscription: Any, nursery: trio.Nursery) -> None:
        """Everything queued for this client leaves in one write: a burst costs one wake-up per client."""
        while batch := await subscription.next_batch():
            events: list[Event] = []
            for item in batch:
                if isinstance(item, Event):
                    events.append(item)
                    continue
                await self._send_events(events)  # ResyncRequired (only ever first), in its place
                events = []
                await self.send(
                    _frame({"type": "resync_required", "epoch": item.epoch, "seq": item.seq,
                            "reason": item.reason})
                )
            await self._send_events(events)
        if subscription.overflowed:
            await self.close(
                CLOSE_SLOW_CONSUMER,
                "slow consumer: event queue overflowed, resume with since",
                nursery,
                "slow_consumer",
            )
        else:
            await self.close(CLOSE_GOING_AWAY, "event stream ended", nursery, "shutdown")

    async def _send_events(self, events: list[Event]) -> None:
        if not events:
            return
        async with self.send_lock:
            if not self.closed:
                try:
                    await self.sock.send_events(events)
                except ClientGone:
                    self._gone()
                    return
                self.state.metrics.ws_events_sent.inc(len(events))

    async def ping(self) -> None:
        interval = self.state.settings.ws_ping_interval
        while True:
            await trio.sleep(interval)
            await self.send('{"type":"ping"}')

    async def read_client(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                message = await self.sock.receive()
            except ClientGone:
                self.closed = True  # the transport answered the client's close; nothing more to send
                nursery.cancel_scope.cancel()
                return
            try:
                kind = json.loads(message).get("type")
            except (ValueError, AttributeError):
                kind = None
            if kind == "ping":
                await self.send('{"type":"pong"}')
            elif kind != "auth":  # a repeated auth message after success is harmless
                await self.send(
                    _frame(
                        {
                            "type": "error",
                            "code": "unknown_message",
                            "detail": 'clients may send only {"type":"ping"}',
                        }
                    )
                )

    async def watch_shutdown(self, nursery: trio.Nursery) -> None:
        await self.state.shutting_down.wait()
        await self.close(CLOSE_GOING_AWAY, "server shutting down", nursery, "shutdown")


async def serve_event_stream(state: ApiState, sock: EventSocket, request_id: str) -> None:
    """The whole /v1/events protocol on an accepted WebSocket (see the module docstring)."""
    try:
        await _serve(state, sock, request_id)
    except ClientGone:  # the client left during the handshake or a refusal: nothing to tell anyone
        return


async def _serve(state: ApiState, sock: EventSocket, request_id: str) -> None:
    principal = await _authenticate(state, sock, request_id)
    if principal is None:
        return
    try:
        since, types = parse_query(sock.query)
    except BadQuery as exc:
        await sock.send_text(_frame({"type": "error", "code": "invalid_parameter", "detail": str(exc)}))
        await _refuse(state, sock, request_id, CLOSE_BAD_REQUEST, str(exc))
        return
    try:
        await _stream(state, sock, request_id, principal, since, types)
    except ClientGone:
        return
    except Exception:  # a bug: log it with the request id, tell the client 1011, never a traceback
        log.error("event stream failed", request_id=request_id, client=principal.name, exc_info=True)
        with trio.move_on_after(state.settings.ws_close_timeout):
            await sock.close(CLOSE_INTERNAL_ERROR, "internal error; request id " + request_id)


async def _authenticate(state: ApiState, sock: EventSocket, request_id: str) -> Principal | None:
    """The client's principal, or None after closing the socket with 4001/4003."""
    tokens = state.services.tokens
    try:
        token = parse_bearer(sock.authorization)
    except BearerHeaderError as exc:
        await _refuse(state, sock, request_id, CLOSE_FORBIDDEN, str(exc))
        return None
    if token is None:
        message: Any = None
        with trio.move_on_after(state.settings.ws_auth_timeout):
            try:
                message = await sock.receive()
            except ClientGone:
                return None
        if message is None:
            await _refuse(
                state, sock, request_id, CLOSE_NO_TOKEN,
                "no token: send Authorization or an auth message within "
                f"{state.settings.ws_auth_timeout:g} s",
            )
            return None
        try:
            body = json.loads(message)
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("type") != "auth" or not isinstance(body.get("token"), str):
            await _refuse(
                state, sock, request_id, CLOSE_NO_TOKEN,
                'no token: the first message must be {"type":"auth","token":"..."}',
            )
            return None
        token = body["token"]
    try:
        return check_token(tokens, token, SCOPE_EVENTS_READ)
    except AuthFailure as exc:
        code = CLOSE_NO_TOKEN if exc.code == "missing_token" else CLOSE_FORBIDDEN
        await _refuse(state, sock, request_id, code, exc.detail)
        return None


async def _refuse(state: ApiState, sock: EventSocket, request_id: str, code: int, reason: str) -> None:
    state.metrics.ws_clients_closed.labels("auth" if code != CLOSE_BAD_REQUEST else "bad_request").inc()
    log.info("event client refused", code=code, reason=reason, request_id=request_id)
    with trio.move_on_after(state.settings.ws_close_timeout):
        await sock.close(code, reason[:120])  # RFC 6455 §5.5: control payload <= 125 bytes


async def _stream(
    state: ApiState,
    sock: EventSocket,
    request_id: str,
    principal: Principal,
    since: tuple[str, int] | None,
    types: set[str] | None,
) -> None:
    bus = state.services.bus
    subscription = bus.subscribe(since, types=types, queue_size=state.settings.ws_queue_size)
    # Read synchronously right after subscribing: live events that follow have seq > this value.
    hello = {"type": "hello", "epoch": bus.epoch, "seq": latest_seq(bus)}
    connection = _Connection(state, principal, sock, request_id)
    state.metrics.ws_clients.inc()
    try:
        await connection.send(_frame(hello))
        async with trio.open_nursery() as nursery:
            connection.nursery = nursery
            write_now = getattr(sock, "write_now", None)
            if write_now is not None:  # the raw transport: live events leave from the bus's fan-out itself
                subscription.direct_sink = connection.sink(write_now)
                nursery.start_soon(sock.flush_tails)
            nursery.start_soon(connection.pump_events, subscription, nursery)
            nursery.start_soon(connection.ping)
            nursery.start_soon(connection.read_client, nursery)
            nursery.start_soon(connection.watch_shutdown, nursery)
    finally:
        subscription.close()
        state.metrics.ws_clients.dec()


class QuartEventSocket:
    """The event stream on Quart's websocket: used when an upgrade arrives on a keep-alive connection that
    hypercorn already serves (the front door in ``api.events_raw`` only sees a connection's first request)."""

    def __init__(self) -> None:
        # Resolved once: the context-local proxy costs a lookup per attribute.
        self._ws = websocket._get_current_object()  # type: ignore[attr-defined]
        self.authorization = self._ws.headers.get("Authorization")
        self.query = self._ws.args

    async def send_text(self, text: str) -> None:
        await self._ws.send(text)

    async def send_events(self, events: list[Event]) -> None:
        for event in events:
            # The bytes the bus serialised once; a text frame needs str, the JSON is not re-encoded.
            await self._ws.send(event.text)

    async def receive(self) -> str | bytes:
        return await self._ws.receive()  # Quart cancels the handler when the client goes away

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason)


@blueprint.websocket("/v1/events")
async def events() -> None:
    state = api_state()
    g.request_id = uuid.uuid4().hex
    await websocket.accept()
    await serve_event_stream(state, QuartEventSocket(), g.request_id)
