"""Serve the API app with hypercorn on trio, behind the event WebSockets' front door (api/events_raw.py).

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
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr, wrap_app
from quart_trio import QuartTrio

from api.events_raw import FrontDoor
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
    """Serve ``app`` on host:port; ``task_status.started("http://host:port")`` once listening.

    This is hypercorn's ``trio.run.worker_serve`` (lifespan, worker context, graceful deadline) with one
    difference: each accepted connection first meets ``api.events_raw.FrontDoor``, which keeps event
    WebSockets for itself and hands everything else to hypercorn's ``TCPServer`` unchanged. hypercorn is
    pinned to the minor version whose internals this follows (pyproject.toml).
    """
    state = api_state(app)
    config = _hypercorn_config(host, port, state.settings.graceful_timeout)
    config.set_statsd_logger_class(StatsdLogger)
    sockets = _listening_sockets(config, state.settings.tcp_user_timeout)
    asgi_app = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(asgi_app, config, lifespan_state)
    context = WorkerContext(None)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            plain = sockets.insecure_sockets  # no TLS in this daemon: a reverse proxy terminates it
            listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in plain]
            binds = [f"http://{repr_socket_addr(sock.family, sock.getsockname())}" for sock in plain]
            front_door = FrontDoor(
                state,
                partial(TCPServer, asgi_app, config, context, ConnectionState(lifespan_state.copy())),
                first_bytes_timeout=config.keep_alive_timeout,
            )
            task_status.started(binds[0])
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        partial(trio.serve_listeners, front_door, listeners, handler_nursery=connections)
                    )
                    if shutdown_trigger is not None:
                        await shutdown_trigger()
                    else:
                        await trio.sleep_forever()
                    accepting.cancel_scope.cancel()  # stop accepting
            finally:
                # Open WebSockets close with 1001 at once; HTTP connections finish within graceful_timeout.
                state.shutting_down.set()
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
