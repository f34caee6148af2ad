"""H11Transport (gateway/sms/http_transport.py) against a tiny trio + h11 server on loopback: keep-alive
reuse, servers that close, chunked and close-delimited answers, a server dying mid-answer, cancellation,
stale idle connections, a streamed request body, https with a self-signed certificate (made with the openssl
command; the https tests are skipped without it), and the same failures seen through HttpSmsRoute."""

from __future__ import annotations

import json
import ssl
import subprocess
from collections import deque
from functools import partial
from pathlib import Path

import h11
import httpx
import pytest
import trio

from gateway.sms.http_provider import HttpProviderConfig, HttpSmsRoute
from gateway.sms.http_transport import H11Transport

JP = "+819012345678"


class TinyServer:
    """One h11 connection per task. ``script`` holds what to do with the next requests (default "ok"):

    ok        200 with Content-Length, keep-alive
    close     200 with "Connection: close", then close
    chunked   200 with Transfer-Encoding: chunked, the body in three chunks
    eof       200 without length or chunking, the body delimited by closing the connection
    die       a Content-Length of 500 but only 10 bytes of body, then close
    hang      no answer; wait until the client closes the connection
    drop      200 like ok (keep-alive) but close the connection right after it
    early     a 103 Early Hints interim answer, then like ok
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self.ssl_context = ssl_context
        self.script: deque[str] = deque()
        self.connections = 0
        self.requests: list[tuple[int, bytes, bytes, dict[bytes, bytes], bytes]] = []  # conn, method, ...
        self.closed_by_client = 0  # connections the client closed while a request waited for its answer
        self.closed_idle = 0  # connections the client closed between requests
        self.client_gone = trio.Event()
        self.url = ""

    async def start(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://{'localhost' if self.ssl_context else '127.0.0.1'}:{port}"
        return self.url

    async def _handle(self, raw: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        stream: trio.abc.Stream = raw
        try:
            if self.ssl_context is not None:
                stream = trio.SSLStream(raw, self.ssl_context, server_side=True, https_compatible=True)
                await stream.do_handshake()
            await self._serve(stream, number)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(raw)

    async def _serve(self, stream: trio.abc.Stream, number: int) -> None:
        h = h11.Connection(h11.SERVER)
        while True:
            request, body = None, b""
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    h.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    self.closed_idle += 1
                    self.client_gone.set()
                    return
            assert request is not None
            self.requests.append((number, request.method, request.target, dict(request.headers), body))
            action = self.script.popleft() if self.script else "ok"
            payload = json.dumps({"result": {"status": "ok", "id": f"id-{len(self.requests)}"}}).encode()
            if action == "hang":
                while await stream.receive_some(65536):
                    pass
                self.closed_by_client += 1
                self.client_gone.set()
                return
            if action == "die":
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n" + payload[:10])
                return
            if action == "eof":
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + payload)
                return
            headers = [(b"content-type", b"application/json")]
            if action == "early":
                await stream.send_all(h.send(h11.InformationalResponse(status_code=103, headers=[])))
            if action == "chunked":
                headers.append((b"transfer-encoding", b"chunked"))
                data = h.send(h11.Response(status_code=200, headers=headers))
                for part in (payload[:5], payload[5:20], payload[20:]):
                    data += h.send(h11.Data(data=part))
            else:
                headers.append((b"content-length", str(len(payload)).encode()))
                if action == "close":
                    headers.append((b"connection", b"close"))
                data = h.send(h11.Response(status_code=200, headers=headers))
                data += h.send(h11.Data(data=payload))
            data += h.send(h11.EndOfMessage())
            await stream.send_all(data)
            if action == "drop" or h.our_state is not h11.DONE:
                return
            h.start_next_cycle()


@pytest.fixture
async def server(nursery):
    tiny = TinyServer()
    await tiny.start(nursery)
    return tiny


def _client(transport: H11Transport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=None)


def _route_config(url: str, **overrides) -> HttpProviderConfig:
    settings = {
        "name": "tiny",
        "url": url + "/sms",
        "body": {"to": "{to}", "text": "{text}", "reference": "{message_id}"},
        "success": {"json_path": '$.result.status == "ok"'},
        "provider_id": {"json_path": "$.result.id"},
        "timeout_s": 5.0,
        "retry": {"attempts": 1},
    }
    settings.update(overrides)
    return HttpProviderConfig(**settings)


# --- the transport on its own ------------------------------------------------------------------------------
async def test_keep_alive_one_connection_serves_several_requests(server):
    transport = H11Transport()
    async with _client(transport) as client:
        for i in range(5):
            response = await client.post(server.url + f"/sms?n={i}", json={"i": i})
            assert response.status_code == 200
            assert response.json()["result"]["id"] == f"id-{i + 1}"
        (idle,) = transport.connections.values()
        assert len(idle) == 1 and idle[0].exchanges == 5
    assert server.connections == 1 and transport.opened == 1
    assert [r[0] for r in server.requests] == [1] * 5
    number, method, target, headers, body = server.requests[2]
    assert (method, target, json.loads(body)) == (b"POST", b"/sms?n=2", {"i": 2})
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"host"] == server.url.removeprefix("http://").encode()


async def test_concurrent_requests_open_connections_and_keep_at_most_max_idle(server):
    transport = H11Transport(max_idle=2)
    async with _client(transport) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(client.get, server.url + "/")
        assert server.connections == 4
        assert [len(idle) for idle in transport.connections.values()] == [2]
        for _ in range(3):
            await client.get(server.url + "/")
    assert server.connections == 4  # the two kept connections served the next requests


async def test_a_server_that_closes_after_the_answer(server):
    server.script.extend(["close", "ok", "ok"])
    transport = H11Transport()
    async with _client(transport) as client:
        statuses = [(await client.get(server.url + "/")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert [r[0] for r in server.requests] == [1, 2, 2]  # Connection: close honoured, then keep-alive again
    assert transport.opened == 2


async def test_chunked_answer_is_read_whole_and_the_connection_reused(server):
    server.script.extend(["chunked", "chunked"])
    async with _client(H11Transport()) as client:
        first = await client.get(server.url + "/")
        second = await client.get(server.url + "/")
    assert first.json() == {"result": {"status": "ok", "id": "id-1"}}
    assert second.json()["result"]["id"] == "id-2"
    assert first.headers["transfer-encoding"] == "chunked"
    assert server.connections == 1


async def test_an_answer_delimited_by_closing_is_read_and_the_connection_not_reused(server):
    server.script.extend(["eof", "ok"])
    transport = H11Transport()
    async with _client(transport) as client:
        first = await client.get(server.url + "/")
        assert first.json()["result"]["id"] == "id-1"
        assert not any(transport.connections.values())
        await client.get(server.url + "/")
    assert server.connections == 2


async def test_interim_answers_are_skipped(server):
    server.script.append("early")
    async with _client(H11Transport()) as client:
        response = await client.get(server.url + "/")
    assert response.status_code == 200 and response.json()["result"]["id"] == "id-1"
    assert (response.http_version, response.reason_phrase) == ("HTTP/1.1", "")


async def test_a_server_dying_mid_answer_is_an_error_and_the_connection_is_dropped(server):
    server.script.append("die")
    transport = H11Transport()
    async with _client(transport) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending complete message body"):
            await client.get(server.url + "/")
        assert not any(transport.connections.values())
        assert (await client.get(server.url + "/")).status_code == 200
    assert server.connections == 2


async def test_cancelling_mid_request_drops_the_connection_and_the_next_request_works(server):
    server.script.append("hang")
    transport = H11Transport()
    async with _client(transport) as client:
        with trio.move_on_after(0.2) as scope:
            await client.post(server.url + "/sms", content=b"x" * 1000)
        assert scope.cancelled_caught
        assert not any(transport.connections.values())
        with trio.fail_after(5):
            await server.client_gone.wait()  # the connection was closed, not left half-used
        response = await client.get(server.url + "/")
    assert response.status_code == 200 and response.json()["result"]["id"] == "id-2"
    assert server.closed_by_client == 1 and server.connections == 2


async def test_an_idle_connection_the_server_closed_is_not_used(server):
    server.script.append("drop")  # keep-alive answer, then the server closes the idle connection anyway
    transport = H11Transport()
    async with _client(transport) as client:
        await client.get(server.url + "/")
        await trio.sleep(0.05)  # let the FIN arrive
        response = await client.get(server.url + "/")  # no error: a new connection is opened instead
    assert response.status_code == 200
    assert server.connections == 2


async def test_idle_connections_expire():
    now = [0.0]
    tiny = TinyServer()
    async with trio.open_nursery() as nursery:
        await tiny.start(nursery)
        transport = H11Transport(keepalive_expiry=5.0, clock=lambda: now[0])
        async with _client(transport) as client:
            await client.get(tiny.url + "/")
            now[0] = 4.9
            await client.get(tiny.url + "/")
            assert tiny.connections == 1
            now[0] = 10.0
            await client.get(tiny.url + "/")
            assert tiny.connections == 2
        nursery.cancel_scope.cancel()


async def test_a_streamed_request_body_is_sent_chunked(server):
    async def parts():
        for part in (b"one,", b"", b"two,", b"three"):
            yield part

    async with _client(H11Transport()) as client:
        response = await client.post(server.url + "/upload", content=parts())
    assert response.status_code == 200
    (_, _, _, headers, body) = server.requests[0]
    assert headers[b"transfer-encoding"] == b"chunked" and body == b"one,two,three"


async def test_closing_the_transport_closes_idle_connections(server):
    transport = H11Transport()
    async with _client(transport) as client:
        await client.get(server.url + "/")
        assert server.closed_idle == 0
    with trio.fail_after(5):
        await server.client_gone.wait()
    assert server.closed_idle == 1 and not transport.connections
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(httpx.Request("GET", server.url + "/"))


async def test_connection_refused_and_unsupported_scheme():
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with _client(H11Transport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://127.0.0.1/")


# --- through the route: errors become temporary failures ----------------------------------------------------
async def test_route_server_dying_mid_answer_is_a_temporary_failure(server):
    server.script.append("die")
    async with HttpSmsRoute(_route_config(server.url)) as route:
        failed = await route.send(JP, "hello", message_id="m1")
        ok = await route.send(JP, "hello", message_id="m2")
    assert (failed.accepted, failed.permanent, failed.status_code) == (False, False, None)
    assert failed.error.startswith("gave up after 1 attempts: RemoteProtocolError: ")
    assert ok.accepted and ok.provider_id == "id-2"
    assert server.connections == 2  # the broken connection was not reused


async def test_route_retries_on_a_fresh_connection_after_a_timeout(server):
    server.script.append("hang")
    config = _route_config(server.url, timeout_s=0.3, retry={"attempts": 2, "backoff_initial_s": 0.01})
    async with HttpSmsRoute(config) as route:
        result = await route.send(JP, "hello", message_id="m1")
    assert result.accepted and result.attempts == 2 and result.provider_id == "id-2"
    assert [r[0] for r in server.requests] == [1, 2]


async def test_route_keeps_connections_alive(server):
    async with HttpSmsRoute(_route_config(server.url, concurrency=2)) as route:
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(partial(route.send, JP, "hello", message_id=f"m{i}"))
    assert len(server.requests) == 10
    assert server.connections <= 2
    (_, method, target, headers, body) = server.requests[0]
    assert (method, target) == (b"POST", b"/sms")
    assert headers[b"content-type"] == b"application/json; charset=utf-8"
    assert headers[b"user-agent"].startswith(b"python-httpx/")
    assert json.loads(body)["to"] == JP


# --- https --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    # The openssl command (Debian's openssl package, on every machine this project targets) makes the
    # certificate; without it this fixture fails rather than hiding the https tests.
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost"],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_server(nursery, certificate):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tiny = TinyServer(ssl_context=context)
    await tiny.start(nursery)
    return tiny


async def test_https_with_keep_alive(tls_server, certificate):
    transport = H11Transport(ssl_context=ssl.create_default_context(cafile=str(certificate[0])))
    async with _client(transport) as client:
        first = await client.post(tls_server.url + "/sms", json={"a": 1})
        tls_server.script.append("chunked")
        second = await client.get(tls_server.url + "/")
    assert first.json()["result"]["id"] == "id-1" and second.json()["result"]["id"] == "id-2"
    assert tls_server.connections == 1
    assert tls_server.requests[0][3][b"host"] == tls_server.url.removeprefix("https://").encode()


async def test_https_certificate_is_checked(tls_server):
    async with _client(H11Transport(ssl_context=ssl.create_default_context())) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(tls_server.url + "/")


async def test_route_over_https(tls_server, certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # httpx.create_ssl_context() trusts it
    async with HttpSmsRoute(_route_config(tls_server.url)) as route:
        results = [await route.send(JP, "hello", message_id=f"m{i}") for i in range(3)]
    assert [r.provider_id for r in results] == ["id-1", "id-2", "id-3"]
    assert tls_server.connections == 1


# --- the route's cheaper request building gives the same results -------------------------------------------
@pytest.mark.parametrize(
    "template",
    ["{to}", "{text}", "literal", "", "{{to}}", "a {to} b", "{to}{text}", "{unknown}", "}{", "{{", "{ to }"],
)
@pytest.mark.parametrize("text", ["hello", "", "   ", "{to}", "入院"])
def test_fill_fast_paths_match_substitute(template, text):
    from gateway.sms.http_provider import RequestBuildError, _fill
    from gateway.sms.templates import MissingVariables, TemplateError, substitute

    values = {"to": "+81 90", "text": text}
    try:
        expected: object = substitute(template, values).text
    except MissingVariables:
        expected = RequestBuildError
    except TemplateError:
        expected = TemplateError
    try:
        got: object = _fill(template, values, "where")
    except RequestBuildError:
        got = RequestBuildError
    except TemplateError:
        got = TemplateError
    assert got == expected


async def test_route_uses_a_proxy_from_the_environment(server, monkeypatch):
    # httpx ignores proxy variables when given a transport: the route then keeps httpx's own transport.
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with HttpSmsRoute(_route_config("http://provider.test")) as route:
        result = await route.send(JP, "hello", message_id="m1")
    assert result.accepted
    assert server.requests[0][2] == b"http://provider.test/sms"  # absolute form: sent to the proxy
