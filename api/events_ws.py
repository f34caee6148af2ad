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
from typing import Any

import structlog
import trio
from quart import Blueprint, g, websocket

from api.auth import SCOPE_EVENTS_READ, AuthFailure, BearerHeaderError, Principal, check_token, parse_bearer
from api.services import ApiState, api_state
from gateway.events import EVENT_TYPES, Event, ResyncRequired

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


class _Connection:
    """One authenticated client: owns its subscription and its three tasks (events, pings, reads)."""

    def __init__(self, state: ApiState, principal: Principal) -> None:
        self.state = state
        self.principal = principal
        self.send_lock = trio.Lock()
        self.closed = False
        # The connection's own websocket object, resolved once: every event to every client passes here, and
        # the context-local proxy costs a lookup per attribute.
        self.websocket = websocket._get_current_object()  # type: ignore[attr-defined]

    async def send(self, text: str) -> None:
        async with self.send_lock:
            if not self.closed:
                await self.websocket.send(text)

    async def close(self, code: int, reason: str, nursery: trio.Nursery, metric_reason: str) -> None:
        """Send the close frame once, then end every task of this connection."""
        async with self.send_lock:
            if self.closed:
                return
            self.closed = True
            self.state.metrics.ws_clients_closed.labels(metric_reason).inc()
            log.info(
                "event client closed",
                code=code,
                reason=reason,
                client=self.principal.name,
                request_id=g.get("request_id"),
            )
            # A client that stopped reading may never take the close frame; don't wait for it forever.
            with trio.move_on_after(self.state.settings.ws_close_timeout):
                await websocket.close(code, reason)
        nursery.cancel_scope.cancel()

    async def pump_events(self, subscription: Any, nursery: trio.Nursery) -> None:
        metrics = self.state.metrics
        async for item in subscription:
            if isinstance(item, Event):
                # The bytes the bus serialised once; a text frame needs str, the JSON is not re-encoded.
                await self.send(item.text)
                metrics.ws_events_sent.inc()
            elif isinstance(item, ResyncRequired):
                await self.send(
                    _frame(
                        {
                            "type": "resync_required",
                            "epoch": item.epoch,
                            "seq": item.seq,
                            "reason": item.reason,
                        }
                    )
                )
        if subscription.overflowed:
            await self.close(
                CLOSE_SLOW_CONSUMER,
                "slow consumer: event queue overflowed, resume with since",
                nursery,
                "slow_consumer",
            )
        else:
            await self.close(CLOSE_GOING_AWAY, "event stream ended", nursery, "shutdown")

    async def ping(self) -> None:
        interval = self.state.settings.ws_ping_interval
        while True:
            await trio.sleep(interval)
            await self.send('{"type":"ping"}')

    async def read_client(self) -> None:
        while True:
            message = await websocket.receive()
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


async def _authenticate(state: ApiState) -> Principal | None:
    """The client's principal, or None after closing the socket with 4001/4003."""
    tokens = state.services.tokens
    try:
        token = parse_bearer(websocket.headers.get("Authorization"))
    except BearerHeaderError as exc:
        await _refuse(state, CLOSE_FORBIDDEN, str(exc))
        return None
    if token is None:
        message: Any = None
        with trio.move_on_after(state.settings.ws_auth_timeout):
            message = await websocket.receive()
        if message is None:
            await _refuse(
                state,
                CLOSE_NO_TOKEN,
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
                state, CLOSE_NO_TOKEN, 'no token: the first message must be {"type":"auth","token":"..."}'
            )
            return None
        token = body["token"]
    try:
        return check_token(tokens, token, SCOPE_EVENTS_READ)
    except AuthFailure as exc:
        code = CLOSE_NO_TOKEN if exc.code == "missing_token" else CLOSE_FORBIDDEN
        await _refuse(state, code, exc.detail)
        return None


async def _refuse(state: ApiState, code: int, reason: str) -> None:
    state.metrics.ws_clients_closed.labels("auth" if code != CLOSE_BAD_REQUEST else "bad_request").inc()
    log.info("event client refused", code=code, reason=reason, request_id=g.get("request_id"))
    with trio.move_on_after(state.settings.ws_close_timeout):
        await websocket.close(code, reason[:120])  # RFC 6455 §5.5: control payload <= 125 bytes


@blueprint.websocket("/v1/events")
async def events() -> None:
    state = api_state()
    g.request_id = uuid.uuid4().hex
    await websocket.accept()
    principal = await _authenticate(state)
    if principal is None:
        return
    try:
        since, types = parse_query(websocket.args)
    except BadQuery as exc:
        await websocket.send(_frame({"type": "error", "code": "invalid_parameter", "detail": str(exc)}))
        await _refuse(state, CLOSE_BAD_REQUEST, str(exc))
        return

    try:
        await _stream(state, principal, since, types)
    except Exception:  # a bug: log it with the request id, tell the client 1011, never a traceback
        log.error("event stream failed", request_id=g.request_id, client=principal.name, exc_info=True)
        with trio.move_on_after(state.settings.ws_close_timeout):
            await websocket.close(CLOSE_INTERNAL_ERROR, "internal error; request id " + g.request_id)


async def _stream(
    state: ApiState, principal: Principal, since: tuple[str, int] | None, types: set[str] | None
) -> None:
    bus = state.services.bus
    subscription = bus.subscribe(since, types=types, queue_size=state.settings.ws_queue_size)
    # Read synchronously right after subscribing: live events that follow have seq > this value.
    hello = {"type": "hello", "epoch": bus.epoch, "seq": latest_seq(bus)}
    connection = _Connection(state, principal)
    state.metrics.ws_clients.inc()
    try:
        await connection.send(_frame(hello))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.pump_events, subscription, nursery)
            nursery.start_soon(connection.ping)
            nursery.start_soon(connection.read_client)
            nursery.start_soon(connection.watch_shutdown, nursery)
    finally:
        subscription.close()
        state.metrics.ws_clients.dec()
