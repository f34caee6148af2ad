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
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
import trio

from gateway.assembly import Services
from gateway.config import Config
from gateway.logging import configure_logging
from gateway.sdnotify import SystemdNotifier, keep_watchdog_alive, watchdog_interval

SHUTDOWN_GRACE = 4.0  # seconds; the budget is 5 s from the signal to exit


@dataclass
class SimulatedDevices:
    """Simulators the config asked for (demo and tests); a real deployment has none."""

    gsm: dict[str, Any] = field(default_factory=dict)  # SimulatedGsmModem by simulator name
    provider: Any = None  # HttpProviderSimulator
    provider_url: str | None = None
    lines: dict[str, Any] = field(default_factory=dict)  # PstnLine by voice line name
    usb_backends: dict[str, Any] = field(default_factory=dict)  # pyusb backend by voice line name
    voice_modems: dict[str, Any] = field(default_factory=dict)  # SimulatedVoiceModem by voice line name


@dataclass
class Gateway:
    """Handles to a running daemon, for the CLI, the demo and the integration tests."""

    config: Config
    url: str
    store: Any
    bus: Any
    services: Services
    modems: dict[str, Any]
    devices: SimulatedDevices = field(default_factory=SimulatedDevices)
    stop: trio.Event = field(default_factory=trio.Event)
    started_at: float = field(default_factory=time.time)

    @property
    def sms(self) -> Any:
        return self.services.sms

    @property
    def dispatcher(self) -> Any:
        return self.services.dispatcher

    @property
    def simulators(self) -> dict[str, Any]:
        """The simulated GSM modems by name."""
        return self.devices.gsm


async def _start_simulators(config: Config, nursery: trio.Nursery) -> SimulatedDevices:
    """Start the simulated devices named in ``config.simulators`` before the drivers that open them."""
    found = SimulatedDevices()
    sims = config.simulators
    if sims.gsm:
        from simulators.gsm_modem import SimulatedGsmModem

        for entry in sims.gsm:
            link = config.resolve(entry.link)
            link.parent.mkdir(parents=True, exist_ok=True)
            sim = SimulatedGsmModem(name=entry.name, send_latency=entry.send_latency,
                                    report_delay=entry.report_delay, operator=entry.operator)
            await nursery.start(partial(sim.run, link=str(link)))
            found.gsm[entry.name] = sim
    if sims.http_provider is not None:
        from simulators.http_provider import HttpProviderSimulator

        entry = sims.http_provider
        found.provider = HttpProviderSimulator(latency=entry.latency, failure_rate=entry.failure_rate,
                                               api_key=entry.api_key, callback_secret=entry.report_secret,
                                               report_delay=entry.report_delay)
        found.provider_url = await nursery.start(partial(found.provider.serve, port=entry.port))
    lines = {line.name: line for line in config.voice.lines}
    for entry in sims.voice_lines:
        from simulators.pstn_line import PstnLine

        line_settings = lines[entry.line]
        pstn = PstnLine(entry.country)
        found.lines[entry.line] = pstn
        if line_settings.driver == "usb_box":
            from simulators.usb_box import make_box

            found.usb_backends[entry.line] = make_box(pstn, serial=line_settings.serial or "HCRM-0001",
                                                      paced=True)
        else:
            from simulators.voice_modem import SimulatedVoiceModem

            link = config.resolve(line_settings.port)
            link.parent.mkdir(parents=True, exist_ok=True)
            modem = SimulatedVoiceModem("conexant", link=str(link), audio_source=pstn.read)
            await nursery.start(modem.run)
            found.voice_modems[entry.line] = modem
    return found


def _line_devices(config: Config, sims: SimulatedDevices, watch: Any) -> dict[str, Any]:
    """One LineDevice per configured voice line, over its real driver (simulated hardware for the demo)."""
    from drivers.voice.shared_dsp import SharedLineDsp
    from drivers.voice.usbbox import UsbVoiceBox
    from drivers.voice.v253_modem import VoiceModem
    from gateway.voice.devices import ModemLine, UsbBoxLine

    devices: dict[str, Any] = {}
    shared_dsp = SharedLineDsp()  # one batched DSP for every USB box line (no task of its own)
    for line in config.voice.lines:
        if line.driver == "usb_box":
            box = UsbVoiceBox(line.name, serial=line.serial, backend=sims.usb_backends.get(line.name),
                              tones=line.tones, cid=line.cid, audio_queue=500, dsp=shared_dsp,
                              device_watch=watch)
            devices[line.name] = UsbBoxLine(box)
        else:
            modem = VoiceModem(line.name, str(config.resolve(line.port)), tones=line.tones, cid=line.cid,
                               device_watch=watch)
            devices[line.name] = ModemLine(modem)
    return devices


