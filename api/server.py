"""Serve the API app with hypercorn on trio.

``serve`` is meant for ``nursery.start``: it reports the bound URL (port 0 picks a free port), returns when
``shutdown_trigger`` returns (open WebSockets are told to close with 1001 first, so shutdown does not wait for
hypercorn's graceful timeout) or when cancelled.

A peer that stops reading but keeps its TCP connection open (a hung CRM process: its kernel keeps advertising
a zero window) would pin the connection's task for ever: hypercorn writes with ``send_all`` inside a shielded
cancel scope, so neither our timeouts nor hypercorn's graceful shutdown can interrupt it, and the daemon could
not stop. The listening sockets therefore get TCP_USER_TIMEOUT (RFC 5482; Linux applies it to zero-window
probes too and accepted sockets inherit it): the kernel aborts a connection whose data stays unacknowledged
for ``ApiSettings.tcp_user_timeout`` seconds, the blocked write fails and the task ends.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from quart_trio import QuartTrio

from api.services import api_state


def _hypercorn_config(host: str, port: int, graceful_timeout: float) -> HypercornConfig:
    config = HypercornConfig()
    # IPv6 literals need brackets in a bind string.
    config.bind = [f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None  # the app logs requests with their request id; URLs never carry tokens anyway
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    config.websocket_ping_interval = None  # the app sends its own {"type":"ping"} frames
    return config


def _listening_sockets(config: HypercornConfig, user_timeout: float | None) -> Sockets:
    sockets = config.create_sockets()
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        if user_timeout is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000))
        sock.listen(config.backlog)
    return sockets


async def serve(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Serve ``app`` on host:port; ``task_status.started("http://host:port")`` once listening."""
    state = api_state(app)
    config = _hypercorn_config(host, port, state.settings.graceful_timeout)

    async def trigger() -> None:
        if shutdown_trigger is None:
            await trio.sleep_forever()
        else:
            await shutdown_trigger()
        state.shutting_down.set()

    sockets = _listening_sockets(config, state.settings.tcp_user_timeout)
    asgi_app = wrap_app(app, config.wsgi_max_body_size, None)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(worker_serve, asgi_app, config, sockets=sockets, shutdown_trigger=trigger)
        )
        task_status.started(binds[0])
