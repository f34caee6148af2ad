"""SMS campaign benchmarks (issue 4). Not tests: they print JSON lines that docs/performance.md records.

    .venv/bin/python -m bench.bench_campaigns accept   [--rows 100000]
    .venv/bin/python -m bench.bench_campaigns scaling  [--modems 1,2,4,8] [--per-modem 20] [--latency 0.2]
    .venv/bin/python -m bench.bench_campaigns provider [--rows 10000] [--concurrency 32]

accept    a CSV of N rows (distinct Japanese mobile numbers, Japanese text) accepted through
          CampaignService.create: decoded, every row validated (number, variables, parts) in a worker thread,
          stored in a few large transactions. Target: 100,000 rows <= 10 s on 2 cores.
scaling   campaign throughput on N GSM modem simulators (ptys, the real modem driver and dispatcher) with a
          fixed send latency: messages/s from the first send to completion; linear means the per-modem
          rate stays flat as N grows.
provider  an N-recipient campaign end to end through the dispatcher's HTTP provider route to the provider
          simulator on loopback (campaign feeder -> SmsService.submit -> dispatcher -> httpx -> simulator).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from gateway.config import SmsSection
from gateway.events import EventBus
from gateway.sms.campaigns import CampaignService, CampaignSettings
from gateway.sms.dispatcher import SmsDispatcher
from gateway.sms.service import SmsService
from gateway.sms.template_store import TemplateStore
from gateway.store.sqlite import SqliteStore

BODY = "{patient_name}様 {date}に{topic}の健康教室を開きます。ご参加ください。"
AWAKE = {"education": {"priority": 10, "quiet_hours": None}}  # benchmarks run at any hour


def machine() -> dict:
    return {"cores": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def csv_text(rows: int) -> bytes:
    lines = ["to,patient_name,date,topic"]
    lines += [f"090{10_000_000 + i:08d},患者{i},12月1日,減塩" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


async def _open(tmp: Path, drivers: dict, providers: dict | None = None, **campaign: Any) -> tuple:
    store = await SqliteStore.open(tmp / "gw.sqlite3")
    bus = await EventBus.open(store, max_events=1_000_000, max_age_days=1.0)
    sms_settings = SmsSection(categories=AWAKE, report=False)
    sms = SmsService(store, bus, drivers, settings=sms_settings, providers=providers)
    dispatcher = SmsDispatcher(store, bus, drivers, settings=sms_settings, service=sms, providers=providers)
    templates = TemplateStore(store)
    await templates.create("class", "education", "ja", BODY)
    settings = CampaignSettings(max_rows=1_000_000, **campaign)
    campaigns = CampaignService(store, bus, sms, templates, dispatcher=dispatcher, settings=settings)
    return store, bus, dispatcher, campaigns


async def _wait_completed(bus: EventBus, campaign_id: str) -> None:
    done = trio.Event()

    def listen(event: Any) -> None:
        if event.type == "campaign.progress" and event.data["id"] == campaign_id:
            if event.data["status"] == "completed":
                done.set()

    bus.add_listener(listen)
    await done.wait()


# --- accept ---------------------------------------------------------------------------------------------
async def bench_accept(args: argparse.Namespace) -> dict:
    data = csv_text(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        store, _bus, _dispatcher, campaigns = await _open(Path(tmp), {})
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(campaigns.run)
                begun = time.perf_counter()
                created = await campaigns.create(template_id="class", csv_data=data, route=None)
                elapsed = time.perf_counter() - begun
                nursery.cancel_scope.cancel()
        finally:
            await store.close()
    row = created.campaign.row
    return {
        "bench": "campaign_accept",
        "rows": args.rows,
        "bytes": len(data),
        "accepted": row.accepted,
        "rejected": row.rejected + row.duplicates,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(args.rows / elapsed),
        "target_s": 10.0,
        "ok": elapsed <= 10.0 and row.accepted == args.rows,
        **machine(),
    }


# --- scaling --------------------------------------------------------------------------------------------
async def _one_scaling_run(modems: int, messages: int, latency: float) -> dict:
    from drivers.gsm.modem import GsmModem
    from simulators.gsm_modem import SimulatedGsmModem

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        async with trio.open_nursery() as sims_nursery:
            drivers = {}
            for i in range(modems):
                link = tmp_path / f"gsm{i}"
                sim = SimulatedGsmModem(name=f"sim{i}", send_latency=latency, report_delay=60.0)
                await sims_nursery.start(partial(sim.run, link=str(link)))
                drivers[f"gsm{i}"] = GsmModem(f"gsm{i}", str(link), command_timeout=5.0, send_timeout=10.0)
            store, bus, dispatcher, campaigns = await _open(tmp_path, drivers, window_per_route=10)
            try:
                async with trio.open_nursery() as nursery:
                    for driver in drivers.values():
                        nursery.start_soon(driver.run)
                    ready = trio.Event()
                    bus.add_listener(
                        lambda _e: (
                            ready.set() if all(d.status.state == "ready" for d in drivers.values()) else None
                        )
                    )
                    await nursery.start(dispatcher.run)  # publishes each modem.state_changed
                    with trio.fail_after(30):
                        await ready.wait()
                    await nursery.start(campaigns.run)
                    first_sent: list[float] = []
                    bus.add_listener(
                        lambda e: (
                            first_sent.append(time.perf_counter())
                            if e.type == "sms.sent" and not first_sent
                            else None
                        )
                    )
                    begun = time.perf_counter()
                    created = await campaigns.create(template_id="class", csv_data=csv_text(messages))
                    await _wait_completed(bus, created.campaign.id)
                    finished = time.perf_counter()
                    per_modem = {
                        name: d["queue_depth"] for name, d in ((r["name"], r) for r in dispatcher.routes())
                    }
                    nursery.cancel_scope.cancel()
            finally:
                await store.close()
            sims_nursery.cancel_scope.cancel()
    span = finished - (first_sent[0] if first_sent else begun)
    rate = (messages - 1) / span if span > 0 else 0.0
    return {
        "modems": modems,
        "messages": messages,
        "seconds": round(finished - begun, 2),
        "msgs_per_s": round(rate, 2),
        "per_modem_per_s": round(rate / modems, 2),
        "ideal_per_modem_per_s": round(1 / latency, 2),
        "left_in_queues": sum(per_modem.values()),
    }


async def bench_scaling(args: argparse.Namespace) -> dict:
    runs = []
    for n in [int(x) for x in args.modems.split(",")]:
        runs.append(await _one_scaling_run(n, args.per_modem * n, args.latency))
    base = runs[0]["per_modem_per_s"] or 1.0
    return {
        "bench": "campaign_scaling",
        "latency_s": args.latency,
        "runs": runs,
        "efficiency": [round(r["per_modem_per_s"] / base, 3) for r in runs],  # 1.0 = perfectly linear
        **machine(),
    }


# --- provider -------------------------------------------------------------------------------------------
async def bench_provider(args: argparse.Namespace) -> dict:
    from gateway.sms.providers import HttpProviderEntry, build_routes
    from simulators.http_provider import HttpProviderSimulator

    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as outer:
            simulator = HttpProviderSimulator(latency=0.0)
            base_url = await outer.start(simulator.serve)
            entry = HttpProviderEntry(
                name="provider",
                url=base_url + "/sms",
                body={"to": "{to}", "text": "{text}", "reference": "{message_id}"},
                success={"json_path": '$.result.status == "ok"'},
                provider_id={"json_path": "$.result.id"},
                concurrency=args.concurrency,
                timeout_s=10.0,
            )
            routes = build_routes([entry])
            store, bus, dispatcher, campaigns = await _open(
                Path(tmp), {}, routes, window_per_provider=args.window, batch_size=args.batch
            )
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(dispatcher.run)
                    await nursery.start(campaigns.run)
                    data = csv_text(args.rows)
                    begun = time.perf_counter()
                    created = await campaigns.create(template_id="class", csv_data=data, route="provider")
                    accepted = time.perf_counter()
                    await _wait_completed(bus, created.campaign.id)
                    finished = time.perf_counter()
                    done = await campaigns.get(created.campaign.id)
                    nursery.cancel_scope.cancel()
            finally:
                for route in routes.values():
                    await route.aclose()
                await store.close()
            outer.cancel_scope.cancel()
    sent = done.counts["sent"] + done.counts["delivered"]
    return {
        "bench": "campaign_provider_end_to_end",
        "rows": args.rows,
        "sent": sent,
        "failed": done.counts["failed"],
        "accept_s": round(accepted - begun, 2),
        "send_s": round(finished - accepted, 2),
        "total_s": round(finished - begun, 2),
        "msgs_per_s": round(sent / (finished - accepted), 1),
        "simulator_received": len(simulator.sent),
        **machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_campaigns")
    sub = parser.add_subparsers(dest="which", required=True)
    accept = sub.add_parser("accept")
    accept.add_argument("--rows", type=int, default=100_000)
    scaling = sub.add_parser("scaling")
    scaling.add_argument("--modems", default="1,2,4,8")
    scaling.add_argument("--per-modem", type=int, default=20)
    scaling.add_argument("--latency", type=float, default=0.2)
    provider = sub.add_parser("provider")
    provider.add_argument("--rows", type=int, default=10_000)
    provider.add_argument("--concurrency", type=int, default=32)
    provider.add_argument("--window", type=int, default=500)
    provider.add_argument("--batch", type=int, default=250)
    args = parser.parse_args(argv)
    run = {"accept": bench_accept, "scaling": bench_scaling, "provider": bench_provider}[args.which]
    print(json.dumps(trio.run(run, args), ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
