"""WebSocket /v1/events end to end: hypercorn on 127.0.0.1:0, trio-websocket clients, the real EventBus on a
temporary SQLite journal (harness shared with test_api_http)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url, wrap_client_stream

from api.services import ApiSettings
from tests.e2e.test_api_http import TOKENS, RunningApi, running_api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[RunningApi]:
    async with running_api(tmp_path, ApiSettings(ws_auth_timeout=0.5, ws_ping_interval=30.0)) as running:
        yield running


def bearer(who: str = "admin") -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {TOKENS[who][1]}".encode())]


async def connect(
    nursery: trio.Nursery, api: RunningApi, query: str = "", who: str | None = "admin", **kwargs: Any
) -> WebSocketConnection:
    headers = bearer(who) if who else []
    return await connect_websocket_url(nursery, api.ws_url(query), extra_headers=headers, **kwargs)


async def connect_non_reading(nursery: trio.Nursery, api: RunningApi) -> WebSocketConnection:
    """A client that stops reading its socket after one queued message, with a 4 KiB TCP receive buffer."""
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    return await wrap_client_stream(
        nursery, trio.SocketStream(sock), host, "/v1/events", extra_headers=bearer(), message_queue_size=1
    )


async def receive(ws: WebSocketConnection, within: float = 5.0) -> dict[str, Any]:
    with trio.fail_after(within):
        return json.loads(await ws.get_message())


async def close_code(ws: WebSocketConnection, within: float = 5.0) -> int:
    """Read until the server closes; return its close code."""
    with trio.fail_after(within):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code


async def publish(api: RunningApi, n: int, type: str = "sms.queued") -> list[int]:
    return [(await api.bus.publish(type, {"n": i})).seq for i in range(n)]


async def test_hello_then_live_event_with_the_bus_bytes(api: RunningApi, nursery: trio.Nursery) -> None:
    await publish(api, 2)
    ws = await connect(nursery, api, who="reader")
    hello = await receive(ws)
    assert hello == {"type": "hello", "epoch": api.bus.epoch, "seq": api.bus.last_seq}
    event = await api.bus.publish("sms.sent", {"id": "msg_1", "parts": 2})
    with trio.fail_after(5):
        frame = await ws.get_message()
    assert frame == event.payload.decode()  # the bytes serialised once by the bus, untouched
    envelope = json.loads(frame)
    assert envelope == {
        "id": f"{api.bus.epoch}:{hello['seq'] + 1}",
        "type": "sms.sent",
        "epoch": api.bus.epoch,
        "seq": hello["seq"] + 1,
        "time": event.time,
        "data": {"id": "msg_1", "parts": 2},
    }
    await ws.aclose()


async def test_auth_by_first_message(api: RunningApi, nursery: trio.Nursery) -> None:
    ws = await connect(nursery, api, who=None)
    await ws.send_message(json.dumps({"type": "auth", "token": TOKENS["reader"][1]}))
    assert (await receive(ws))["type"] == "hello"
    await publish(api, 1)
    assert (await receive(ws))["type"] == "sms.queued"
    await ws.aclose()


@pytest.mark.parametrize(
    ("first_message", "code"),
    [
        (None, 4001),  # nothing within ws_auth_timeout
        ('{"type": "hello"}', 4001),
        ("not json", 4001),
        ('{"type": "auth", "token": "wrong"}', 4003),
        (json.dumps({"type": "auth", "token": TOKENS["sender"][1]}), 4003),  # no events:read scope
    ],
)
async def test_auth_failures_close_with_4001_or_4003(
    api: RunningApi, nursery: trio.Nursery, first_message: str | None, code: int
) -> None:
    ws = await connect(nursery, api, who=None)
    if first_message is not None:
        await ws.send_message(first_message)
    assert await close_code(ws) == code


@pytest.mark.parametrize(("header", "code"), [("Bearer wrong", 4003), ("Basic abc", 4003)])
async def test_bad_header_token_closes_with_4003(
    api: RunningApi, nursery: trio.Nursery, header: str, code: int
) -> None:
    ws = await connect_websocket_url(
        nursery, api.ws_url(), extra_headers=[(b"authorization", header.encode())]
    )
    assert await close_code(ws) == code
    ws2 = await connect(nursery, api, who="sender")  # valid token, no events:read
    assert await close_code(ws2) == 4003


@pytest.mark.parametrize("query", ["since=garbage", "since=abc:", "types=calls.*", "token=abc", "foo=1"])
async def test_bad_query_closes_with_4000_after_an_error_frame(
    api: RunningApi, nursery: trio.Nursery, query: str
) -> None:
    ws = await connect(nursery, api, query)
    error = await receive(ws)
    assert error["type"] == "error" and error["code"] == "invalid_parameter"
    assert await close_code(ws) == 4000


async def test_resume_with_since_has_no_gap_and_no_duplicate(api: RunningApi, nursery: trio.Nursery) -> None:
    ws = await connect(nursery, api)
    hello = await receive(ws)
    await publish(api, 3)
    got = [(await receive(ws))["seq"] for _ in range(3)]
    assert got == [hello["seq"] + 1, hello["seq"] + 2, hello["seq"] + 3]
    await ws.aclose()

    await publish(api, 4)  # missed while disconnected
    last = got[-1]
    # Publish concurrently with the reconnection: replay and live must join exactly.
    async with trio.open_nursery() as publishers:
        publishers.start_soon(publish, api, 20)
        ws = await connect(nursery, api, f"since={api.bus.epoch}:{last}")
        assert (await receive(ws))["type"] == "hello"
    seqs = [(await receive(ws))["seq"] for _ in range(24)]
    assert seqs == list(range(last + 1, last + 25))
    await publish(api, 1)
    assert (await receive(ws))["seq"] == last + 25
    with trio.move_on_after(0.2):
        extra = await ws.get_message()
        pytest.fail(f"unexpected frame {extra}")
    await ws.aclose()


@pytest.mark.parametrize(
    ("since", "reason"), [("0123456789abcdef:1", "epoch_changed"), ("{epoch}:999", "ahead")]
)
async def test_unknown_resume_point_gets_resync_required(
    api: RunningApi, nursery: trio.Nursery, since: str, reason: str
) -> None:
    await publish(api, 2)
    ws = await connect(nursery, api, "since=" + since.format(epoch=api.bus.epoch))
    hello = await receive(ws)
    resync = await receive(ws)
    assert resync["type"] == "resync_required" and resync["reason"].startswith(reason)
    assert resync["epoch"] == api.bus.epoch and resync["seq"] == hello["seq"] == api.bus.last_seq
    await publish(api, 1)
    assert (await receive(ws))["seq"] == hello["seq"] + 1  # live events follow the resync marker
    await ws.aclose()


async def test_resume_after_journal_reset_needs_resync(api: RunningApi, nursery: trio.Nursery) -> None:
    await publish(api, 3)
    old_epoch = api.bus.epoch
    await api.store.reset_journal()
    ws = await connect(nursery, api, f"since={old_epoch}:2")
    await receive(ws)
    assert (await receive(ws))["reason"] == "epoch_changed"
    await ws.aclose()


async def test_types_filter(api: RunningApi, nursery: trio.Nursery) -> None:
    ws = await connect(nursery, api, "types=modem.*,sms.failed")
    await receive(ws)
    await api.bus.publish("sms.queued", {})
    await api.bus.publish("modem.state_changed", {"name": "gsm0"})
    await api.bus.publish("sms.sent", {})
    await api.bus.publish("sms.failed", {})
    assert [(await receive(ws))["type"] for _ in range(2)] == ["modem.state_changed", "sms.failed"]
    await ws.aclose()


async def test_application_ping_and_pong(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with running_api(tmp_path, ApiSettings(ws_ping_interval=0.2)) as api:
        ws = await connect(nursery, api)
        await receive(ws)
        assert await receive(ws, within=2) == {"type": "ping"}
        await ws.send_message('{"type":"ping"}')
        frames = [await receive(ws, within=2) for _ in range(2)]
        assert {"type": "pong"} in frames
        await ws.aclose()


async def test_slow_client_is_closed_with_4008_and_the_fast_one_keeps_receiving(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with running_api(tmp_path, ApiSettings(ws_queue_size=8)) as api:
        # trio-websocket stops reading the socket when its queue (1 message) is full; with a 4 KiB receive
        # buffer, TCP back-pressure soon blocks the server's writes to this client: its bus queue overflows.
        slow = await connect_non_reading(nursery, api)
        fast = await connect(nursery, api)
        await receive(slow)
        await receive(fast)
        fast_seqs: list[int] = []

        async def read_fast() -> None:
            while True:
                envelope = json.loads(await fast.get_message())
                fast_seqs.append(envelope["seq"])
                if envelope["data"]["pad"] == "after":
                    return

        big = "x" * 16384
        published: list[int] = []
        with trio.fail_after(30):
            async with trio.open_nursery() as inner:
                inner.start_soon(read_fast)
                while api.bus.subscriber_count == 2:
                    started = trio.current_time()
                    published.append((await api.bus.publish("sms.queued", {"pad": big})).seq)
                    assert trio.current_time() - started < 1.0  # the slow client never slows publishers
                    assert len(published) < 2000, "the slow client never overflowed"
                published.append((await api.bus.publish("sms.queued", {"pad": "after"})).seq)
        assert fast_seqs == published
        assert len(published) > 8 + 1  # more than the queue: the overflow came from back-pressure

        # The slow client now reads: it gets what was already written (a strict prefix), then the 4008 close.
        slow_seqs: list[int] = []
        with trio.fail_after(10):
            try:
                while True:
                    slow_seqs.append(json.loads(await slow.get_message())["seq"])
            except ConnectionClosed as closed:
                assert closed.reason.code == 4008
        assert slow_seqs == published[: len(slow_seqs)] and len(slow_seqs) < len(published)
        metrics = await _metrics_text(api)
        assert 'hcrm_api_ws_clients_closed_total{reason="slow_consumer"} 1.0' in metrics
        await fast.aclose()


async def _metrics_text(api: RunningApi) -> str:
    async with httpx.AsyncClient(base_url=api.url) as http:
        return (await http.get("/metrics", headers={"Authorization": f"Bearer {TOKENS['admin'][1]}"})).text


async def test_internal_error_closes_with_1011(api: RunningApi, nursery: trio.Nursery) -> None:
    def broken_subscribe(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bus exploded")

    api.bus.subscribe = broken_subscribe  # type: ignore[method-assign]
    ws = await connect(nursery, api)
    with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
        await ws.get_message()
    assert closed.value.reason.code == 1011 and "bus exploded" not in (closed.value.reason.reason or "")


async def test_shutdown_closes_clients_with_1001_quickly(tmp_path: Path, nursery: trio.Nursery) -> None:
    stop = trio.Event()
    async with running_api(tmp_path, shutdown_trigger=stop.wait) as api:
        ws = await connect(nursery, api)
        await receive(ws)
        started = trio.current_time()
        stop.set()
        assert await close_code(ws) == 1001
        assert trio.current_time() - started < 1.0


async def test_a_hung_client_cannot_block_shutdown(tmp_path: Path, nursery: trio.Nursery) -> None:
    """hypercorn's writes are shielded from cancellation; TCP_USER_TIMEOUT is what frees a write to a client
    that never reads again (its kernel keeps the window at zero), so the server can still stop."""
    stop = trio.Event()
    stopped = trio.Event()
    settings = ApiSettings(ws_queue_size=4, tcp_user_timeout=1.0, graceful_timeout=0.5)
    async with running_api(tmp_path, settings, shutdown_trigger=stop.wait) as api:
        hung = await connect_non_reading(nursery, api)
        await receive(hung)
        with trio.fail_after(10):
            while api.bus.subscriber_count:
                await api.bus.publish("sms.queued", {"pad": "x" * 16384})
        stop.set()
        started = trio.current_time()
        with trio.move_on_after(5):
            await api.server_done.wait()
            stopped.set()
        assert stopped.is_set(), "serve() did not return: a write to the hung client is still blocked"
        assert trio.current_time() - started < 5.0
