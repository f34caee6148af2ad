"""The daemon: one trio nursery tree owning the store, event bus, modem drivers, SMS dispatcher and API.

Shutdown (SIGTERM/SIGINT, or ``Gateway.stop`` set): the API stops accepting connections, each modem finishes
the AT command in flight (a +CMGS that is under way gets its answer, so its TP-MR is recorded), the store
commits what is pending and closes, and the process exits 0 — all within ``SHUTDOWN_GRACE`` seconds; whatever
is still running then is cancelled (state is already durable: every transition is committed before it is
acted upon).
"""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
import trio

from gateway.config import Config
from gateway.logging import configure_logging
from gateway.sdnotify import SystemdNotifier, keep_watchdog_alive, watchdog_interval

SHUTDOWN_GRACE = 4.0  # seconds; the budget is 5 s from the signal to exit


@dataclass
class Gateway:
    """Handles to a running daemon, for the CLI, the demo and the integration tests."""

    config: Config
    url: str
    store: Any
    bus: Any
    sms: Any
    dispatcher: Any
    modems: dict[str, Any]
    simulators: dict[str, Any] = field(default_factory=dict)
    stop: trio.Event = field(default_factory=trio.Event)
    started_at: float = field(default_factory=time.time)


async def _start_simulators(config: Config, nursery: trio.Nursery) -> dict[str, Any]:
    """Simulated devices named in the config (demo and tests); real deployments have none."""
    sims: dict[str, Any] = {}
    if not config.simulators.gsm:
        return sims
    from simulators.gsm_modem import SimulatedGsmModem

    for entry in config.simulators.gsm:
        link = config.resolve(entry.link)
        link.parent.mkdir(parents=True, exist_ok=True)
        sim = SimulatedGsmModem(name=entry.name, send_latency=entry.send_latency,
                                report_delay=entry.report_delay, operator=entry.operator)
        await nursery.start(partial(sim.run, link=str(link)))
        sims[entry.name] = sim
    return sims


async def run_gateway(config: Config, *, task_status=trio.TASK_STATUS_IGNORED,
                      stop: trio.Event | None = None) -> None:
    """Run until ``stop`` is set (or the task is cancelled); ``task_status.started(Gateway)`` once serving."""
    from api.app import create_app
    from api.auth import TokenStore
    from api.server import serve
    from api.services import ApiServices, ApiSettings
    from drivers.gsm.modem import GsmModem
    from gateway.events import EventBus
    from gateway.sms.dispatcher import SmsDispatcher
    from gateway.sms.service import SmsService
    from gateway.store.sqlite import SqliteStore

    log = structlog.get_logger("daemon")
    stop = trio.Event() if stop is None else stop
    config.gateway.data_dir.mkdir(parents=True, exist_ok=True)

    notifier = SystemdNotifier.from_environment()
    async with trio.open_nursery() as root:
        interval = watchdog_interval()
        if interval is not None:
            root.start_soon(keep_watchdog_alive, notifier, interval)
        simulators = await _start_simulators(config, root)
        store = await SqliteStore.open(config.resolve(config.store.path),
                                       synchronous=config.store.synchronous)
        try:
            bus = await EventBus.open(store, max_events=config.events.journal_max_events,
                                      max_age_days=config.events.journal_max_age_days,
                                      client_queue_size=config.api.ws_queue_size)
            modems = {
                m.name: GsmModem(m.name, str(config.resolve(m.port)), baudrate=m.baudrate, pin=m.pin,
                                 smsc=m.smsc, quirks=m.quirks, command_timeout=m.command_timeout,
                                 send_timeout=m.send_timeout)
                for m in config.modems
            }
            sms = SmsService(store, bus, modems, settings=config.sms, region=config.gateway.default_region)
            dispatcher = SmsDispatcher(store, bus, modems, settings=config.sms,
                                       region=config.gateway.default_region, service=sms)
            sms.attach_dispatcher(dispatcher)
            async with trio.open_nursery() as services:
                for modem in modems.values():
                    services.start_soon(modem.run)
                await services.start(dispatcher.run)
                started_at = time.time()
                app = create_app(
                    ApiServices(sms=sms, bus=bus, tokens=TokenStore.from_config(config.api.tokens),
                                started_at=started_at),
                    ApiSettings(max_body_bytes=config.api.max_body_bytes,
                                ws_queue_size=config.api.ws_queue_size,
                                ws_ping_interval=config.api.ws_ping_interval,
                                metrics_public=config.api.metrics_public),
                )
                api_stopped = trio.Event()
                url = await services.start(partial(serve, app, config.api.host, config.api.port,
                                                   shutdown_trigger=api_stopped.wait))
                gw = Gateway(config=config, url=url, store=store, bus=bus, sms=sms, dispatcher=dispatcher,
                             modems=modems, simulators=simulators, stop=stop, started_at=started_at)
                _tune_garbage_collector()
                log.info("gateway ready", url=url, modems=list(modems), simulators=list(simulators))
                notifier.ready(status=f"serving {url}, {len(modems)} modem(s)")
                task_status.started(gw)
                await stop.wait()

                log.info("shutting down", grace_s=SHUTDOWN_GRACE)
                notifier.stopping()
                api_stopped.set()
                # The dispatcher stops taking new work; each modem finishes the AT command in flight
                # (request_stop), and its run() returns; whatever is still running at the deadline is
                # cancelled, which is safe because every state change was committed before it was acted on.
                deadline = trio.current_time() + SHUTDOWN_GRACE
                services.cancel_scope.deadline = deadline
                with trio.move_on_at(deadline):
                    await dispatcher.stop()
                for modem in modems.values():
                    modem.request_stop()
        finally:
            with trio.CancelScope(shield=True):
                await store.close()
        root.cancel_scope.cancel()
    notifier.close()
    log.info("stopped")


def _tune_garbage_collector() -> None:
    """Keep the collector's pauses out of event delivery.

    Measured (bench/bench_sms.py latency, 100 WebSocket clients): with CPython's default thresholds the
    young-generation collections run every few hundred allocations, and the full collections they trigger
    walk every long-lived object (modules, config, routes), stretching event fan-out p99 from ~12 ms to
    ~50 ms. Startup objects are moved out of the collector's sight (``gc.freeze``) and the youngest
    generation is collected less often; cyclic garbage is still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def _serve_until_signal(config: Config, on_ready: Callable[[str], None] | None) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            gw = await nursery.start(partial(run_gateway, config, stop=stop))
            if on_ready:
                on_ready(gw.url)
            async for signum in signals:
                structlog.get_logger("daemon").info("signal", signal=signal.Signals(signum).name)
                stop.set()
                break


def main_blocking(config: Config, *, on_ready: Callable[[str], None] | None = None) -> int:
    """Run the daemon in the foreground; exit code 0 on a clean signal-driven stop."""
    configure_logging(config.logging.level, config.logging.format)
    try:
        watchdog_interval()
    except ValueError as exc:
        structlog.get_logger("daemon").error("bad systemd watchdog settings", error=str(exc))
        return 1
    try:
        trio.run(_serve_until_signal, config, on_ready)
    except OSError as exc:  # e.g. the API port is taken
        structlog.get_logger("daemon").error("cannot start", error=str(exc))
        return 1
    return 0
