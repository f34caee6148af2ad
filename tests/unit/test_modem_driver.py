"""GsmModem against a scripted fake modem on a real pty (os.openpty, both ends raw before any I/O).

The fake answers the TS 27.005/27.007 commands the driver uses from a small message store, starts with echo on
(factory default E1) and can be told to stay silent, answer with an error, or hang up (close the master).
The driver opens it through a symlink that a test can repoint to a new pty ("the modem was plugged back").

Clock: trio MockClock with a small autojump threshold. With a threshold of 0 the clock would jump while the
kernel is still moving bytes through the pty, firing command timeouts spuriously; 50 ms of real idleness is
far above pty latency (~0.1 ms) and still makes the 10 s command timeouts and backoffs instant.
"""

from __future__ import annotations

import os
import tty
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from drivers.gsm.modem import (
    GsmModem,
    IncomingSms,
    ModemStatus,
    ModemUnavailable,
    SendError,
    StatusReport,
    mask_number,
)

DELIVER = "07911809214365F7040B911809214365F700005211724100226305E8329BFD06"  # "hello", TPDU 24 octets
REPORT = "07911809214365F7062A0B911809214365F7521172410022635211724110226300"  # TP-MR 42, TPDU 25 octets
SUBMIT = "0011000C911809214365870000AA05E8329BFD06"  # notes/sms.md §1 worked example, AT+CMGS=19


@pytest.fixture
def pty_clock():
    return MockClock(autojump_threshold=0.05)