async def run_gateway(config: Config, *, task_status=trio.TASK_STATUS_IGNORED,
                      stop: trio.Event | None = None, extra_routes: Sequence[Any] = (),
                      usb_backends: Mapping[str, Any] | None = None) -> None:
    """Run until ``stop`` is set (or the task is cancelled); ``task_status.started(Gateway)`` once serving.

    ``extra_routes``: callables ``(gateway) -> route module`` (an object with ``blueprint`` and
    ``OPENAPI_OPERATIONS``), for routes that exist only in a given composition, such as the demo's.
    ``usb_backends``: pyusb backends by usb_box line name, for a harness that brings its own simulated boxes
    (the benchmarks' out-of-process box farm, ``simulators/usb_remote.py``)."""
    import httpx

    from api.app import create_app
    from api.server import serve
    from api.services import ApiServices, ApiSettings
    from api.token_db import DbTokenSettings, DbTokenStore
    from drivers.gsm.modem import GsmModem
    from drivers.hotplug import DeviceWatch
    from gateway.assembly import build_services
    from gateway.events import EventBus
    from gateway.store.sqlite import SqliteStore

    log = structlog.get_logger("daemon")
    stop = trio.Event() if stop is None else stop
    config.gateway.data_dir.mkdir(parents=True, exist_ok=True)

    notifier = SystemdNotifier.from_environment()
    async with trio.open_nursery() as root:
        interval = watchdog_interval()
        if interval is not None:
            root.start_soon(keep_watchdog_alive, notifier, interval)
        # Replugged modems and boxes are retried the moment the kernel/udev reports them (drivers/hotplug.py).
        watch = DeviceWatch()
        await root.start(watch.run)
        sims = await _start_simulators(config, root)
        sims.usb_backends.update(usb_backends or {})
        store = await SqliteStore.open(config.resolve(config.store.path),
                                       synchronous=config.store.synchronous)
        http = httpx.AsyncClient(timeout=10.0)  # contact lookups and IVR webhooks
        services: Services | None = None
        try:
            bus = await EventBus.open(store, max_events=config.events.journal_max_events,
                                      max_age_days=config.events.journal_max_age_days,
                                      client_queue_size=config.api.ws_queue_size)
            modems = {
                m.name: GsmModem(m.name, str(config.resolve(m.port)), baudrate=m.baudrate, pin=m.pin,
                                 smsc=m.smsc, quirks=m.quirks, command_timeout=m.command_timeout,
                                 send_timeout=m.send_timeout, device_watch=watch)
                for m in config.modems
            }
            services = await build_services(config, store, bus, modems, _line_devices(config, sims, watch),
                                            http)
            # Config tokens plus those issued with `hcrm-gateway token create`, followed while running.
            tokens = DbTokenStore.from_config(
                config.api.tokens, store, settings=DbTokenSettings(**config.api.db_tokens.model_dump()))
            async with trio.open_nursery() as running:
                await running.start(tokens.run)
                for modem in modems.values():
                    running.start_soon(modem.run)
                await services.start(running)
                started_at = time.time()
                gw = Gateway(config=config, url="", store=store, bus=bus, services=services, modems=modems,
                             devices=sims, stop=stop, started_at=started_at)
                app = create_app(
                    ApiServices(sms=services.sms, bus=bus, tokens=tokens,
                                started_at=started_at, templates=services.templates,
                                verifications=services.verifications, webhooks=services.webhooks,
                                consent=services.consent, provider_reports=services.provider_reports,
                                voice=services.voice, ivr=services.ivr, queues=services.queues,
                                call_campaigns=services.call_campaigns,
                                campaigns=services.campaigns),
                    ApiSettings(max_body_bytes=config.api.max_body_bytes,
                                ws_queue_size=config.api.ws_queue_size,
                                ws_ping_interval=config.api.ws_ping_interval,
                                metrics_public=config.api.metrics_public),
                    extra_routes=[make(gw) for make in extra_routes],
                )
                api_stopped = trio.Event()
                gw.url = await running.start(partial(serve, app, config.api.host, config.api.port,
                                                     shutdown_trigger=api_stopped.wait))
                if sims.provider is not None:  # the simulated provider reports back to our callback
                    name = config.simulators.http_provider.name
                    sims.provider.callback_url = f"{gw.url}/v1/providers/{name}/reports"
                _tune_garbage_collector()
                _tune_thread_switching()
                log.info("gateway ready", url=gw.url, modems=list(modems),
                         lines=[line.name for line in config.voice.lines],
                         simulators=list(sims.gsm) + list(sims.lines))
                notifier.ready(status=f"serving {gw.url}, {len(modems)} modem(s), "
                                      f"{len(config.voice.lines)} line(s)")
                task_status.started(gw)
                await stop.wait()

                log.info("shutting down", grace_s=SHUTDOWN_GRACE)
                notifier.stopping()
                api_stopped.set()
                # The dispatcher stops taking new work; each modem finishes the AT command in flight
                # (request_stop), and its run() returns; whatever is still running at the deadline is
                # cancelled, which is safe because every state change was committed before it was acted on.
                deadline = trio.current_time() + SHUTDOWN_GRACE
                running.cancel_scope.deadline = deadline
                with trio.move_on_at(deadline):
                    await services.dispatcher.stop()
                for modem in modems.values():
                    modem.request_stop()
        finally:
            with trio.CancelScope(shield=True):
                if services is not None:
                    await services.close()
                await http.aclose()
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


