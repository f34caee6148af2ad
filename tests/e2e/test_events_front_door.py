"""The API port's front door (api/events_raw.py): event WebSockets on their own fast path, everything else
through hypercorn unchanged. Real sockets; frames checked by wsproto's client (an independent parser)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

import api.events_raw as events_raw
from api.services import ApiSettings
from tests.e2e.test_api_http import TOKENS, RunningApi, running_api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[RunningApi]:
    async with running_api(tmp_path, ApiSettings(ws_ping_interval=30.0)) as running:
        yield running


@pytest.fixture
def raw_sockets(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every RawEventSocket the front door creates (to tell which path served a connection)."""
    created: list[Any] = []
    original = events_raw.RawEventSocket.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(events_raw.RawEventSocket, "__init__", recording)
    return created


class Client:
    """A WebSocket client on a raw TCP stream, frame by frame (wsproto, client side)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Any] = []
        self.eof = False

    async def handshake(self, target: str = "/v1/events", who: str = "admin") -> None:
        headers = [(b"authorization", f"Bearer {TOKENS[who][1]}".encode())]
        request = Request(host="localhost", target=target, extra_headers=headers)
        await self.stream.send_all(self.ws.send(request))
        event = await self.next_event()
        assert isinstance(event, AcceptConnection), event

    async def next_event(self, within: float = 5.0) -> Any:
        with trio.fail_after(within):
            while not self.pending:
                if self.eof:
                    return None
                data = await self.stream.receive_some(65536)
                self.eof = not data
                self.ws.receive_data(data or None)
                self.pending.extend(self.ws.events())
            return self.pending.pop(0)

    async def message(self, within: float = 5.0) -> dict[str, Any]:
        """The next whole text message (wsproto hands over a frame in pieces as its bytes arrive)."""
        parts = []
        while True:
            event = await self.next_event(within)
            assert isinstance(event, TextMessage), event
            parts.append(event.data)
            if event.message_finished:
                return json.loads("".join(parts))

    async def send(self, event: Any) -> None:
        await self.stream.send_all(self.ws.send(event))


async def open_client(api: RunningApi) -> Client:
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    return Client(await trio.open_tcp_stream(host, int(port)))


async def test_a_fresh_connection_is_served_by_the_front_door(
    api: RunningApi, raw_sockets: list[Any]
) -> None:
    client = await open_client(api)
    await client.handshake()
    hello = await client.message()
    assert hello["type"] == "hello" and hello["seq"] == api.bus.last_seq
    event = await api.bus.publish("sms.queued", {"n": 1})
    raw = await client.next_event()
    assert raw.data.encode() == event.payload  # the bus's bytes, not re-encoded
    assert len(raw_sockets) == 1


async def test_an_upgrade_on_a_keep_alive_connection_is_served_by_the_quart_route(
    api: RunningApi, raw_sockets: list[Any]
) -> None:
    client = await open_client(api)
    http = h11.Connection(h11.CLIENT)
    await client.stream.send_all(http.send(h11.Request(method="GET", target="/health",
                                                       headers=[("Host", "localhost")])))
    await client.stream.send_all(http.send(h11.EndOfMessage()))
    status = None
    with trio.fail_after(5):
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await client.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                break
    assert status == 200
    await client.handshake()
    assert (await client.message())["type"] == "hello"
    published = await api.bus.publish("sms.queued", {"n": 2})
    assert (await client.message())["seq"] == published.seq
    assert raw_sockets == []


async def test_a_burst_reaches_the_client_in_order_one_frame_per_event(api: RunningApi) -> None:
    client = await open_client(api)
    await client.handshake()
    await client.message()
    async with trio.open_nursery() as nursery:  # concurrent publishers: group-committed, fanned out together
        for i in range(300):
            nursery.start_soon(api.bus.publish, "sms.queued", {"n": i})
    seqs = [(await client.message())["seq"] for _ in range(300)]
    assert seqs == sorted(seqs) and seqs[-1] - seqs[0] == 299


@pytest.mark.parametrize("size", [0, 60, 125, 126, 127, 65535, 65536, 70000])
async def test_frame_lengths_at_every_encoding_boundary(api: RunningApi, size: int) -> None:
    """RFC 6455 §5.2: 7-bit, 16-bit (126) and 64-bit (127) payload lengths, checked by wsproto's decoder."""
    client = await open_client(api)
    await client.handshake()
    await client.message()
    empty = await api.bus.publish("sms.queued", {"pad": ""})
    pad = "x" * max(0, size - len(empty.payload))
    event = await api.bus.publish("sms.queued", {"pad": pad})
    assert (await client.message())["seq"] == empty.seq
    parts = []
    while True:
        frame = await client.next_event()
        parts.append(frame.data)
        if frame.message_finished:
            break
    assert "".join(parts).encode() == event.payload
    assert events_raw.text_frame(b"x" * size)[1] & 0x80 == 0  # never masked (§5.1)


async def test_control_frames_ping_and_close(api: RunningApi) -> None:
    client = await open_client(api)
    await client.handshake()
    await client.message()
    await client.send(Ping(b"are you there"))
    pong = await client.next_event()
    assert isinstance(pong, Pong) and pong.payload == b"are you there"
    await client.send(CloseConnection(code=1000, reason="bye"))
    closing = await client.next_event()
    assert isinstance(closing, CloseConnection) and closing.code == 1000
    after = await client.next_event()  # then the server closes TCP (wsproto reports EOF as 1006)
    assert (after is None or after.code == 1006) and client.eof
    with trio.fail_after(5):
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert api.bus.subscriber_count == 0  # the server let go of the subscription


