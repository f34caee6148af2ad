"""A lean HTTP/1.1 transport for httpx on trio streams and h11, with a small keep-alive pool per origin.

Why: ``HttpSmsRoute`` is an ``httpx.AsyncClient`` user (issue 4: "use httpx"), but httpx's default transport
(httpcore's connection pool) was half of the route's CPU. Measured with bench/bench_http_provider.py (10,000
messages to the simulator in another process on loopback, 32 in flight, 2 cores): the route cost 500-540 us
of CPU per message over httpcore, 220-250 us over this transport (wall 5.1-5.7 s -> 2.2-3.4 s). Of what is
left, about 100 us per request is this transport (h11 and trio I/O, measured with a bare loop) and about
130 us the httpx client around it. httpcore's extra cost was pool bookkeeping that grows with connections
and waiting requests, a cancel scope and lock per read and write, and the request head and body written with
two ``send`` calls (two TCP segments, two wake-ups of the server: the simulator's CPU per message also fell,
from ~165 to ~120 us, with the one write here).

What it does (what provider requests need, nothing more):
  * http and https (``trio.SSLStream`` with the given ``ssl.SSLContext``, SNI and certificate checks by it);
  * any method, headers as httpx prepared them, a body from bytes (one write) or from an async stream
    (h11 frames it: Content-Length or chunked, as httpx's headers say);
  * responses framed by Content-Length, chunked, or the connection's end (h11 decides, RFC 9112 sec. 6.3);
    1xx interim responses are skipped; the body is read completely before the response is returned, so the
    connection is back in the pool (or closed) by then;
  * httpx's exception types: ConnectError, WriteError, ReadError, RemoteProtocolError, LocalProtocolError,
    UnsupportedProtocol.

Persistence (RFC 9112 sec. 9.3): a connection is reused only after a complete exchange that h11 leaves in
DONE/DONE, i.e. neither side asked to close ("Connection: close", HTTP/1.0 without keep-alive) and the
response was not delimited by closing. Anything else (an error, a cancellation at any point, a response read
until EOF, bytes the server sent beyond the response) closes the connection: a connection is never put back
in an unknown state. Idle connections are dropped after ``keepalive_expiry`` seconds (httpx's default, 5 s)
and, like httpcore does, when the socket turns readable while idle (the server closed it or sent something
unsolicited), so that a request is not written into a connection the server already gave up on
(RFC 9112 sec. 9.5: either side may close an idle connection at any time). No pipelining (sec. 9.3.2), no
automatic retry: the caller decides (the route retries, knowing a POST may then be duplicated).

Timeouts are not applied here (httpx's ``timeout`` extension is ignored): the caller bounds each request
with a trio cancel scope, as the route does per attempt. A cancelled request closes its connection.
There is no limit on connections: the caller limits concurrency (the route's CapacityLimiter), and at most
``max_idle`` connections per origin are kept for reuse.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

import h11
import httpx
import trio

_RECEIVE_SIZE = 64 * 1024
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
Origin = tuple[bytes, bytes, int]  # scheme, host, port


class _Connection:
    """One HTTP/1.1 connection: its stream, h11 state and the raw socket (closed synchronously on errors)."""

    __slots__ = ("stream", "socket_stream", "h11", "idle_since", "exchanges", "eof")

    def __init__(self, stream: trio.abc.Stream, socket_stream: trio.SocketStream):
        self.stream = stream
        self.socket_stream = socket_stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self.exchanges = 0  # completed request/response cycles (tests check reuse with it)
        self.eof = False  # the server closed its side (h11 still says DONE after a close-delimited body)

    def close(self) -> None:
        """Close now, no TLS close_notify: for errors and cancellations (never blocks, no checkpoint)."""
        self.socket_stream.socket.close()

    async def aclose(self) -> None:
        """Close an idle connection politely (TLS close_notify where there is TLS), briefly."""
        with trio.move_on_after(1):
            await self.stream.aclose()
        self.close()

    def usable(self, now: float, expiry: float) -> bool:
        """Whether an idle connection can carry the next request."""
        return now - self.idle_since < expiry and not self.socket_stream.socket.is_readable()


class H11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over trio with h11; see the module docstring. ``connections`` and ``opened`` are for tests
    and diagnostics: the idle connections per origin and how many connections were opened in total."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = 10,
        keepalive_expiry: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._ssl_context = ssl_context
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._clock = clock
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False
        self.opened = 0

    @property
    def connections(self) -> dict[Origin, list[_Connection]]:
        return self._idle

    # --- the pool ------------------------------------------------------------------------------------------
    def _checkout(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = self._clock()
        while idle:
            connection = idle.pop()  # most recently used first: the least likely to have been closed
            if connection.usable(now, self._expiry):
                return connection
            connection.close()
        return None

    def _checkin(self, origin: Origin, connection: _Connection) -> None:
        h = connection.h11
        if (
            h.our_state is h11.DONE
            and h.their_state is h11.DONE
            and not connection.eof
            and not h.trailing_data[0]  # unsolicited bytes after the response: the stream is out of step
            and not self._closed
        ):
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self._max_idle:
                h.start_next_cycle()
                connection.exchanges += 1
                connection.idle_since = self._clock()
                idle.append(connection)
                return
        connection.close()

    async def _connect(self, origin: Origin, request: httpx.Request) -> _Connection:
        scheme, host, port = origin
        try:
            socket_stream = await trio.open_tcp_stream(host.decode("ascii"), port)
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        self.opened += 1
        if scheme == b"http":
            return _Connection(socket_stream, socket_stream)
        context = self._ssl_context or ssl.create_default_context()
        tls = trio.SSLStream(
            socket_stream, context, server_hostname=host.decode("ascii"), https_compatible=True
        )
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            socket_stream.socket.close()
            cause = exc.__cause__ or exc
            raise httpx.ConnectError(str(cause) or type(cause).__name__, request=request) from exc
        except BaseException:
            socket_stream.socket.close()
            raise
        return _Connection(tls, socket_stream)

    # --- one exchange -------------------------------------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        if not url.raw_host:
            raise httpx.UnsupportedProtocol(f"no host in the URL {str(url)!r}", request=request)
        if self._closed:
            raise RuntimeError("the transport is closed")
        origin = (scheme, url.raw_host, url.port or _DEFAULT_PORTS[scheme])
        connection = self._checkout(origin)
        if connection is None:
            connection = await self._connect(origin, request)
        try:
            response = await self._exchange(connection, request)
        except BaseException:
            connection.close()  # cancelled or failed mid-exchange: its state is unknown, never reuse it
            raise
        self._checkin(origin, connection)
        return response

    async def _exchange(self, connection: _Connection, request: httpx.Request) -> httpx.Response:
        h = connection.h11
        stream = connection.stream
        try:
            target = request.url.raw_path  # path and query
            head = h.send(h11.Request(method=request.method, target=target, headers=request.headers.raw))
            if isinstance(request.stream, httpx.ByteStream):
                body = request.content  # already in memory: head, body and end in one write
                if body:
                    head += h.send(h11.Data(data=body))
                head += h.send(h11.EndOfMessage())
                await _send(stream, head, request)
            else:
                await _send(stream, head, request)
                async for part in request.stream:
                    if part:
                        await _send(stream, h.send(h11.Data(data=part)), request)
                await _send(stream, h.send(h11.EndOfMessage()), request)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc

        response: h11.Response | None = None
        chunks: list[bytes] = []
        try:
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = await stream.receive_some(_RECEIVE_SIZE)
                    except (trio.BrokenResourceError, OSError) as exc:
                        cause = exc.__cause__ or exc
                        raise httpx.ReadError(str(cause) or type(cause).__name__, request=request) from exc
                    if not data:
                        connection.eof = True  # h11 decides what the end of the stream means here
                    h.receive_data(data)
                    continue
                kind = type(event)
                if kind is h11.Data:
                    chunks.append(event.data)
                elif kind is h11.Response:
                    response = event
                elif kind is h11.EndOfMessage:
                    break
                elif kind is h11.ConnectionClosed:
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection without sending a response", request=request
                    )
                # h11.InformationalResponse (1xx): wait for the final response.
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        assert response is not None
        return httpx.Response(
            response.status_code,
            headers=response.headers.raw_items(),
            stream=httpx.ByteStream(b"".join(chunks)),  # h11's Data may be bytearrays: always bytes here
            extensions={"http_version": b"HTTP/" + response.http_version, "reason_phrase": response.reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.aclose()


async def _send(stream: trio.abc.Stream, data: bytes, request: httpx.Request) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, OSError) as exc:
        cause = exc.__cause__ or exc
        raise httpx.WriteError(str(cause) or type(cause).__name__, request=request) from exc