GIL_SWITCH_INTERVAL_S = 0.001


def _tune_thread_switching() -> None:
    """A thread waiting for the GIL asks its holder to drop it after 1 ms instead of CPython's 5 ms.

    Why: every pyusb and SQLite call runs in a worker thread (32 USB boxes: 1,600 reads a second). When
    the event loop's thread lets the GIL go (a socket write, a NumPy call) and a worker takes it, the loop
    may wait for it until the interval forces it back: measured in issue 5's screen-pop bench, 4.5 ms
    waits (0.7 ms of CPU) inside one 12 µs DSP call, and one WebSocket client in 100 served 26 ms after the
    others in the middle of a fan-out. The cost is more switches when two threads both compute, which here
    they rarely do (the workers wait on I/O)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


async def _serve_until_signal(config: Config, on_ready: Callable[[str], None] | None,
                              extra_routes: Sequence[Any] = ()) -> None:
    stop = trio.Event()
    log = structlog.get_logger("daemon")
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            gw = await nursery.start(partial(run_gateway, config, stop=stop, extra_routes=extra_routes))
            if on_ready:
                on_ready(gw.url)
            async for signum in signals:
                log.info("signal", signal=signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    await _reload_ivr(gw)
                    continue
                stop.set()
                break


async def _reload_ivr(gw: Gateway) -> None:
    """SIGHUP: a file-based deployment reloads its IVR tree with the same validation as a publish; a broken
    file changes nothing (the IVR service logs every problem with its line and column)."""
    tree_file = gw.config.ivr.tree_file
    if tree_file is None:
        structlog.get_logger("daemon").info("SIGHUP ignored: no ivr.tree_file to reload")
        return
    await gw.services.ivr.reload_from_file(tree_file)


def main_blocking(config: Config, *, on_ready: Callable[[str], None] | None = None,
                  extra_routes: Sequence[Any] = ()) -> int:
    """Run the daemon in the foreground; exit code 0 on a clean signal-driven stop."""
    configure_logging(config.logging.level, config.logging.format)
    try:
        watchdog_interval()
    except ValueError as exc:
        structlog.get_logger("daemon").error("bad systemd watchdog settings", error=str(exc))
        return 1
    try:
        trio.run(_serve_until_signal, config, on_ready, extra_routes)
    except OSError as exc:  # e.g. the API port is taken
        structlog.get_logger("daemon").error("cannot start", error=str(exc))
        return 1
    return 0