class FakeModem:
    """A scripted GSM modem on the master side of a pty."""

    def __init__(self, link: Path, *, manufacturer="FAKECOM", model="FM-1") -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self._slave)
        self.link = link
        tmp = link.with_suffix(".new")
        os.symlink(os.ttyname(self._slave), tmp)
        os.replace(tmp, link)
        self.identity = {"AT+CGMI": manufacturer, "AT+CGMM": model, "AT+CGSN": "356938035643809"}
        self.echo = True
        self.received: list[str] = []
        self.storage: dict[str, dict[int, str]] = {"SM": {}, "ME": {}, "SR": {}}
        self.mem1 = "SM"
        self.silent: dict[str, int] = {}  # command -> how many times to ignore it
        self.frozen = False  # firmware hang: reads everything, answers nothing
        self.scripted: dict[str, list[bytes]] = {}  # command -> answers used once each, in order
        self.cpin = ["READY"]
        self.cmgs_answer = b"\r\n+CMGS: 42\r\n\r\nOK\r\n"
        self.pdus: list[str] = []
        self.pdu_received = trio.Event()
        self._awaiting_pdu = False
        self._closed = False
        self.hang_up_on_reset = False  # a USB modem: the port vanishes while AT+CFUN=1,1 reboots it

    # ---- control from the test -------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def hang_up(self) -> None:
        """Unplug: the driver's reads end (EOF) and /dev/pts/N disappears once it closes its side."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.master)
            os.close(self.master)
            os.close(self._slave)

    def count(self, command: str) -> int:
        return self.received.count(command)

    # ---- the modem -------------------------------------------------------------------------------------
    async def serve(self) -> None:
        buffer = b""
        try:
            while True:
                await trio.lowlevel.wait_readable(self.master)
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    return
                buffer += data
                buffer = self._consume(buffer)
        except (OSError, trio.ClosedResourceError):
            return

    def _consume(self, buffer: bytes) -> bytes:
        while True:
            if self._awaiting_pdu:
                end = min((i for i in (buffer.find(b"\x1a"), buffer.find(b"\x1b")) if i >= 0), default=-1)
                if end < 0:
                    return buffer
                body, terminator, buffer = buffer[:end], buffer[end : end + 1], buffer[end + 1 :]
                self._awaiting_pdu = False
                if terminator == b"\x1a":
                    self.pdus.append(body.decode())
                    self.pdu_received.set()
                    if self.echo:
                        self.write(body + b"\x1a")
                    self.write(self.cmgs_answer)
                else:
                    self.write(b"\r\nOK\r\n")
                continue
            end = buffer.find(b"\r")
            if end < 0:
                return buffer
            line, buffer = buffer[:end].decode().strip(), buffer[end + 1 :]
            if line:
                self._command(line)

    def _command(self, line: str) -> None:
        self.received.append(line)
        if self.frozen:
            return
        if self.echo:
            self.write(line.encode() + b"\r")
        if self.silent.get(line, 0) > 0:
            self.silent[line] -= 1
            return
        if self.scripted.get(line):
            self.write(self.scripted[line].pop(0))
            return
        if line.upper() == "AT+CFUN=1,1" and self.hang_up_on_reset:
            self.hang_up()
            return
        self.write(self._answer(line))

    def _answer(self, line: str) -> bytes:
        ok = b"\r\nOK\r\n"
        upper = line.upper()
        if upper in ("AT", "AT+CMEE=1", "AT+CMGF=0", "AT^CURC=0") or upper.startswith("AT+CNMI="):
            return ok
        if upper == "ATE0":
            self.echo = False
            return ok
        if upper == "AT+CFUN=1,1":  # TS 27.007 §8.2 reset: factory echo (E1) again, "RDY" once rebooted
            self.echo = True
            return ok + b"\r\nRDY\r\n"
        if upper in self.identity:
            return f"\r\n{self.identity[upper]}\r\n".encode() + ok
        if upper == "AT+CPIN?":
            state = self.cpin.pop(0) if len(self.cpin) > 1 else self.cpin[0]
            return f"\r\n+CPIN: {state}\r\n".encode() + ok
        if upper == "AT+CSCA?":
            return b'\r\n+CSCA: "+819000000000",145\r\n' + ok
        if upper == "AT+CSMS?":
            return b"\r\n+CSMS: 0,1,1,1\r\n" + ok
        if upper.startswith("AT+CPMS="):
            self.mem1 = upper.split("=")[1].split(",")[0].strip('"')
            return b"\r\n+CPMS: 0,30,0,30,0,30\r\n" + ok
        if upper == "AT+CMGL=4":
            lines = b"".join(
                f"\r\n+CMGL: {i},1,,{len(pdu) // 2 - 8}\r\n{pdu}".encode()
                for i, pdu in sorted(self.storage[self.mem1].items())
            )
            return lines + b"\r\n" + ok
        if upper.startswith("AT+CMGR="):
            pdu = self.storage[self.mem1].get(int(upper.split("=")[1]))
            if pdu is None:
                return b"\r\n+CMS ERROR: 321\r\n"
            return f"\r\n+CMGR: 1,,{len(pdu) // 2 - 8}\r\n{pdu}\r\n".encode() + ok
        if upper.startswith("AT+CMGD="):
            index = int(upper.split("=")[1])
            if self.storage[self.mem1].pop(index, None) is None:
                return b"\r\n+CMS ERROR: 321\r\n"
            return ok
        if upper.startswith("AT+CMGS="):
            self._awaiting_pdu = True
            return b"\r\n> "
        if upper == "AT+CSQ":
            return b"\r\n+CSQ: 20,99\r\n" + ok
        if upper == "AT+CREG?":
            return b"\r\n+CREG: 0,1\r\n" + ok
        if upper == "AT+COPS?":
            return b'\r\n+COPS: 0,0,"NTT DOCOMO",7\r\n' + ok
        return b"\r\nERROR\r\n"


@pytest.fixture
def link(tmp_path) -> Path:
    return tmp_path / "ttyGSM0"


async def wait_state(modem: GsmModem, state: str, *, within: float = 120.0) -> ModemStatus:
    with trio.fail_after(within):
        async for event in modem.events:
            if isinstance(event, ModemStatus) and event.state == state:
                return event
    raise AssertionError(f"events ended before state {state!r}")


async def wait_status(modem: GsmModem, predicate, *, within: float = 60.0) -> ModemStatus:
    with trio.fail_after(within):
        async for event in modem.events:
            if isinstance(event, ModemStatus) and predicate(event):
                return event
    raise AssertionError("events ended before the awaited status")


async def settled(modem: GsmModem) -> None:
    """Ready, stored list read and the first monitoring poll done: the driver is idle."""
    await wait_status(modem, lambda status: status.state == "ready" and status.operator is not None)


async def next_message(modem: GsmModem, *, within: float = 60.0):
    with trio.fail_after(within):
        async for event in modem.events:
            if isinstance(event, IncomingSms | StatusReport):
                return event
    raise AssertionError("events ended before a message")


class Harness:
    def __init__(self, nursery: trio.Nursery, link: Path) -> None:
        self.nursery = nursery
        self.link = link
        self.fakes: list[FakeModem] = []

    def plug(self, **identity) -> FakeModem:
        """A new fake modem on a new pty, reachable through the link."""
        fake = FakeModem(self.link, **identity)
        self.fakes.append(fake)
        self.nursery.start_soon(fake.serve)
        return fake

    async def start(self, fake: FakeModem, **options) -> GsmModem:
        options.setdefault("monitor_interval", 3600.0)
        modem = GsmModem("gsm0", str(self.link), **options)
        await self.nursery.start(modem.run)
        return modem


@pytest.fixture
async def harness(nursery, link):
    harness = Harness(nursery, link)
    yield harness
    for fake in harness.fakes:
        fake.hang_up()


async def test_init_sequence_reaches_ready(pty_clock, harness, link):
    fake = harness.plug(manufacturer="huawei", model="E3372")
    modem = await harness.start(fake)
    status = await wait_state(modem, "ready")
    await wait_status(modem, lambda status: status.operator is not None)  # first monitoring poll done
    assert fake.received[: fake.received.index("AT+CMGL=4") + 1] == [
        "ATE0",
        "AT+CMEE=1",
        "AT+CGMI",
        "AT+CGMM",
        "AT+CGSN",
        "AT^CURC=0",  # Huawei quirk
        "AT+CPIN?",
        "AT+CMGF=0",
        "AT+CSCA?",
        'AT+CPMS="SM","SM","SM"',
        "AT+CSMS?",
        "AT+CNMI=2,1,0,2,0",
        "AT+CMGL=4",
    ]
    assert (status.manufacturer, status.model, status.imei) == ("huawei", "E3372", "356938035643809")
    assert modem.quirks.name == "huawei"
    assert (modem.status.rssi, modem.status.signal_dbm) == (20, -73)
    assert (modem.status.registration, modem.status.operator) == ("home", "NTT DOCOMO")
    modem.request_stop()


async def test_send_success_returns_message_reference(pty_clock, harness, link):
    fake = harness.plug()
    modem = await harness.start(fake)
    await wait_state(modem, "ready")
    assert await modem.send_pdu(SUBMIT, 19) == 42
    assert "AT+CMGS=19" in fake.received
    assert fake.pdus == [SUBMIT]
    modem.request_stop()


@pytest.mark.parametrize(
    ("answer", "code", "kind"),
    [
        (b"\r\n+CMS ERROR: 500\r\n", 500, "temporary"),
        (b"\r\n+CMS ERROR: 42\r\n", 42, "temporary"),
        (b"\r\n+CMS ERROR: 1\r\n", 1, "permanent"),
        (b"\r\n+CMS ERROR: 330\r\n", 330, "config"),
    ],
)
async def test_send_error_is_classified(pty_clock, harness, link, answer, code, kind):
    fake = harness.plug()
    fake.cmgs_answer = answer
    modem = await harness.start(fake)
    await wait_state(modem, "ready")
    with pytest.raises(SendError) as caught:
        await modem.send_pdu(SUBMIT, 19)
    assert (caught.value.code, caught.value.kind) == (code, kind)
    assert f"+CMS ERROR: {code}" in str(caught.value)
    assert modem.status.state == "ready"  # a refused message is not a modem failure
    modem.request_stop()


async def test_error_before_prompt_is_classified(pty_clock, harness, link):
    fake = harness.plug()
    fake.scripted["AT+CMGS=19"] = [b"\r\n+CMS ERROR: 304\r\n"]
    modem = await harness.start(fake)
    await wait_state(modem, "ready")
    with pytest.raises(SendError) as caught:
        await modem.send_pdu(SUBMIT, 19)
    assert (caught.value.code, caught.value.kind) == (304, "permanent")
    assert fake.pdus == []
    modem.request_stop()


async def test_no_answer_flushes_and_reinitialises(pty_clock, harness, link):
    fake = harness.plug()
    fake.silent["AT+CSQ"] = 1  # the first monitoring poll after ready goes unanswered
    modem = await harness.start(fake)
    await wait_state(modem, "ready")
    lost = await wait_state(modem, "initializing")
    assert "no answer to AT+CSQ within 10 s" in lost.last_error
    await wait_state(modem, "ready")
    assert fake.count("ATE0") == 2
    after_timeout = fake.received[fake.received.index("AT+CSQ") + 1 :]
    assert after_timeout[:2] == ["AT", "ATE0"]  # bare AT flush, then a fresh initialisation
    assert await modem.send_pdu(SUBMIT, 19) == 42
    modem.request_stop()


async def test_frozen_modem_goes_down_port_reopened_with_backoff(pty_clock, harness, link):
    fake = harness.plug()
    modem = await harness.start(fake, init_retry_backoff=(7,))
    await settled(modem)
    fake.frozen = True  # e.g. SIM800 freeze (TinyGSM #4): nothing answers, not even a bare AT
    with pytest.raises(ModemUnavailable, match="no '> ' prompt"):
        await modem.send_pdu(SUBMIT, 19)
    down = await wait_state(modem, "down")
    assert "no answer to ATE0" in down.last_error
    assert fake.count("ATE0") == 1 + 3  # first init, then three failed re-initialisations
    went_down = trio.current_time()
    fake.frozen = False  # power-cycled: the reopened port initialises again
    await wait_state(modem, "ready")
    assert trio.current_time() - went_down >= 7
    assert fake.count("ATE0") == 5
    modem.request_stop()


async def test_send_without_cmgs_answer_is_temporary_and_reinitialises(pty_clock, harness, link):
    fake = harness.plug()
    fake.cmgs_answer = b""  # PDU taken, then silence
    modem = await harness.start(fake, send_timeout=60.0)
    await settled(modem)
    started = trio.current_time()
    with pytest.raises(SendError, match="may have been sent") as caught:
        await modem.send_pdu(SUBMIT, 19)
    assert (caught.value.code, caught.value.kind) == (None, "temporary")
    assert trio.current_time() - started >= 60
    await wait_state(modem, "ready")
    assert fake.count("ATE0") == 2
    modem.request_stop()


async def test_send_without_prompt_is_unavailable_not_sent(pty_clock, harness, link):
    fake = harness.plug()
    fake.silent["AT+CMGS=19"] = 1
    modem = await harness.start(fake)
    await wait_state(modem, "ready")
    with pytest.raises(ModemUnavailable, match="no '> ' prompt"):
        await modem.send_pdu(SUBMIT, 19)
    assert fake.pdus == []
    await wait_state(modem, "ready")
    modem.request_stop()


async def test_repeated_init_failure_goes_down_then_retries(pty_clock, harness, link):
    fake = harness.plug()
    fake.cpin = ["SIM PIN"]
    modem = await harness.start(fake)
    down = await wait_state(modem, "down")
    assert down.last_error == "the SIM asks for a PIN and no pin is configured"
    with pytest.raises(ModemUnavailable, match="down: the SIM asks for a PIN"):
        await modem.send_pdu(SUBMIT, 19)
    fake.cpin = ["READY"]  # someone fixed the SIM: the backoff retry succeeds
    await wait_state(modem, "ready")
    modem.request_stop()


async def test_pin_is_sent_once_and_sim_busy_is_waited_out(pty_clock, harness, link):
    fake = harness.plug()
    fake.scripted['AT+CPIN="1234"'] = [b"\r\nOK\r\n"]
    fake.scripted["AT+CPIN?"] = [b"\r\n+CPIN: SIM PIN\r\n\r\nOK\r\n", b"\r\n+CME ERROR: 14\r\n"]
    modem = await harness.start(fake, pin="1234")
    await wait_state(modem, "ready")
    assert fake.count('AT+CPIN="1234"') == 1
    assert fake.count("AT+CPIN?") == 3  # SIM PIN, busy (+CME 14), READY
    modem.request_stop()


async def test_cmti_read_emit_acknowledge_delete(pty_clock, harness, link):
    fake = harness.plug()
    modem = await harness.start(fake)
    await settled(modem)
    fake.storage["SM"][3] = DELIVER
    fake.write(b'\r\n+CMTI: "SM",3\r\n')
    message = await next_message(modem)
    assert message == IncomingSms("gsm0", DELIVER, "SM", 3)
    assert "AT+CMGR=3" in fake.received
    assert "AT+CMGD=3" not in fake.received  # nothing deleted before the gateway committed it
    await modem.acknowledge(message)
    assert "AT+CMGD=3" in fake.received
    assert fake.storage["SM"] == {}
    modem.request_stop()


async def test_stored_messages_listed_at_start_and_deleted_per_index(pty_clock, harness, link):
    fake = harness.plug()
    fake.storage["SM"] = {0: DELIVER, 1: REPORT}  # index 0 is valid (gammu F_SMS_LOCATION_0)
    modem = await harness.start(fake)
    first = await next_message(modem)
    second = await next_message(modem)
    assert first == IncomingSms("gsm0", DELIVER, "SM", 0)
    assert second == StatusReport("gsm0", REPORT, "SM", 1)
    await modem.acknowledge(second)
    await modem.acknowledge(first)
    assert [c for c in fake.received if c.startswith("AT+CMGD")] == ["AT+CMGD=1", "AT+CMGD=0"]
    modem.request_stop()


async def test_routed_status_report_cds_with_quectel_quirk(pty_clock, harness, link):
    fake = harness.plug(manufacturer="Quectel", model="EC25")
    modem = await harness.start(fake)
    await settled(modem)
    assert "AT+CNMI=2,1,0,1,0" in fake.received  # ds=1: +CDS, reports in SR would be announced as SM
    fake.write(b"\r\n+CDS: 25\r\n" + REPORT[:20].encode())
    await trio.sleep(0.2)
    fake.write(REPORT[20:].encode() + b"\r\n")
    report = await next_message(modem)
    assert report == StatusReport("gsm0", REPORT, None, None)
    await modem.acknowledge(report)  # CSMS service 0: no +CNMA needed
    assert "AT+CNMA" not in fake.received
    modem.request_stop()


async def test_quectel_cdsi_announced_sm_is_read_from_sr(pty_clock, harness, link):
    fake = harness.plug(manufacturer="Quectel", model="EC25")
    modem = await harness.start(fake)
    await settled(modem)
    fake.storage["SR"][0] = REPORT
    fake.storage["SM"][0] = DELIVER  # the unrelated SMS a naive CMGR on SM would read and delete
    fake.write(b'\r\n+CDSI: "SM",0\r\n')
    report = await next_message(modem)
    assert report == StatusReport("gsm0", REPORT, "SR", 0)
    assert fake.mem1 == "SM"  # switched back after reading
    await modem.acknowledge(report)
    assert fake.storage["SR"] == {} and fake.storage["SM"] == {0: DELIVER}
    modem.request_stop()


async def test_unplug_goes_absent_and_recovers_when_device_returns(pty_clock, harness, link):
    fake = harness.plug()
    modem = await harness.start(fake)
    await wait_state(modem, "ready")
    fake.hang_up()
    # udev removes the /dev/serial/by-id link with the device; without that, another process's new pty could
    # take the freed /dev/pts number and the driver would (rightly) find a device behind the old path.
    link.unlink()
    absent = await wait_state(modem, "absent")
    assert absent.last_error
    with pytest.raises(ModemUnavailable, match="absent"):
        await modem.send_pdu(SUBMIT, 19)
    await trio.sleep(5)  # still absent across a few retries
    assert modem.status.state == "absent"
    replugged = harness.plug()  # a new pty behind the same path
    await wait_state(modem, "ready")
    assert await modem.send_pdu(SUBMIT, 19) == 42
    assert replugged.pdus == [SUBMIT]
    modem.request_stop()


async def test_start_while_unplugged_reports_absent(pty_clock, harness, link):
    modem = GsmModem("gsm0", str(link), monitor_interval=3600.0)
    await harness.nursery.start(modem.run)
    assert modem.status.state == "absent"
    assert "does not exist" in modem.status.last_error
    modem.request_stop()


async def test_request_stop_finishes_command_in_flight(pty_clock, harness, link):
    fake = harness.plug()
    modem = await harness.start(fake)
    await wait_state(modem, "ready")
    fake.cmgs_answer = b""  # answer later, by hand
    done = trio.Event()
    results = []

    async def send() -> None:
        results.append(await modem.send_pdu(SUBMIT, 19))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        with trio.fail_after(30):
            await fake.pdu_received.wait()  # the driver now waits for +CMGS
        modem.request_stop()
        await trio.sleep(5)
        assert not done.is_set()
        fake.write(b"\r\n+CMGS: 77\r\n\r\nOK\r\n")
    assert results == [77]
    with trio.fail_after(30):
        async for _ in modem.events:  # run() returned: the channel closes
            pass
    with pytest.raises(ModemUnavailable, match="stopping"):
        await modem.send_pdu(SUBMIT, 19)


async def test_routed_sms_needs_cnma_when_csms_is_1_and_rssi_urc_updates(pty_clock, harness, link):
    fake = harness.plug()
    fake.scripted["AT+CSMS?"] = [b"\r\n+CSMS: 1,1,1,1\r\n\r\nOK\r\n"]
    fake.scripted["AT+CNMA"] = [b"\r\nOK\r\n"]
    modem = await harness.start(fake)
    await settled(modem)
    fake.write(b"\r\n^RSSI:25\r\n\r\n+CMT: ,24\r\n" + DELIVER.encode() + b"\r\n")
    message = await next_message(modem)
    assert message == IncomingSms("gsm0", DELIVER, None, None)
    assert (modem.status.rssi, modem.status.signal_dbm) == (25, -63)
    await modem.acknowledge(message)
    assert fake.count("AT+CNMA") == 1
    modem.request_stop()


def test_mask_number_hides_the_middle():
    assert mask_number("+819012345678") == "+8190****5678"
    assert mask_number("12345") == "*****"
    assert mask_number(None) == ""


# --- reset (AT+CFUN=1,1) and requested re-initialisation ---------------------------------------------------
def commands_after(fake: FakeModem, command: str) -> list[str]:
    return fake.received[fake.received.index(command) + 1 :]


async def test_reset_sends_cfun_then_settles_and_reinitialises(pty_clock, harness, link):
    fake = harness.plug()
    modem = await harness.start(fake, reset_settle=5.0)
    await settled(modem)
    started = trio.current_time()
    await modem.reset()
    assert fake.count("AT+CFUN=1,1") == 1
    resetting = await wait_state(modem, "initializing")
    assert resetting.last_error == "reset (AT+CFUN=1,1)"
    with pytest.raises(ModemUnavailable, match="initializing"):
        await modem.send_pdu(SUBMIT, 19)
    await wait_state(modem, "ready")
    assert trio.current_time() - started >= 5.0  # the reboot settle time passed before the first AT
    # The reset modem echoes again (E1): the driver flushes, then runs the whole initialisation.
    assert commands_after(fake, "AT+CFUN=1,1")[:3] == ["AT", "ATE0", "AT+CMEE=1"]
    assert fake.count("ATE0") == 2 and fake.count("AT+CMGF=0") == 2
    assert any(c.startswith("AT+CNMI=") for c in commands_after(fake, "AT+CFUN=1,1"))
    assert await modem.send_pdu(SUBMIT, 19) == 42
    modem.request_stop()


async def test_reset_without_answer_is_taken_as_rebooting(pty_clock, harness, link):
    fake = harness.plug()
    fake.silent["AT+CFUN=1,1"] = 1  # some firmwares reboot before answering
    modem = await harness.start(fake, reset_settle=1.0)
    await settled(modem)
    await modem.reset()
    assert (await wait_state(modem, "initializing")).last_error == "reset (AT+CFUN=1,1)"
    await wait_state(modem, "ready")
    assert fake.count("ATE0") == 2
    modem.request_stop()


async def test_reset_refused_raises_config_error_and_reinitialises(pty_clock, harness, link):
    fake = harness.plug()
    fake.scripted["AT+CFUN=1,1"] = [b"\r\n+CME ERROR: 3\r\n"]  # TS 27.007 §9.2.1: operation not allowed
    modem = await harness.start(fake)
    await settled(modem)
    with pytest.raises(SendError) as info:
        await modem.reset()
    assert info.value.kind == "config" and info.value.code == 3
    assert "refused AT+CFUN=1,1" in str(info.value)
    assert "reset refused" in (await wait_state(modem, "initializing")).last_error
    await wait_state(modem, "ready")
    assert fake.count("ATE0") == 2
    modem.request_stop()


async def test_reset_of_usb_modem_whose_port_vanishes_recovers_when_it_returns(pty_clock, harness, link):
    fake = harness.plug()
    fake.hang_up_on_reset = True
    modem = await harness.start(fake, init_retry_backoff=(1, 2))
    await settled(modem)
    await modem.reset()  # the port dropped mid-command: that is the reboot, not an error
    link.unlink()  # udev removes the by-id link with the device
    await wait_state(modem, "absent")
    rebooted = harness.plug()
    await wait_state(modem, "ready")
    assert rebooted.count("ATE0") == 1 and rebooted.count("AT+CFUN=1,1") == 0
    assert await modem.send_pdu(SUBMIT, 19) == 42
    modem.request_stop()


async def test_reset_when_not_ready_raises_unavailable(pty_clock, harness, link):
    modem = GsmModem("gsm0", str(link), monitor_interval=3600.0)
    await harness.nursery.start(modem.run)
    with pytest.raises(ModemUnavailable, match="absent"):
        await modem.reset()
    modem.request_stop()


async def test_request_reinit_runs_the_initialisation_again_without_reset(pty_clock, harness, link):
    fake = harness.plug()
    modem = await harness.start(fake)
    await settled(modem)
    modem.request_reinit()
    assert modem.status.state == "initializing"
    assert (await wait_state(modem, "initializing")).last_error == "re-initialisation requested"
    await wait_state(modem, "ready")
    assert fake.count("ATE0") == 2 and fake.count("AT+CFUN=1,1") == 0
    modem.request_reinit()  # ready again: a second request works the same way
    await wait_state(modem, "initializing")
    await wait_state(modem, "ready")
    assert fake.count("ATE0") == 3
    modem.request_stop()


async def test_request_reinit_is_ignored_unless_ready(pty_clock, harness, link):
    modem = GsmModem("gsm0", str(link), monitor_interval=3600.0)
    await harness.nursery.start(modem.run)
    modem.request_reinit()
    assert modem.status.state == "absent"
    modem.request_stop()
