"""The front door of the API's TCP port, and the event WebSocket served on the raw connection.

Why: every event goes to every CRM client. Through Quart and hypercorn each text frame to each client
costs ~50 µs (a task switch per frame, the ASGI message, wsproto's encoder, one ``send`` per frame); 32 lines
ringing at once with 100 clients connected is 3,200+ frames from the one event loop that also reads the
line boxes.
Here a server frame is encoded once per event (RFC 6455 §5.1: a server never masks, so the bytes are the same
for every client) and all the frames queued for a client leave in one write.

How: ``FrontDoor`` looks at the first bytes of each accepted connection. A ``GET /v1/events`` carrying a
valid WebSocket upgrade (checked by wsproto, which also answers the handshake) is served here by
``RawEventSocket`` with the same protocol code as the Quart route (``api.events_ws.serve_event_stream``).
Every other connection goes to hypercorn with the bytes already read put back in front (``ReplayStream``),
so HTTP behaves exactly as without the front door. An upgrade that arrives later on a keep-alive connection
is served by the Quart route, so both paths stay in use and in the tests.
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from api.events_ws import ClientGone, serve_event_stream
from api.services import ApiState
from gateway.events import Event

log = structlog.get_logger("api.events")

EVENTS_REQUEST = b"GET /v1/events"
MAX_HEAD_BYTES = 16 * 1024  # a longer request head is not ours to judge: hypercorn answers it
MAX_CLIENT_MESSAGE = 64 * 1024  # clients send only small JSON ({"type":"auth"|"ping"})
CLOSE_MESSAGE_TOO_BIG = 1009  # RFC 6455 §7.4.1
RECEIVE_BYTES = 65536


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked server text frame (RFC 6455 §5.2): FIN + opcode 0x1, then the payload
    length in 7 bits, or 126 + 16 bits, or 127 + 64 bits, then the payload."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def event_frame(event: Event) -> bytes:
    """The event's frame, encoded by the first client that sends it and reused for all the others."""
    frame = event.encodings.get("ws")
    if frame is None:
        frame = event.encodings["ws"] = text_frame(event.payload)
    return frame


def events_frames(events: list[Event]) -> bytes:
    """The frames of ``events`` back to back, for one write. The bus hands every client without a type
    filter the same list of a commit's events, so the last join is reused for the next client."""
    global _last_joined
    if len(events) == 1:
        return event_frame(events[0])
    if _last_joined[0] is events:
        return _last_joined[1]
    data = b"".join([event_frame(event) for event in events])
    _last_joined = (events, data)  # holds the list: its id cannot be reused while it is remembered
    return data


_last_joined: tuple[list[Event] | None, bytes] = (None, b"")


class ReplayStream(trio.abc.HalfCloseableStream):
    """``stream`` with ``head`` (bytes the front door already read from it) returned first.

    Once the head is consumed, ``receive_some`` is the inner stream's own bound method: hypercorn's reads
    then cost nothing extra. ``socket`` is exposed because hypercorn reads the peer address from it.
    """

    def __init__(self, stream: trio.SocketStream, head: bytes) -> None:
        self._stream = stream
        self._head = head
        self.socket = getattr(stream, "socket", None)
        self.send_all = stream.send_all  # type: ignore[method-assign]
        self.wait_send_all_might_not_block = stream.wait_send_all_might_not_block  # type: ignore[method-assign]
        self.send_eof = stream.send_eof  # type: ignore[method-assign]
        self.aclose = stream.aclose  # type: ignore[method-assign]
        if not head:
            self.receive_some = stream.receive_some  # type: ignore[method-assign]

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if max_bytes is None or max_bytes >= len(self._head):
            data, self._head = self._head, b""
        else:
            data, self._head = self._head[:max_bytes], self._head[max_bytes:]
        if not self._head:
            self.receive_some = self._stream.receive_some  # type: ignore[method-assign]
        return data

    # Replaced per instance in __init__; defined for the ABC.
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:  # pragma: no cover
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:  # pragma: no cover
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:  # pragma: no cover
        await self._stream.send_eof()

    async def aclose(self) -> None:  # pragma: no cover
        await self._stream.aclose()