async def test_application_ping_and_auth_by_message(api: RunningApi) -> None:
    client = await open_client(api)
    await client.stream.send_all(client.ws.send(Request(host="localhost", target="/v1/events")))
    assert isinstance(await client.next_event(), AcceptConnection)
    await client.send(Message(data=json.dumps({"type": "auth", "token": TOKENS["reader"][1]})))
    assert (await client.message())["type"] == "hello"
    # A fragmented client message is joined before it is read.
    await client.send(TextMessage(data='{"type":', message_finished=False))
    await client.send(TextMessage(data='"ping"}', message_finished=True))
    assert await client.message() == {"type": "pong"}


async def test_an_oversized_client_message_is_closed_with_1009(api: RunningApi) -> None:
    client = await open_client(api)
    await client.handshake()
    await client.message()
    await client.send(TextMessage(data="x" * (events_raw.MAX_CLIENT_MESSAGE + 1)))
    with trio.fail_after(5):
        while not isinstance(event := await client.next_event(), CloseConnection):
            assert event is not None
    assert event.code == 1009


async def test_bad_token_and_bad_query_keep_their_close_codes(api: RunningApi) -> None:
    client = await open_client(api)
    await client.stream.send_all(client.ws.send(Request(
        host="localhost", target="/v1/events", extra_headers=[(b"authorization", b"Bearer nope")])))
    assert isinstance(await client.next_event(), AcceptConnection)
    closing = await client.next_event()
    assert isinstance(closing, CloseConnection) and closing.code == 4003
    client = await open_client(api)
    await client.handshake(target="/v1/events?bogus=1")
    assert (await client.message())["code"] == "invalid_parameter"
    closing = await client.next_event()
    assert isinstance(closing, CloseConnection) and closing.code == 4000


async def test_http_requests_pass_through_unchanged(api: RunningApi) -> None:
    async with httpx.AsyncClient(base_url=api.url, timeout=5) as http:
        plain = await http.get("/v1/events")  # no upgrade: answered by hypercorn/Quart as before
        assert plain.status_code != 101
        assert (await http.get("/v1/eventsX")).status_code == 404
        assert (await http.get("/health")).status_code == 200


async def test_a_request_head_split_into_small_pieces_is_still_routed(
    api: RunningApi, raw_sockets: list[Any]
) -> None:
    client = await open_client(api)
    ws = WSConnection(ConnectionType.CLIENT)
    headers = [(b"authorization", f"Bearer {TOKENS['admin'][1]}".encode())]
    head = ws.send(Request(host="localhost", target="/v1/events?types=sms.*", extra_headers=headers))
    for start in range(0, len(head), 7):
        await client.stream.send_all(head[start:start + 7])
        await trio.sleep(0.005)
    client.ws = ws
    assert isinstance(await client.next_event(), AcceptConnection)
    assert (await client.message())["type"] == "hello"
    assert len(raw_sockets) == 1

    other = await open_client(api)
    for piece in (b"GET /v1/ev", b"ents/nothing HTTP/1.1\r\nHost: x\r\n\r\n"):
        await other.stream.send_all(piece)
        await trio.sleep(0.01)
    http = h11.Connection(h11.CLIENT)
    http.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    with trio.fail_after(5):
        while (response := http.next_event()) is h11.NEED_DATA:
            http.receive_data(await other.stream.receive_some(65536))
    assert isinstance(response, h11.Response) and response.status_code == 404


async def test_an_upgrade_without_a_key_is_left_to_hypercorn(api: RunningApi, raw_sockets: list[Any]) -> None:
    client = await open_client(api)
    await client.stream.send_all(
        b"GET /v1/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    with trio.fail_after(5):
        data = await client.stream.receive_some(65536)
    assert data.startswith(b"HTTP/1.1 4") and raw_sockets == []


def test_reject_connection_is_not_what_a_valid_upgrade_gets() -> None:
    """Guard for the routing rule: wsproto accepts the upgrade our clients send (no RejectConnection)."""
    server = WSConnection(ConnectionType.SERVER)
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="h", target="/v1/events")))
    assert not any(isinstance(e, RejectConnection) for e in server.events())


async def test_direct_writes_partial_writes_and_the_queue_keep_order_under_back_pressure(
    tmp_path: Path,
) -> None:
    """Live events go straight from the bus to an idle client's socket; when its buffer fills, the rest of a
    frame and the events behind it go through the client's task. Nothing is reordered, cut or lost."""
    async with running_api(tmp_path, ApiSettings(ws_queue_size=5000, ws_ping_interval=30.0)) as api:
        host, port = api.url.removeprefix("http://").rsplit(":", 1)
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await sock.connect((host, int(port)))
        client = Client(trio.SocketStream(sock))
        await client.handshake()
        await client.message()
        published = []
        for i in range(300):  # one at a time: each one finds the client idle (the direct path) until full
            event = await api.bus.publish("sms.queued", {"n": i, "pad": "x" * (i * 37 % 3000)})
            published.append(event.seq)
        received = [(await client.message(within=10))["seq"] for _ in range(300)]
        assert received == published
