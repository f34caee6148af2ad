"""Our modem driver against our modem simulator over a real pty.

The two sides were written independently (the simulator has its own PDU codec and AT interpreter), so a
misreading of TS 27.005 / TS 23.040 on one side shows up here as a failure instead of hiding in both.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio

from drivers.gsm import pdu
from drivers.gsm.modem import GsmModem, IncomingSms, ModemStatus, ModemUnavailable, SendError, StatusReport
from simulators.gsm_modem import SimulatedGsmModem

NUMBER = "+819012345678"


async def next_of(modem: GsmModem, kind, *, within: float = 30.0, where=lambda e: True):
    with trio.fail_after(within):
        async for event in modem.events:
            if isinstance(event, kind) and where(event):
                return event
    raise AssertionError("event channel closed")


async def until_state(modem: GsmModem, state: str, within: float = 30.0) -> ModemStatus:
    """The next status event in ``state``; events queue in order, so earlier ones are consumed first."""
    return await next_of(modem, ModemStatus, within=within, where=lambda e: e.state == state)


@pytest.fixture
async def pair(nursery, tmp_path):
    link = tmp_path / "gsm0"
    sim = SimulatedGsmModem(name="sim0", send_latency=0.05, report_delay=0.1)
    await nursery.start(partial(sim.run, link=str(link)))
    modem = GsmModem("gsm0", str(link), monitor_interval=3600.0, init_retry_backoff=(0.2, 0.5, 1.0),
                     command_timeout=1.0, send_timeout=5.0)
    await nursery.start(modem.run)
    await until_state(modem, "ready")
    yield sim, modem
    modem.request_stop()


async def send_text(modem: GsmModem, text: str, *, report: bool = False) -> list[int]:
    encoded = pdu.encode_submit(NUMBER, text, request_report=report, concat_ref=7)
    return [await modem.send_pdu(seg.hex, seg.tpdu_length) for seg in encoded.segments]


async def test_identity_and_status_after_init(pair):
    sim, modem = pair
    # The first network poll follows right after the stored messages are listed.
    status = modem.status if modem.status.operator else await next_of(modem, ModemStatus,
                                                                      where=lambda s: s.operator is not None)
    assert status.state == "ready"
    assert status.manufacturer == "SIMULATED" and status.model == "EC25-SIM"
    assert status.operator == "NTT DOCOMO"
    assert status.registration == "home"
    assert status.rssi == 20 and status.signal_dbm == -73  # TS 27.007 §8.5: -113 + 2 * rssi


TEXTS = ["hello", "山田様 検査結果が出ました。", "€ {braces} [x] ~ |" * 12, "😀" * 80]


@pytest.mark.parametrize("text", TEXTS)
async def test_send_single_and_multipart_reaches_the_network(pair, text):
    sim, modem = pair
    refs = await send_text(modem, text)
    assert len(refs) == pdu.count_parts(text)[1]
    assert len(set(refs)) == len(refs), "each part gets its own TP-MR"
    parts = sim.sent[-len(refs):]
    assert all(p.destination == NUMBER for p in parts)
    assert "".join(p.text for p in parts) == text
    assert [p.mr for p in parts] == refs


async def test_status_report_comes_back_and_decodes(pair):
    sim, modem = pair
    (mr,) = await send_text(modem, "report please", report=True)
    report = await next_of(modem, StatusReport)
    decoded = pdu.decode(report.pdu_hex)
    assert decoded.type == "status_report"
    assert decoded.reference == mr and decoded.number == NUMBER and decoded.status == 0
    await modem.acknowledge(report)


async def test_incoming_multipart_out_of_order_is_read_and_deleted_after_ack(pair):
    sim, modem = pair
    text = "お大事にどうぞ。" * 12  # 96 UCS2 units: two parts
    sim.inject_sms("+818011112222", text, parts_order=[2, 1])
    got = [await next_of(modem, IncomingSms) for _ in range(2)]
    decoded = [pdu.decode(item.pdu_hex) for item in got]
    assert [d.concat.seq for d in decoded] == [2, 1]
    assert {d.concat.total for d in decoded} == {2} and len({d.concat.ref for d in decoded}) == 1
    assert "".join(d.text for d in sorted(decoded, key=lambda d: d.concat.seq)) == text
    assert all(d.number == "+818011112222" for d in decoded)
    # Still on the SIM until the gateway says it is committed (delete after commit, never before).
    assert sum(len(s) for s in sim.storages.values()) == 2
    for item in got:
        await modem.acknowledge(item)
    assert sum(len(s) for s in sim.storages.values()) == 0


@pytest.mark.parametrize(("code", "kind"), [(500, "temporary"), (38, "temporary"), (1, "permanent"),
                                            (330, "config")])
async def test_cms_errors_are_classified(pair, code, kind):
    sim, modem = pair
    sim.fail_next_sends(code)
    with pytest.raises(SendError) as info:
        await send_text(modem, "will fail")
    assert info.value.code == code and info.value.kind == kind
    assert await send_text(modem, "next one works")


async def test_garbage_and_vendor_urcs_do_not_disturb_sending(pair):
    sim, modem = pair
    sim.set_vendor_urc("^RSSI: 18")
    sim.set_garbage(0.5, seed=3)
    for i in range(5):
        assert await send_text(modem, f"noisy line {i}")
    assert [p.text for p in sim.sent[-5:]] == [f"noisy line {i}" for i in range(5)]


async def test_unplug_mid_life_then_replug(pair):
    sim, modem = pair
    sim.unplug()
    await until_state(modem, "absent")
    with pytest.raises(ModemUnavailable):
        await send_text(modem, "nowhere to go")
    sim.replug()
    await until_state(modem, "ready", within=60)
    assert await send_text(modem, "back again")
    assert sim.sent[-1].text == "back again"


async def test_no_answer_marks_down_then_recovers(pair):
    sim, modem = pair
    sim.set_no_answer(True)
    with pytest.raises((SendError, ModemUnavailable)):
        await send_text(modem, "into the void")
    # The watchdog trips: the modem leaves "ready" (flush and re-init, or down after repeated failures).
    await next_of(modem, ModemStatus, where=lambda s: s.state in ("initializing", "down"))
    sim.set_no_answer(False)
    await next_of(modem, ModemStatus, within=120, where=lambda s: s.state == "ready")
    assert await send_text(modem, "awake")


async def test_reset_reboots_the_simulator_and_the_driver_initialises_it_again(nursery, tmp_path):
    """AT+CFUN=1,1 (TS 27.007 §8.2) makes the simulator forget its volatile settings (echo, CMEE, CNMI):
    inbound messages are only announced again because the driver re-ran its whole initialisation."""
    link = tmp_path / "gsm0"
    sim = SimulatedGsmModem(name="sim0", send_latency=0.05, report_delay=0.1)
    await nursery.start(partial(sim.run, link=str(link)))
    modem = GsmModem("gsm0", str(link), monitor_interval=3600.0, command_timeout=1.0, reset_settle=0.2)
    await nursery.start(modem.run)
    await until_state(modem, "ready")
    await modem.reset()
    resetting = await until_state(modem, "initializing")
    assert resetting.last_error == "reset (AT+CFUN=1,1)"
    await until_state(modem, "ready", within=30)
    sim.inject_sms("+818011112222", "after the reset")
    incoming = await next_of(modem, IncomingSms)
    assert pdu.decode(incoming.pdu_hex).text == "after the reset"
    await modem.acknowledge(incoming)
    assert await send_text(modem, "sent after the reset")
    assert sim.sent[-1].text == "sent after the reset"
    modem.request_stop()