class RawEventSocket:
    """``api.events_ws.EventSocket`` on a trio stream: wsproto for the client's frames and for control
    frames, our own pre-encoded frames for events. One lock orders every write."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection, request: Request) -> None:
        self._stream = stream
        self._ws = ws
        self._write_lock = trio.StrictFIFOLock()
        self._messages: deque[str | bytes] = deque()
        self._fragments: list[Any] = []
        self._fragment_size = 0
        self._gone = False
        self._closing = False
        self._fd = stream.socket.fileno()
        self._tail = b""  # the unsent end of a frame written synchronously (write_now); goes out first
        self._tail_waiting = trio.Event()
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in
                   request.extra_headers}
        self.authorization = headers.get("authorization")
        self.query = dict(parse_qsl(urlsplit(request.target).query, keep_blank_values=True))

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            if self._tail:
                data, self._tail = self._tail + data, b""
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._gone = True
                raise ClientGone() from exc

    def write_now(self, events: list[Event]) -> bool:
        """Write the events' frames synchronously, in one ``write(2)``, if nothing else is being written: the
        bus calls this with a commit's events for an idle client (``Subscription.direct_sink``), so live
        events cost one non-blocking write per client per commit and no task switch. False: not now (the
        events are queued and sent by the client's task). A partial write keeps the rest as the tail that
        goes out before anything else."""
        if self._gone or self._closing or self._tail or self._write_lock.locked():
            return False
        data = events_frames(events)
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            return False
        except OSError:  # reset or broken: the queued path meets the same error and ends the connection
            return False
        if sent < len(data):
            self._tail = data[sent:]
            self._tail_waiting.set()
        return True

    async def flush_tails(self) -> None:
        """Sends the tail a partial ``write_now`` left (the client's task does it too when it writes)."""
        while True:
            await self._tail_waiting.wait()
            self._tail_waiting = trio.Event()
            if self._tail:
                await self._write(b"")

    async def send_text(self, text: str) -> None:
        await self._write(text_frame(text.encode()))

    async def send_events(self, events: list[Event]) -> None:
        await self._write(events_frames(events))

    async def receive(self) -> str | bytes:
        while True:
            await self._take_events()
            if self._messages:
                return self._messages.popleft()
            if self._gone:
                raise ClientGone()
            await self._read()

    async def _read(self) -> None:
        try:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self._ws.receive_data(data or None)
        if not data:
            self._gone = True

    async def _take_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._fragments.append(event.data)
                self._fragment_size += len(event.data)
                if self._fragment_size > MAX_CLIENT_MESSAGE:
                    await self.close(CLOSE_MESSAGE_TOO_BIG, "message too big")
                    self._gone = True
                    return
                if event.message_finished:
                    parts, self._fragments, self._fragment_size = self._fragments, [], 0
                    self._messages.append(parts[0] if len(parts) == 1 else type(parts[0])().join(parts))
            elif isinstance(event, Ping):
                await self._write_control(event.response())
            elif isinstance(event, CloseConnection):
                # The client closes (or wsproto closes for it after a protocol error, code 1002): answer
                # the close handshake (RFC 6455 §5.5.1) and end.
                await self._write_control(event.response())
                self._gone = True

    async def _write_control(self, event: Any) -> None:
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            try:
                await self._write(self._ws.send(event))
            except ClientGone:
                pass

    async def close(self, code: int, reason: str) -> None:
        self._closing = True
        if self._ws.state is ConnectionState.OPEN:
            await self._write(self._ws.send(CloseConnection(code=code, reason=reason)))

    async def finish(self, wait_s: float) -> None:
        """After our close frame: wait (bounded) for the client's, then close TCP (RFC 6455 §7.1.1)."""
        self._closing = True  # no synchronous write may follow (the descriptor is about to be closed)
        try:
            with trio.move_on_after(wait_s):
                while self._ws.state is ConnectionState.LOCAL_CLOSING and not self._gone:
                    await self._read()
                    await self._take_events()
        finally:
            await trio.aclose_forcefully(self._stream)


class FrontDoor:
    """The handler of every accepted connection: events WebSockets here, the rest to ``http_handler``."""

    def __init__(
        self,
        state: ApiState,
        http_handler: Callable[[trio.abc.HalfCloseableStream], Awaitable[None]],
        *,
        first_bytes_timeout: float,
    ) -> None:
        self.state = state
        self.http_handler = http_handler
        self.first_bytes_timeout = first_bytes_timeout

    async def __call__(self, stream: trio.SocketStream) -> None:
        try:
            head = await self._read_until_decided(stream)
            if head is None:
                await stream.aclose()
                return
            if _is_events_candidate(head) and b"\r\n\r\n" in head:
                ws = WSConnection(ConnectionType.SERVER)
                end = head.index(b"\r\n\r\n") + 4
                try:
                    ws.receive_data(head[:end])
                    request = next((e for e in ws.events() if isinstance(e, Request)), None)
                except RemoteProtocolError:
                    request = None  # not a valid upgrade: hypercorn and Quart answer it as before
                if request is not None:
                    await self._serve_events(stream, ws, request, head[end:])
                    return
            await self.http_handler(ReplayStream(stream, bytes(head)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.aclose_forcefully(stream)
        except Exception:  # one connection's bug must not take the listener down
            log.error("connection handler failed", exc_info=True)
            await trio.aclose_forcefully(stream)

    async def _read_until_decided(self, stream: trio.SocketStream) -> bytearray | None:
        """Read until we know whether this is ours: the first bytes rule it out, or the head is complete.
        None: the peer sent nothing and closed, or nothing within the keep-alive timeout (hypercorn would
        close such a connection too)."""
        head = bytearray()
        with trio.move_on_after(self.first_bytes_timeout):
            while True:
                chunk = await stream.receive_some(RECEIVE_BYTES)
                if not chunk:
                    return head or None
                head += chunk
                if not _is_events_candidate(head) or b"\r\n\r\n" in head or len(head) > MAX_HEAD_BYTES:
                    return head
        return head or None

    async def _serve_events(self, stream: trio.SocketStream, ws: WSConnection, request: Request,
                            early: bytes) -> None:
        # No extensions (permessage-deflate would make every client's frames different) and no subprotocol,
        # as on the Quart route.
        await stream.send_all(ws.send(AcceptConnection()))
        if early:  # RFC 6455 §4.1 says a client waits for our answer; take its frames anyway
            ws.receive_data(bytes(early))
        sock = RawEventSocket(stream, ws, request)
        try:
            await serve_event_stream(self.state, sock, uuid.uuid4().hex)
        finally:
            await sock.finish(self.state.settings.ws_close_timeout)


def _is_events_candidate(head: bytes | bytearray) -> bool:
    """Could these first bytes be ``GET /v1/events`` followed by a space or a query?"""
    if len(head) <= len(EVENTS_REQUEST):
        return EVENTS_REQUEST.startswith(head)
    return head.startswith(EVENTS_REQUEST) and head[len(EVENTS_REQUEST)] in b" ?"
