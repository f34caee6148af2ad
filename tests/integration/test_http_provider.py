"""HTTP SMS provider route: pure request/response rules, then the route against the simulator over loopback
sockets (success, retries, no retry on 4xx, timeouts, concurrency, rate limit, signed delivery reports), then
exact timing of backoff, Retry-After and the rate limit on trio's MockClock (httpx.MockTransport, no sockets:
the autojump clock would otherwise jump while a real socket is waiting)."""

from __future__ import annotations

import json
import random
import socket
from functools import partial

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from pydantic import ValidationError

from gateway.sms.http_provider import (
    HttpProviderConfig,
    HttpSmsRoute,
    JsonPath,
    JsonPathError,
    RequestBuildError,
    RetryPolicy,
    TokenBucket,
    backoff_delay,
    build_request,
    classify_response,
    placeholder_values,
)
from gateway.sms.provider_reports import (
    ProviderReportReceiver,
    ProviderReportsConfig,
    ReportError,
)
from simulators.http_provider import HttpProviderSimulator

JP = "+819012345678"
SECRET = "dlr-secret-0123456789abcdef"


def sim_config(base_url: str, **overrides) -> HttpProviderConfig:
    """A route for the simulator's documented API."""
    settings = {
        "name": "sim",
        "url": base_url + "/sms",
        "body": {"to": "{to}", "text": "{text}", "reference": "{message_id}"},
        "success": {"json_path": '$.result.status == "ok"'},
        "provider_id": {"json_path": "$.result.id"},
        "timeout_s": 5.0,
        "retry": {"attempts": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
    }
    settings.update(overrides)
    return HttpProviderConfig(**settings)


# --- pure parts: JSON path, config validation, request building, classification --------------------------
def test_json_path_extracts_and_compares():
    doc = {"result": {"status": "ok", "ids": ["a", "b"], "n": 1, "flag": True}, "odd-key": {"x": None}}
    assert JsonPath.parse("$.result.ids[1]").extract(doc) == "b"
    assert JsonPath.parse("$.result.ids[-1]").extract(doc) == "b"
    assert JsonPath.parse('$["odd-key"].x').holds(doc) is False  # exists but null
    assert JsonPath.parse('$.result.status == "ok"').holds(doc)
    assert JsonPath.parse('$.result.status != "ok"').holds(doc) is False
    assert JsonPath.parse("$.result.n == 1").holds(doc)
    assert JsonPath.parse("$.result.flag == 1").holds(doc) is False  # JSON true is not 1
    assert JsonPath.parse('$.missing == "ok"').holds(doc) is False
    assert JsonPath.parse("$.result.ids[5]").holds(doc) is False


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [("result.status", r"starts with '\$'"), ("$.a..b", "position 3"), ("$.a == ok", "JSON literal")],
)
def test_json_path_errors(expression, fragment):
    with pytest.raises(JsonPathError, match=fragment):
        JsonPath.parse(expression)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"body": {"text": "{txt}"}}, r"body.text: unknown placeholder \{txt\}"),
        ({"headers": {"Authorization": "Bearer {token"}}, "headers.Authorization: unclosed"),
        ({"url": "ftp://example.com/sms"}, "not an http"),
        ({"url": "http://{to}.example.com/sms"}, "host part"),
        ({"success": {"json_path": "result"}}, "starts with '\\$'"),
        ({"success": {"regex": "("}}, "invalid regular expression"),
        ({"provider_id": {}}, "exactly one of json_path or regex"),
        ({"variables": {"to": "x"}}, "hide the built-in placeholder"),
        ({"body_format": "form", "body": {"a": {"b": "c"}}}, "form fields must be plain values"),
        ({"retry": {"attempts": 0}}, "attempts"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_config_errors_name_the_field(overrides, fragment):
    with pytest.raises(ValidationError, match=fragment):
        sim_config("http://127.0.0.1:1", **overrides)


def test_build_json_form_url_and_headers():
    config = sim_config(
        "http://127.0.0.1:9",
        url="http://127.0.0.1:9/v1/{account}/sms/{to}",
        query={"ref": "{message_id}"},
        headers={"X-Api-Key": "{api_key}"},
        variables={"account": "acct 1", "api_key": "k-123"},
        body={
            "to": "{to_digits}",
            "text": "{text}",
            "meta": {"from": "{sender}"},
            "n": 2,
            "list": ["{provider}"],
        },
        sender="HOSPITAL",
    )
    values = placeholder_values(config, to=JP, text="入院費用 {x} & more", message_id="m/1")
    request = build_request(config, values)
    assert request.url == "http://127.0.0.1:9/v1/acct%201/sms/%2B819012345678?ref=m%2F1"
    assert request.headers == {"X-Api-Key": "k-123", "Content-Type": "application/json; charset=utf-8"}
    assert json.loads(request.content) == {
        "to": "819012345678",
        "text": "入院費用 {x} & more",
        "meta": {"from": "HOSPITAL"},
        "n": 2,
        "list": ["sim"],
    }
    form = build_request(
        config.model_copy(update={"body_format": "form", "body": {"to": "{to}", "text": "{text}"}}), values
    )
    expected = b"to=%2B819012345678&text=%E5%85%A5%E9%99%A2%E8%B2%BB%E7%94%A8%20%7Bx%7D%20%26%20more"
    assert form.content == expected
    assert form.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_build_reports_values_that_are_missing_or_unsafe_in_headers():
    config = sim_config("http://127.0.0.1:9", body={"from": "{sender}"})
    with pytest.raises(RequestBuildError, match="body.from: no value for sender"):
        build_request(config, placeholder_values(config, to=JP, text="x", message_id="m"))
    config = sim_config("http://127.0.0.1:9", headers={"X-Ref": "{text}"})
    with pytest.raises(RequestBuildError, match="headers.X-Ref: the value must be ASCII"):
        build_request(config, placeholder_values(config, to=JP, text="日本語", message_id="m"))


@pytest.mark.parametrize(
    ("status", "body", "verdict", "provider_id", "fragment"),
    [
        (200, b'{"result": {"status": "ok", "id": "p1"}}', "accepted", "p1", None),
        (202, b'{"result": {"status": "ok", "id": 42}}', "accepted", "42", None),
        (200, b'{"result": {"status": "ok"}}', "accepted", None, "no provider id found"),
        (200, b'{"result": {"status": "error", "error": "blocked"}}', "permanent", None, "does not hold"),
        (200, b"<html>maintenance</html>", "permanent", None, "not JSON"),
        (204, b"", "permanent", None, "HTTP 204"),  # 2xx outside the success set
        (400, b'{"error": "bad number"}', "permanent", None, "HTTP 400"),
        (404, b"", "permanent", None, "HTTP 404"),
        (429, b"slow down", "temporary", None, "HTTP 429"),
        (500, b"oops", "temporary", None, "HTTP 500: oops"),
        (503, b"", "temporary", None, "HTTP 503"),
    ],
)
def test_classification(status, body, verdict, provider_id, fragment):
    result = classify_response(sim_config("http://127.0.0.1:9"), status, {}, body)
    assert (result.verdict, result.provider_id) == (verdict, provider_id)
    if fragment is None:
        assert result.error is None
    else:
        assert fragment in result.error


def test_classification_by_regex_and_retry_after():
    config = sim_config(
        "http://127.0.0.1:9",
        success={"regex": r"^OK\b"},
        provider_id={"regex": r"ID:(?P<id>\w+)"},
    )
    assert classify_response(config, 200, {}, b"OK ID:abc123").provider_id == "abc123"
    assert classify_response(config, 200, {}, b"ERR 17").verdict == "permanent"
    throttled = classify_response(config, 429, {"Retry-After": "3"}, b"")
    assert (throttled.verdict, throttled.retry_after) == ("temporary", 3.0)
    dated = classify_response(config, 503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"")
    assert dated.retry_after is None  # only the seconds form is used


def test_backoff_grows_is_capped_and_jitter_only_shortens():
    policy = RetryPolicy(backoff_initial_s=0.5, multiplier=2, backoff_max_s=3, jitter=0)
    rng = random.Random(1)
    assert [backoff_delay(policy, n, rng) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = RetryPolicy(backoff_initial_s=1, jitter=0.5)
    delays = [backoff_delay(jittered, 1, rng) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert max(delays) - min(delays) > 0.3  # actually spread out


# --- the route against the simulator over loopback --------------------------------------------------------
@pytest.fixture
async def sim(nursery):
    simulator = HttpProviderSimulator(seed=7)
    simulator.base_url = await nursery.start(simulator.serve)
    return simulator


async def test_success_json(sim):
    async with HttpSmsRoute(sim_config(sim.base_url)) as route:
        result = await route.send(JP, "{patient}様 入院費用のお知らせ", message_id="msg_1")
    assert result.accepted and not result.permanent
    assert (result.provider_id, result.status_code, result.attempts) == ("sim-000001", 200, 1)
    assert result.error is None
    (sent,) = sim.sent
    assert (sent.to, sent.text, sent.reference) == (JP, "{patient}様 入院費用のお知らせ", "msg_1")


async def test_success_form_with_sender(sim):
    config = sim_config(
        sim.base_url,
        body_format="form",
        body={"to": "{to}", "text": "{text}", "from": "{sender}"},
        sender="HOSP",
    )
    async with HttpSmsRoute(config) as route:
        result = await route.send(JP, "尊敬的患者，您好 & 再见", message_id="m2")
        override = await route.send(JP, "x", message_id="m3", sender="CLINIC")
    assert result.accepted and override.accepted
    assert [(m.text, m.sender) for m in sim.sent] == [("尊敬的患者，您好 & 再见", "HOSP"), ("x", "CLINIC")]


async def test_5xx_is_retried_then_succeeds(sim):
    sim.fail_next(2, status=503)
    async with HttpSmsRoute(sim_config(sim.base_url)) as route:
        result = await route.send(JP, "hello", message_id="m1")
    assert result.accepted and result.attempts == 3
    assert [r.status for r in sim.requests] == [503, 503, 200]
    assert len(sim.sent) == 1


async def test_5xx_until_attempts_run_out_is_temporary(sim):
    sim.fail_next(5, status=502)
    async with HttpSmsRoute(sim_config(sim.base_url)) as route:
        result = await route.send(JP, "hello", message_id="m1")
    assert not result.accepted and not result.permanent
    assert (result.status_code, result.attempts) == (502, 3)
    assert result.error.startswith("gave up after 3 attempts: HTTP 502")
    assert len(sim.requests) == 3


async def test_4xx_is_not_retried(sim):
    async with HttpSmsRoute(sim_config(sim.base_url)) as route:
        invalid = await route.send("12345", "hello", message_id="m1")
    assert not invalid.accepted and invalid.permanent
    assert (invalid.status_code, invalid.attempts) == (400, 1)
    assert "invalid destination number" in invalid.error
    sim.api_key = "right-key"
    config = sim_config(sim.base_url, headers={"X-Api-Key": "{api_key}"}, variables={"api_key": "wrong-key"})
    async with HttpSmsRoute(config) as route:
        unauthorised = await route.send(JP, "hello", message_id="m2")
    assert (unauthorised.status_code, unauthorised.permanent, unauthorised.attempts) == (401, True, 1)
    assert [r.status for r in sim.requests] == [400, 401]


async def test_200_with_an_error_body_is_permanent(sim):
    sim.blocked_prefixes = ("+8190",)
    async with HttpSmsRoute(sim_config(sim.base_url)) as route:
        result = await route.send(JP, "hello", message_id="m1")
    assert (result.accepted, result.permanent, result.attempts) == (False, True, 1)
    assert "destination blocked" in result.error


async def test_timeout_is_retried():
    simulator = HttpProviderSimulator()
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(simulator.serve)
        simulator.hang_next(1, seconds=30)
        async with HttpSmsRoute(sim_config(base_url, timeout_s=0.5)) as route:
            with trio.fail_after(5):
                result = await route.send(JP, "hello", message_id="m1")
        # Shut the simulator down before pytest-trio checks for leftovers: its hung handler is still sleeping.
        nursery.cancel_scope.cancel()
    assert result.accepted and result.attempts == 2
    assert [m.reference for m in simulator.sent] == ["m1"]


async def test_connection_refused_is_temporary():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with HttpSmsRoute(sim_config(f"http://127.0.0.1:{port}")) as route:
        result = await route.send(JP, "hello", message_id="m1")
    assert (result.accepted, result.permanent, result.status_code, result.attempts) == (False, False, None, 3)
    assert "ConnectError" in result.error


async def test_concurrency_limit_is_respected(sim):
    sim.set_latency(0.05)
    async with HttpSmsRoute(sim_config(sim.base_url, concurrency=3)) as route:
        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(partial(route.send, JP, "hello", message_id=f"m{i}"))
    assert len(sim.sent) == 12
    assert sim.max_in_flight == 3


async def test_rate_limit_is_respected(sim):
    # The simulator answers 429 above 25/s (burst 2, so that one scheduling hiccup on a loaded machine that
    # bunches two requests is not a failure); the route limits itself to 20/s and never hits it.
    sim.set_rate_limit(25, burst=2)
    config = sim_config(sim.base_url, rate_limit={"per_second": 20, "burst": 1}, concurrency=8)
    async with HttpSmsRoute(config) as route:
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(partial(route.send, JP, "hello", message_id=f"m{i}"))
    assert sim.counts["rate_limited"] == 0
    starts = sorted(r.started_at for r in sim.requests)
    assert len(starts) == 8
    assert starts[-1] - starts[0] >= 0.3  # 7 intervals of 1/20 s = 0.35 s; unlimited takes a few ms


async def test_429_waits_for_retry_after(sim):
    sim.set_rate_limit(1, burst=1)
    config = sim_config(sim.base_url, retry={"attempts": 3, "backoff_initial_s": 0.01, "backoff_max_s": 5})
    async with HttpSmsRoute(config) as route:
        first = await route.send(JP, "one", message_id="m1")
        start = trio.current_time()
        second = await route.send(JP, "two", message_id="m2")
        waited = trio.current_time() - start
    assert first.accepted and second.accepted and second.attempts == 2
    assert [r.status for r in sim.requests] == [200, 429, 200]
    assert 0.9 <= waited < 3  # Retry-After: 1


class _ReportEndpoint:
    """A minimal ASGI stand-in for the API route POST /v1/providers/{name}/reports."""

    def __init__(self, receiver: ProviderReportReceiver):
        self.receiver = receiver
        self.reports: list = []
        self.refusals: list[tuple[int, str]] = []
        self.arrived = trio.Event()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self.reports.extend(self.receiver.handle(headers, body))
            status = 204
        except ReportError as exc:
            self.refusals.append((exc.http_status, str(exc)))
            status = exc.http_status
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        self.arrived.set()


async def _serve_endpoint(nursery, endpoint) -> str:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    binds = await nursery.start(partial(hypercorn_serve, endpoint, config))
    return binds[0]


async def test_delivery_report_callback_is_received_and_verified(sim, nursery):
    reports_config = ProviderReportsConfig(
        auth={"method": "hmac_sha256", "secrets": [SECRET]}, error_field="$.error_code"
    )
    endpoint = _ReportEndpoint(ProviderReportReceiver("sim", reports_config))
    callback_base = await _serve_endpoint(nursery, endpoint)
    sim.callback_secret = SECRET
    sim.report_delay = 0.05
    sim.undeliverable_prefixes = ("+8180",)
    config = sim_config(
        sim.base_url,
        body={"to": "{to}", "text": "{text}", "reference": "{message_id}", "callback_url": "{callback_url}"},
        callback_url=callback_base + "/v1/providers/sim/reports",
    )
    async with HttpSmsRoute(config) as route:
        delivered = await route.send(JP, "hello", message_id="m1")
        undelivered = await route.send("+818012345678", "hello", message_id="m2")
    with trio.fail_after(5):
        await sim.wait_reports(2)
    assert [r.response_status for r in sim.reports] == [204, 204]
    by_id = {r.provider_id: r for r in endpoint.reports}
    assert by_id[delivered.provider_id].status == "delivered"
    assert by_id[delivered.provider_id].error_code == "000"
    assert by_id[undelivered.provider_id].status == "undelivered"
    assert by_id[undelivered.provider_id].raw_status == "UNDELIV"
    assert endpoint.refusals == []


async def test_delivery_report_with_a_wrong_secret_is_refused(sim, nursery):
    reports_config = ProviderReportsConfig(auth={"method": "hmac_sha256", "secrets": [SECRET]})
    endpoint = _ReportEndpoint(ProviderReportReceiver("sim", reports_config))
    callback_base = await _serve_endpoint(nursery, endpoint)
    sim.callback_secret = "not-the-shared-secret-000"
    sim.report_delay = 0.0
    sim.callback_url = callback_base + "/v1/providers/sim/reports"
    async with HttpSmsRoute(sim_config(sim.base_url)) as route:
        assert (await route.send(JP, "hello", message_id="m1")).accepted
    with trio.fail_after(5):
        await sim.wait_reports(1)
    assert sim.reports[0].response_status == 401
    assert endpoint.reports == []
    assert endpoint.refusals == [(401, "X-Signature does not match the body")]


# --- exact timing on MockClock (no sockets) ---------------------------------------------------------------
def _mock_route(handler, **overrides) -> HttpSmsRoute:
    config = sim_config("http://provider.test", **overrides)
    return HttpSmsRoute(config, transport=httpx.MockTransport(handler), rng=random.Random(0))


def _ok(provider_id: str = "p") -> httpx.Response:
    return httpx.Response(200, json={"result": {"status": "ok", "id": provider_id}})


async def test_backoff_schedule_is_exact(autojump_clock):
    times: list[float] = []

    async def handler(request):
        times.append(trio.current_time())
        return httpx.Response(503) if len(times) < 4 else _ok()

    retry = {"attempts": 4, "backoff_initial_s": 0.5, "multiplier": 2, "backoff_max_s": 30, "jitter": 0}
    async with _mock_route(handler, retry=retry) as route:
        result = await route.send(JP, "hello", message_id="m1")
    assert result.accepted and result.attempts == 4
    assert [t - times[0] for t in times] == [0, 0.5, 1.5, 3.5]


async def test_retry_after_is_honoured_and_capped(autojump_clock):
    times: list[float] = []

    async def handler(request):
        times.append(trio.current_time())
        if len(times) == 1:
            return httpx.Response(429, headers={"Retry-After": "7"})
        if len(times) == 2:
            return httpx.Response(503, headers={"Retry-After": "3600"})
        return _ok()

    retry = {"attempts": 3, "backoff_initial_s": 0.5, "backoff_max_s": 20, "jitter": 0}
    async with _mock_route(handler, retry=retry) as route:
        result = await route.send(JP, "hello", message_id="m1")
    assert result.accepted
    assert [t - times[0] for t in times] == [0, 7, 27]  # 7 s as asked; 3600 s capped at backoff_max_s


async def test_timeout_per_attempt_on_mock_clock(autojump_clock):
    times: list[float] = []

    async def handler(request):
        times.append(trio.current_time())
        await trio.sleep(100)
        return _ok()

    retry = {"attempts": 2, "backoff_initial_s": 1, "jitter": 0}
    async with _mock_route(handler, timeout_s=2, retry=retry) as route:
        result = await route.send(JP, "hello", message_id="m1")
    assert (result.accepted, result.permanent, result.status_code) == (False, False, None)
    assert result.error == "gave up after 2 attempts: no answer in 2 s"
    assert [t - times[0] for t in times] == [0, 3]


async def test_rate_limit_on_mock_clock(autojump_clock):
    times: list[float] = []

    async def handler(request):
        times.append(trio.current_time())
        return _ok()

    async with _mock_route(handler, rate_limit={"per_second": 5, "burst": 2}, concurrency=10) as route:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(partial(route.send, JP, "hello", message_id=f"m{i}"))
    assert [round(t - start, 9) for t in times] == [0, 0, 0.2, 0.4, 0.6, 0.8]


async def test_token_bucket_refills_while_idle(autojump_clock):
    bucket = TokenBucket(rate=2, burst=3)
    start = trio.current_time()
    for _ in range(3):
        await bucket.acquire()
    assert trio.current_time() == start
    await bucket.acquire()
    assert trio.current_time() - start == 0.5
    await trio.sleep(10)  # refills to burst (3), not 20
    mark = trio.current_time()
    for _ in range(4):
        await bucket.acquire()
    assert trio.current_time() - mark == 0.5


async def test_concurrency_on_mock_clock(autojump_clock):
    active = peak = 0

    async def handler(request):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await trio.sleep(1)
        active -= 1
        return _ok()

    async with _mock_route(handler, concurrency=2) as route:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(partial(route.send, JP, "hello", message_id=f"m{i}"))
        elapsed = trio.current_time() - start
    assert peak == 2
    assert elapsed == 3


async def test_request_build_errors_are_permanent_without_a_request():
    def handler(request):
        raise AssertionError("no request may be sent")

    async with _mock_route(handler, body={"from": "{sender}"}) as route:
        result = await route.send(JP, "hello", message_id="m1")
    assert (result.accepted, result.permanent, result.attempts) == (False, True, 0)
    assert result.error == "provider sim: body.from: no value for sender"


async def test_an_undecodable_answer_is_permanent_not_an_exception():
    def handler(request):
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip at all")

    async with _mock_route(handler) as route:
        result = await route.send(JP, "hello", message_id="m1")
    assert (result.accepted, result.permanent, result.attempts) == (False, True, 1)
    assert result.error.startswith("DecodingError")


# --- the simulator's own HTTP/1.1 server (trio + h11) on a raw socket -------------------------------------
async def _raw_exchange(base_url: str, request: bytes, answers: int) -> list[bytes]:
    """Send ``request`` in one write; read until ``answers`` complete responses (Content-Length) arrived."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    buffer, responses = b"", []
    with trio.fail_after(5):
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(request)
            while len(responses) < answers:
                chunk = await stream.receive_some(65536)
                assert chunk, f"connection closed after {len(responses)} responses: {buffer!r}"
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, rest = buffer.split(b"\r\n\r\n", 1)
                    length = next(
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    if len(rest) < length:
                        break
                    responses.append(head + b"\r\n\r\n" + rest[:length])
                    buffer = rest[length:]
    return responses


async def test_pipelined_requests_with_a_chunked_body_are_answered_in_order(sim):
    json_body = json.dumps({"to": JP, "text": "first", "reference": "r1"}).encode()
    form_body = b"to=%2B819012345678&text=second&reference=r2"
    request = (
        b"POST /sms HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(json_body)
        + json_body
        + b"POST /sms HTTP/1.1\r\nHost: sim\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (10, form_body[:10])
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(form_body) - 10, form_body[10:])
        + b"GET /control/stats HTTP/1.1\r\nHost: sim\r\n\r\n"
    )
    first, second, stats = await _raw_exchange(sim.base_url, request, 3)
    assert first.startswith(b"HTTP/1.1 200 ") and b'"id": "sim-000001"' in first
    assert second.startswith(b"HTTP/1.1 200 ") and b'"id": "sim-000002"' in second
    assert b"date: " in first.lower()
    assert json.loads(stats.split(b"\r\n\r\n", 1)[1])["accepted"] == 2
    assert [(m.reference, m.text) for m in sim.sent] == [("r1", "first"), ("r2", "second")]
    assert [r.path for r in sim.requests] == ["/sms", "/sms", "/control/stats"]


async def test_oversized_body_is_413_and_malformed_request_is_400(sim):
    big = b"x" * (1024 * 1024 + 1)
    request = b"POST /sms HTTP/1.1\r\nHost: sim\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    (too_large,) = await _raw_exchange(sim.base_url, request, 1)
    assert too_large.startswith(b"HTTP/1.1 413 ") and b"body too large" in too_large
    (malformed,) = await _raw_exchange(sim.base_url, b"NOT HTTP AT ALL\r\n\r\n", 1)
    assert malformed.startswith(b"HTTP/1.1 400 ")
    assert not sim.sent and not sim.requests
