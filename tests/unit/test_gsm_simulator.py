"""The simulated GSM modem, driven over its real pty with raw bytes, as a client would."""

from __future__ import annotations

import argparse
import os
import re
import tty
from datetime import datetime, timedelta, timezone
from functools import partial

import pytest
import trio
import trio.testing

from simulators import sms_pdu
from simulators.gsm_modem import (
    AtFramer,
    CommandLine,
    PromptAbort,
    PromptText,
    SimulatedGsmModem,
    StorageFull,
    add_cli_options,
    options_from_args,
    parse_command_line,
    serve_standalone,
)

JST = timezone(timedelta(hours=9))
FIXED_NOW = datetime(2025, 11, 27, 14, 0, 22, tzinfo=JST)
FINAL = re.compile(rb"\r\n(OK|ERROR|\+CM[ES] ERROR: [^\r]*)\r\n")
HELLO_SUBMIT = "0011000C911809214365870000AA05E8329BFD06"  # sms.md §1 worked example, AT+CMGS=19
HELLO_SUBMIT_SRR = "0031000C911809214365870000AA05E8329BFD06"  # same with TP-SRR (FO 0x31)


class Client:
    """A raw-bytes client on the pty, like a driver with pyserial would be."""

    def __init__(self, path: str, *, timeout: float | None) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.buffer = bytearray()
        self.timeout = timeout

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    async def send(self, data: bytes | str) -> None:
        os.write(self.fd, data.encode("latin-1") if isinstance(data, str) else data)

    async def _fill(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)
                continue
            if not data:
                raise EOFError("the modem side hung up")
            self.buffer += data
            return

    async def read_until(self, pattern: bytes | re.Pattern[bytes]) -> bytes:
        """Everything up to and including the first match; the rest stays buffered."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        with trio.fail_after(self.timeout) if self.timeout else _no_timeout():
            while (match := regex.search(self.buffer)) is None:
                await self._fill()
        out = bytes(self.buffer[: match.end()])
        del self.buffer[: match.end()]
        return out

    async def command(self, line: str) -> str:
        await self.send(line + "\r")
        return (await self.read_until(FINAL)).decode("latin-1")

    async def nothing_for(self, seconds: float) -> bytes:
        """Whatever arrives within `seconds` (real time tests only)."""
        with trio.move_on_after(seconds):
            while True:
                await self._fill()
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


class _no_timeout:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def final_of(response: str) -> str:
    return FINAL.findall(response.encode("latin-1"))[-1].decode()


def lines_of(response: str | bytes) -> list[str]:
    if isinstance(response, bytes):
        response = response.decode("latin-1")
    return [line for line in response.split("\r\n") if line]


@pytest.fixture
async def start(nursery):
    """start(**config) -> (modem, client) with the modem served in the test's nursery."""
    clients: list[Client] = []
    # No real-time deadlines under a MockClock: the autojump would fire them while bytes are in flight.
    mock = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)

    async def _start(link: str | None = None, **config):
        config.setdefault("send_latency", 0)
        config.setdefault("report_delay", 0)
        config.setdefault("now", lambda: FIXED_NOW)
        modem = SimulatedGsmModem(**config)
        path = await nursery.start(partial(modem.run, link=link))
        client = Client(path, timeout=None if mock else 10)
        clients.append(client)
        await client.command("ATE0")
        return modem, client

    yield _start
    for client in clients:
        client.close()


@pytest.fixture
def slow_io_clock():
    # Autojump only after 20 ms of real idleness: pty bytes are delivered by a kernel worker, so with a
    # threshold of 0 the clock could jump while a reply is still in flight.
    return trio.testing.MockClock(autojump_threshold=0.02)


async def open_client(modem, **kw) -> Client:
    return Client(modem.path, timeout=10, **kw)


# --- framing and parsing (sans-IO) ------------------------------------------------------------------------


def test_framer_switches_to_prompt_mode_within_one_read():
    framer = AtFramer()
    framer.receive_data(b"AT+CMGS=19\r0011\x1aAT\r")
    echo, event = framer.next_event()
    assert (echo, event) == (b"AT+CMGS=19\r", CommandLine("AT+CMGS=19"))
    framer.enter_prompt()
    assert framer.next_event() == (b"0011", PromptText(b"0011"))
    assert framer.next_event() == (b"AT\r", CommandLine("AT"))
    framer.receive_data(b"ab\x08c\r")
    assert framer.next_event()[1] == CommandLine("ac")
    framer.enter_prompt()
    framer.receive_data(b"xx\x1b")
    assert framer.next_event() == (b"xx", PromptAbort())


def test_command_line_parsing():
    cmds = parse_command_line('ATE0V1;+CMGF=1;+CSCA="+81,90",145;+CPMS?;+CNMI=?;&F;S0=0')
    assert [(c.name, c.form) for c in cmds] == [
        ("E", "set"), ("V", "set"), ("+CMGF", "set"), ("+CSCA", "set"), ("+CPMS", "read"),
        ("+CNMI", "test"), ("&F", "exec"), ("S0", "set"),
    ]
    assert cmds[3].args == ("+81,90", "145")
    assert parse_command_line("hello") is None
    assert parse_command_line("at") == []


# --- basic behaviour over the pty ------------------------------------------------------------------------


async def test_echo_on_by_default_and_ate0_turns_it_off(nursery):
    modem = SimulatedGsmModem()
    path = await nursery.start(modem.run)
    client = Client(path, timeout=10)
    try:
        await client.send("AT\r")
        assert await client.read_until(FINAL) == b"AT\r\r\nOK\r\n"
        await client.send("ATE0\r")
        assert await client.read_until(FINAL) == b"ATE0\r\r\nOK\r\n"
        await client.send("AT\r")
        assert await client.read_until(FINAL) == b"\r\nOK\r\n"
    finally:
        client.close()


async def test_symlink_points_at_the_slave(start, tmp_path):
    link = str(tmp_path / "ttyGSM0")
    modem, client = await start(link=link)
    assert modem.path == link
    assert os.readlink(link).startswith("/dev/pts/")
    assert final_of(await client.command("AT")) == "OK"


async def test_identification_commands(start):
    modem, client = await start(imei="351234567890123", imsi="440101234567890")
    assert lines_of(await client.command("ATI")) == ["SIMULATED", "EC25-SIM", "Revision: EC25SIMR01A01", "OK"]
    assert lines_of(await client.command("AT+CGMI")) == ["SIMULATED", "OK"]
    assert lines_of(await client.command("AT+CGMM")) == ["EC25-SIM", "OK"]
    assert lines_of(await client.command("AT+CGMR")) == ["EC25SIMR01A01", "OK"]
    assert lines_of(await client.command("AT+CGSN")) == ["351234567890123", "OK"]
    assert lines_of(await client.command("AT+CIMI")) == ["440101234567890", "OK"]
    assert "AT+CMGS" in await client.command("AT+CLAC")


async def test_unknown_command_errors_follow_cmee(start):
    modem, client = await start()
    assert lines_of(await client.command("AT+NOPE")) == ["ERROR"]
    await client.command("AT+CMEE=1")
    assert lines_of(await client.command("AT+NOPE")) == ["+CME ERROR: 100"]
    await client.command("AT+CMEE=2")
    assert lines_of(await client.command("AT+NOPE")) == ["+CME ERROR: unknown"]
    assert lines_of(await client.command("AT+CMEE?")) == ["+CMEE: 2", "OK"]
    assert lines_of(await client.command("AT+CMEE=7")) == ["+CME ERROR: incorrect parameters"]


async def test_several_commands_on_one_line_and_stop_at_first_error(start):
    modem, client = await start()
    assert lines_of(await client.command("AT+CMGF=1;+CSQ;+CMGF?")) == ["+CSQ: 20,99", "+CMGF: 1", "OK"]
    assert final_of(await client.command("AT+CMGF=0;+BOGUS;+CMGF=1")) == "ERROR"
    assert lines_of(await client.command("AT+CMGF?")) == ["+CMGF: 0", "OK"]


async def test_pin_gate(start):
    modem, client = await start(pin="1234")
    await client.command("AT+CMEE=1;+CREG=1")
    assert lines_of(await client.command("AT+CPIN?")) == ["+CPIN: SIM PIN", "OK"]
    assert lines_of(await client.command("AT+CMGL=4")) == ["+CMS ERROR: 311"]
    assert lines_of(await client.command("AT+CIMI")) == ["+CME ERROR: 11"]
    assert lines_of(await client.command("AT+CREG?")) == ["+CREG: 1,0", "OK"]
    assert lines_of(await client.command('AT+CPIN="0000"')) == ["+CME ERROR: 16"]
    assert lines_of(await client.command('AT+CPIN="1234"')) == ["OK"]
    assert lines_of(await client.read_until(b"+CREG: 1\r\n")) == ["+CREG: 1"]
    assert lines_of(await client.command("AT+CPIN?")) == ["+CPIN: READY", "OK"]


async def test_registration_queries_and_urcs(start):
    modem, client = await start()
    assert lines_of(await client.command("AT+CREG?")) == ["+CREG: 0,1", "OK"]
    assert lines_of(await client.command("AT+COPS?")) == ['+COPS: 0,0,"NTT DOCOMO",7', "OK"]
    await client.command("AT+COPS=3,2")
    assert lines_of(await client.command("AT+COPS?")) == ['+COPS: 0,2,"44010",7', "OK"]
    assert lines_of(await client.command("AT+CSQ")) == ["+CSQ: 20,99", "OK"]
    await client.command("AT+CREG=2")
    assert lines_of(await client.command("AT+CREG?")) == ['+CREG: 2,1,"1A2B","01C3D4E5"', "OK"]
    await client.command("AT+CREG=1")
    modem.set_registration(2)
    assert lines_of(await client.read_until(b"+CREG: 2\r\n")) == ["+CREG: 2"]
    assert lines_of(await client.command("AT+COPS?")) == ["+COPS: 0", "OK"]
    modem.set_registration(5)
    assert lines_of(await client.read_until(b"+CREG: 5\r\n")) == ["+CREG: 5"]


async def test_csca_cmgf_csms_cnmi_read_and_set(start):
    modem, client = await start()
    assert lines_of(await client.command("AT+CSCA?")) == ['+CSCA: "+819000000000",145', "OK"]
    await client.command('AT+CSCA="+8613800100500",145')
    assert lines_of(await client.command("AT+CSCA?")) == ['+CSCA: "+8613800100500",145', "OK"]
    assert lines_of(await client.command("AT+CSMS=1")) == ["+CSMS: 1,1,1", "OK"]
    assert lines_of(await client.command("AT+CSMS?")) == ["+CSMS: 1,1,1,1", "OK"]
    await client.command("AT+CNMI=2,1,0,2,0")
    assert lines_of(await client.command("AT+CNMI?")) == ["+CNMI: 2,1,0,2,0", "OK"]
    assert lines_of(await client.command("AT+CNMI=2,1,0,3,0")) == ["+CMS ERROR: 303"]


async def test_cpms_storages_with_used_and_total(start):
    modem, client = await start(storage_sizes={"SM": 5, "ME": 10, "SR": 4})
    assert lines_of(await client.command("AT+CPMS?")) == ['+CPMS: "SM",0,5,"SM",0,5,"SM",0,5', "OK"]
    modem.inject_sms("+819011112222", "one")
    modem.inject_sms("+819011112222", "two", storage="ME")
    assert lines_of(await client.command('AT+CPMS="ME","SM","MT"')) == ["+CPMS: 1,10,1,5,2,15", "OK"]
    assert lines_of(await client.command('AT+CPMS="SR"')) == ["+CPMS: 0,4,1,5,2,15", "OK"]
    assert lines_of(await client.command('AT+CPMS="SM","SR"')) == ["+CMS ERROR: 302"]
    assert lines_of(await client.command('AT+CPMS="XX"')) == ["+CMS ERROR: 302"]


# --- sending ------------------------------------------------------------------------------------------------


async def send_pdu(client: Client, hex_pdu: str, length: int) -> str:
    await client.send(f"AT+CMGS={length}\r")
    await client.read_until(b"\r\n> ")
    await client.send(hex_pdu + "\x1a")
    return (await client.read_until(FINAL)).decode()


async def test_pdu_send_with_report_stored_as_cdsi(start):
    modem, client = await start()
    await client.command("AT+CNMI=2,1,0,2,0")
    response = await send_pdu(client, HELLO_SUBMIT_SRR, 19)
    assert lines_of(response) == ["+CMGS: 0", "OK"]
    assert lines_of(await client.read_until(b'+CDSI: "SR",0\r\n')) == ['+CDSI: "SR",0']
    record = modem.sent[0]
    assert (record.destination, record.text, record.encoding) == ("+819012345678", "hello", "gsm7")
    assert record.mr == 0
    assert record.request_report and record.part == (1, 1) and record.pdu_hex == HELLO_SUBMIT_SRR
    await client.command('AT+CPMS="SR"')
    header, pdu, ok = lines_of(await client.command("AT+CMGR=0"))
    assert header == "+CMGR: 0,,25" and ok == "OK"
    assert pdu == "0791180900000000" + "06000C91180921436587" + "52117241002263" * 2 + "00"


async def test_pdu_send_with_report_as_cds(start):
    modem, client = await start(report_status=0x46)
    await client.command("AT+CNMI=2,1,0,1,0")
    await send_pdu(client, HELLO_SUBMIT_SRR, 19)
    urc = lines_of(await client.read_until(re.compile(rb"\+CDS: 25\r\n[0-9A-F]+\r\n")))
    assert urc[0] == "+CDS: 25"
    assert urc[1].endswith("46")  # TP-ST validity period expired
    assert modem.storages["SR"] == {}


async def test_no_report_without_srr_and_mr_wraps(start):
    modem, client = await start(initial_mr=255)
    await client.command("AT+CNMI=2,1,0,2,0")
    assert lines_of(await send_pdu(client, HELLO_SUBMIT, 19)) == ["+CMGS: 255", "OK"]
    assert lines_of(await send_pdu(client, HELLO_SUBMIT, 19)) == ["+CMGS: 0", "OK"]
    assert await client.nothing_for(0.2) == b""
    assert [s.mr for s in modem.sent] == [255, 0]


async def test_cmgs_length_mismatch_bad_pdu_and_escape(start):
    modem, client = await start()
    await client.command("AT+CMEE=1")
    assert lines_of(await send_pdu(client, HELLO_SUBMIT, 20)) == ["+CMS ERROR: 304"]  # off by one
    assert lines_of(await send_pdu(client, "0011ZZ", 3)) == ["+CMS ERROR: 304"]
    deliver = "0004000C91180921436587000005E8329BFD06"  # an SMS-DELIVER is no SUBMIT
    assert lines_of(await send_pdu(client, deliver, 18)) == ["+CMS ERROR: 304"]
    await client.send("AT+CMGS=19\r")
    await client.read_until(b"> ")
    await client.send(HELLO_SUBMIT + "\x1b")
    assert lines_of((await client.read_until(FINAL)).decode()) == ["OK"]
    assert modem.sent == []


async def test_multipart_submit_records_part_info(start):
    modem, client = await start()
    part = "0051000C911809214365870000AA09050003AB0201D069"  # part 1/2 "hi", see test_sim_pdu
    assert final_of(await send_pdu(client, part, 22)) == "OK"
    assert modem.sent[0].part == (1, 2)
    assert modem.sent[0].concat == sms_pdu.Concat(0xAB, 2, 1, 8)


async def test_send_latency_and_report_delay_on_mock_clock(start, slow_io_clock):
    modem, client = await start(send_latency=3.0, report_delay=2.0)
    await client.command("AT+CNMI=2,1,0,2,0")
    began = trio.current_time()
    await send_pdu(client, HELLO_SUBMIT_SRR, 19)
    answered = trio.current_time()
    await client.read_until(b"+CDSI:")
    reported = trio.current_time()
    assert 3.0 <= answered - began < 3.5
    assert 2.0 <= reported - answered < 2.5
    assert modem.sent[0].time - began == pytest.approx(3.0, abs=0.5)
    modem.queue_report(0x20, delay=10.0)
    await send_pdu(client, HELLO_SUBMIT_SRR, 19)
    sent_at = trio.current_time()
    await client.read_until(b'+CDSI: "SR",1\r\n')
    assert trio.current_time() - sent_at >= 10.0
    assert modem.storages["SR"][1].status == 0x20


async def test_wait_sent(start, nursery):
    modem, client = await start()
    results = []

    async def waiter():
        results.append(len(await modem.wait_sent(2)))

    nursery.start_soon(waiter)
    await send_pdu(client, HELLO_SUBMIT, 19)
    await trio.testing.wait_all_tasks_blocked()
    assert results == []
    await send_pdu(client, HELLO_SUBMIT, 19)
    await trio.testing.wait_all_tasks_blocked()
    assert results == [2]


async def test_text_mode_send_with_report(start):
    modem, client = await start()
    await client.command("AT+CMGF=1;+CSMP=49,167,0,0;+CNMI=2,1,0,1,0")
    await client.send('AT+CMGS="+819012345678"\r')
    await client.read_until(b"> ")
    await client.send("hello text\x1a")
    assert lines_of((await client.read_until(FINAL)).decode()) == ["+CMGS: 0", "OK"]
    urc = lines_of((await client.read_until(re.compile(rb"\+CDS: [^\r]*\r\n"))).decode())
    assert urc == ['+CDS: 6,0,"+819012345678",145,"25/11/27,14:00:22+36","25/11/27,14:00:22+36",0']
    record = modem.sent[0]
    assert (record.text, record.mode, record.encoding) == ("hello text", "text", "gsm7")
    assert record.request_report
    assert lines_of(await client.command("AT+CMGS=+8190")) == ["+CMS ERROR: 305"]  # <da> must be quoted


async def test_text_mode_ucs2_send(start):
    modem, client = await start()
    await client.command('AT+CMGF=1;+CSCS="UCS2";+CSMP=17,167,0,8')
    await client.send('AT+CMGS="+819012345678"\r')
    await client.read_until(b"> ")
    await client.send("65E5672C\x1a")
    assert final_of((await client.read_until(FINAL)).decode()) == "OK"
    assert (modem.sent[0].text, modem.sent[0].encoding) == ("日本", "ucs2")


# --- receiving --------------------------------------------------------------------------------------------


async def test_inject_multipart_out_of_order_as_cmti(start):
    modem, client = await start()
    await client.command("AT+CNMI=2,1,0,2,0")
    text = "".join(chr(ord("a") + i % 26) for i in range(400))  # 3 parts of 153/153/94 septets
    indices = modem.inject_sms("+819011112222", text, parts_order=[3, 1, 2])
    assert indices == [0, 1, 2]
    urcs = lines_of((await client.read_until(b'+CMTI: "SM",2\r\n')).decode())
    assert urcs == ['+CMTI: "SM",0', '+CMTI: "SM",1', '+CMTI: "SM",2']
    listing = lines_of(await client.command("AT+CMGL=4"))
    assert listing[0] == f"+CMGL: 0,0,,{len(bytes.fromhex(listing[1])) - 8}"  # TPDU length without the SCA
    # SCA 8 | FO | OA 8 | PID DCS | SCTS 7 | UDL -> the UDH starts at octet 27
    seqs = [bytes.fromhex(pdu)[27:33].hex().upper() for pdu in listing[1:6:2]]
    ref = seqs[0][6:8]
    assert seqs == [f"050003{ref}0303", f"050003{ref}0301", f"050003{ref}0302"]
    await client.command("AT+CMGF=1")
    texts = lines_of(await client.command('AT+CMGL="ALL"'))
    assert texts[0] == '+CMGL: 0,"REC READ","+819011112222",,"25/11/27,14:00:22+36"'
    assert texts[3] + texts[5] + texts[1] == text


async def test_inject_as_cmt_needs_cnma_when_csms_1(start):
    modem, client = await start()
    await client.command("AT+CSMS=1;+CNMI=2,2,0,1,0;+CMEE=1")
    modem.inject_sms("+819011112222", "z" * 200)  # two parts
    first = lines_of((await client.read_until(re.compile(rb"\+CMT: ,\d+\r\n[0-9A-F]+\r\n"))).decode())
    assert first[0].startswith("+CMT: ,")
    assert await client.nothing_for(0.2) == b""  # the second part waits for the acknowledgement
    assert lines_of(await client.command("AT+CNMA")) == ["OK"]
    second = lines_of((await client.read_until(re.compile(rb"\+CMT: ,\d+\r\n[0-9A-F]+\r\n"))).decode())
    assert second[1] != first[1]
    assert lines_of(await client.command("AT+CNMA")) == ["OK"]
    assert lines_of(await client.command("AT+CNMA")) == ["+CMS ERROR: 340"]
    assert modem.storages["SM"] == {}


async def test_missing_cnma_disables_routing_and_stores(start, slow_io_clock):
    modem, client = await start(ack_timeout=15.0)
    await client.command("AT+CSMS=1;+CNMI=2,2,0,1,0")
    modem.inject_sms("+819011112222", "unacknowledged")
    await client.read_until(re.compile(rb"\+CMT: ,\d+\r\n[0-9A-F]+\r\n"))
    await trio.sleep(16)
    assert lines_of(await client.command("AT+CNMI?")) == ["+CNMI: 2,0,0,0,0", "OK"]
    assert modem.storages["SM"][0].text == "unacknowledged"


async def test_cnmi_mode_0_buffers_until_enabled(start):
    modem, client = await start()
    await client.command("AT+CNMI=0,1,0,0,0")
    modem.inject_sms("+819011112222", "buffered")
    assert await client.nothing_for(0.2) == b""
    response = await client.command("AT+CNMI=2,1,0,0,0")
    assert '+CMTI: "SM",0' in response + (await client.read_until(b'+CMTI: "SM",0\r\n')).decode()


async def test_text_mode_cmt_and_ucs2_injection(start):
    modem, client = await start()
    await client.command("AT+CMGF=1;+CNMI=2,2,0,0,0")
    modem.inject_sms("+8613800000000", "你好")
    urc = lines_of((await client.read_until(re.compile(rb"\+CMT: [^\r]*\r\n[^\r]*\r\n"))).decode("latin-1"))
    assert urc[0] == '+CMT: "+8613800000000",,"25/11/27,14:00:22+36"'
    await client.command('AT+CSCS="UCS2"')
    modem.inject_sms("+8613800000000", "你好")
    urc = lines_of((await client.read_until(re.compile(rb"\+CMT: [^\r]*\r\n[^\r]*\r\n"))).decode())
    assert urc[1] == "4F60597D"


async def test_storage_full_is_reported_to_the_caller(start):
    modem, client = await start(storage_sizes={"SM": 1})
    modem.inject_sms("+819011112222", "fills it")
    with pytest.raises(StorageFull, match="SM is full"):
        modem.inject_sms("+819011112222", "no room")


# --- storage commands -----------------------------------------------------------------------------------


async def test_cmgr_marks_read_and_cmgl_filters(start):
    modem, client = await start(storage_sizes={"SM": 3})
    await client.command("AT+CMEE=1")
    modem.inject_sms("+819011112222", "first")
    modem.inject_sms("+819011112222", "second")
    header, pdu, ok = lines_of(await client.command("AT+CMGR=0"))
    assert header.startswith("+CMGR: 0,,") and ok == "OK"
    assert lines_of(await client.command("AT+CMGR=0"))[0].startswith("+CMGR: 1,,")
    unread = lines_of(await client.command("AT+CMGL=0"))
    assert [line for line in unread if line.startswith("+CMGL")] == [unread[0]]
    assert unread[0].startswith("+CMGL: 1,0")
    assert lines_of(await client.command("AT+CMGL=0")) == ["OK"]
    assert len(lines_of(await client.command("AT+CMGL=1"))) == 5
    assert lines_of(await client.command("AT+CMGR=2")) == ["OK"]  # empty slot
    assert lines_of(await client.command("AT+CMGR=3")) == ["+CMS ERROR: 321"]  # beyond SM size
    await client.command("AT+CMGF=1")
    text = lines_of(await client.command("AT+CMGR=1"))
    assert text == ['+CMGR: "REC READ","+819011112222",,"25/11/27,14:00:22+36"', "second", "OK"]


async def test_cmgd_index_and_flags(start):
    modem, client = await start()
    for word in ("a", "b", "c", "d"):
        modem.inject_sms("+819011112222", word)
    await client.command("AT+CMGR=0;+CMGR=1")  # 0, 1 read; 2, 3 unread
    await client.command("AT+CMGD=2")
    assert sorted(modem.storages["SM"]) == [0, 1, 3]
    await client.command("AT+CMGD=0,1")  # all read
    assert sorted(modem.storages["SM"]) == [3]
    await client.command("AT+CMGD=0,4")
    assert modem.storages["SM"] == {}


async def test_cmgw_then_cmss(start):
    modem, client = await start()
    await client.send("AT+CMGW=19\r")
    await client.read_until(b"> ")
    await client.send(HELLO_SUBMIT + "\x1a")
    assert lines_of((await client.read_until(FINAL)).decode()) == ["+CMGW: 0", "OK"]
    assert lines_of(await client.command("AT+CMGL=2"))[:2] == ["+CMGL: 0,2,,19", HELLO_SUBMIT]
    assert lines_of(await client.command("AT+CMSS=0")) == ["+CMSS: 0", "OK"]
    assert modem.sent[0].text == "hello"
    assert modem.storages["SM"][0].stat == 3
    await client.command("AT+CMGF=1")
    await client.send('AT+CMGW="+819055556666"\r')
    await client.read_until(b"> ")
    await client.send("draft\x1a")
    assert lines_of((await client.read_until(FINAL)).decode()) == ["+CMGW: 1", "OK"]
    expected = ['+CMGR: "STO UNSENT","+819055556666",', "draft", "OK"]
    assert lines_of(await client.command("AT+CMGR=1")) == expected


async def test_cfun_reset_and_radio_off(start):
    modem, client = await start()
    await client.command("AT+CMEE=1")
    assert lines_of(await client.command("AT+CFUN?")) == ["+CFUN: 1", "OK"]
    await client.command("AT+CFUN=0")
    assert lines_of(await client.command("AT+CSQ")) == ["+CSQ: 99,99", "OK"]
    assert lines_of(await client.command("AT+CREG?")) == ["+CREG: 0,0", "OK"]
    assert lines_of(await send_pdu(client, HELLO_SUBMIT, 19)) == ["+CMS ERROR: 331"]
    await client.send("AT+CFUN=1,1\r")
    assert lines_of((await client.read_until(b"RDY\r\n")).decode()) == ["OK", "RDY"]
    await client.command("ATE0")
    assert lines_of(await client.command("AT+CMEE?")) == ["+CMEE: 0", "OK"]
    assert lines_of(await client.command("AT+CFUN?")) == ["+CFUN: 1", "OK"]


async def test_atz_and_at_f_restore_defaults(start):
    modem, client = await start()
    await client.command("AT+CMGF=1;+CMEE=2")
    await client.send("ATZ\r")
    assert await client.read_until(FINAL) == b"\r\nOK\r\n"
    assert (await client.command("AT+CMGF?")).startswith("AT+CMGF?\r")  # echo is back on
    await client.command("ATE0;+CMGF=1")
    await client.command("AT&F")
    await client.command("ATE0")
    assert lines_of(await client.command("AT+CMGF?")) == ["+CMGF: 0", "OK"]


# --- faults ----------------------------------------------------------------------------------------------


async def test_no_answer_fault(start):
    modem, client = await start()
    modem.set_no_answer()
    await client.send("AT\r")
    assert await client.nothing_for(0.3) == b""
    modem.set_no_answer(False)
    assert lines_of(await client.command("AT")) == ["OK"]


async def test_send_failures_then_success(start):
    modem, client = await start()
    await client.command("AT+CMEE=1")
    modem.fail_next_sends(500, count=2)
    modem.fail_next_sends(38)
    for code in (500, 500, 38):
        assert lines_of(await send_pdu(client, HELLO_SUBMIT, 19)) == [f"+CMS ERROR: {code}"]
    assert lines_of(await send_pdu(client, HELLO_SUBMIT, 19)) == ["+CMGS: 0", "OK"]
    await client.command("AT+CMEE=2")
    modem.fail_next_sends(330)
    assert lines_of(await send_pdu(client, HELLO_SUBMIT, 19)) == ["+CMS ERROR: SMSC address unknown"]


async def test_registration_loss_fails_sends_with_331(start):
    modem, client = await start()
    await client.command("AT+CREG=1;+CMEE=1")
    modem.set_registration(0)
    await client.read_until(b"+CREG: 0\r\n")
    assert lines_of(await send_pdu(client, HELLO_SUBMIT, 19)) == ["+CMS ERROR: 331"]
    modem.set_registration(1)
    await client.read_until(b"+CREG: 1\r\n")
    assert final_of(await send_pdu(client, HELLO_SUBMIT, 19)) == "OK"


async def test_garbage_lines_interleaved(start):
    modem, client = await start()
    modem.set_garbage(1.0, seed=7)
    response = await client.command("AT+CSQ")
    assert final_of(response) == "OK"
    assert "+CSQ: 20,99" in response
    assert len(lines_of(response)) >= 4  # junk before the info line and before OK
    modem.set_garbage(0.0)
    modem.emit_garbage(b"\xff\xfe junk")
    assert await client.read_until(b"junk\r\n") == b"\r\n\xff\xfe junk\r\n"


async def test_vendor_urc_inside_a_cmgr_response(start):
    modem, client = await start()
    modem.inject_sms("+819011112222", "hello")
    modem.set_vendor_urc("^RSSI: 18")
    lines = lines_of(await client.command("AT+CMGR=0"))
    assert lines[0].startswith("+CMGR: 0,,") and lines[1] == "^RSSI: 18" and lines[3] == "OK"
    assert lines_of(await client.command("AT")) == ["^RSSI: 18", "OK"]


async def test_report_stored_in_sr_but_announced_as_sm(start):
    modem, client = await start(sr_announced_as_sm=True)
    await client.command("AT+CNMI=2,1,0,2,0")
    await send_pdu(client, HELLO_SUBMIT_SRR, 19)
    await client.read_until(b'+CDSI: "SM",0\r\n')
    assert lines_of(await client.command("AT+CMGR=0")) == ["OK"]  # nothing in SM at 0
    assert modem.storages["SR"][0].kind == "status_report"


async def test_unplug_and_replug(start, tmp_path):
    link = str(tmp_path / "ttyGSM1")
    modem, client = await start(link=link)
    await client.command("AT+CMGF=1")
    modem.unplug()
    assert not await trio.Path(link).is_symlink()
    with pytest.raises((EOFError, OSError)):
        await client.read_until(b"never")
    with pytest.raises(OSError):
        await client.send("AT\r")
    client.close()
    path = modem.replug()
    assert path == link and await trio.Path(link).is_symlink()
    fresh = Client(link, timeout=10)
    try:
        await fresh.send("AT\r")
        assert await fresh.read_until(FINAL) == b"AT\r\r\nOK\r\n"  # power-on defaults: echo on
        assert lines_of(await fresh.command("AT+CMGF?"))[-2:] == ["+CMGF: 0", "OK"]
        assert str(await trio.Path(link).readlink()).startswith("/dev/pts/")  # repointed at the new pty
    finally:
        fresh.close()


# --- standalone command -----------------------------------------------------------------------------------


def test_cli_options_map_to_modem_keywords():
    parser = argparse.ArgumentParser()
    add_cli_options(parser)
    args = parser.parse_args(["--latency", "0.5", "--report-delay", "1", "--report-status", "0x46",
                              "--name", "gsm9", "--quirk-sr-as-sm", "--sm-size", "3"])
    options = options_from_args(args)
    assert options["send_latency"] == 0.5 and options["report_status"] == 0x46
    assert options["sr_announced_as_sm"] is True and options["storage_sizes"]["SM"] == 3
    options.pop("verbose")
    modem = SimulatedGsmModem(**options)
    assert modem.name == "gsm9"


async def test_serve_standalone_answers_on_the_link(tmp_path, nursery):
    link = str(tmp_path / "ttyGSM2")
    path = await nursery.start(partial(serve_standalone, link, send_latency=0, name="standalone"))
    assert path == link
    client = Client(link, timeout=10)
    try:
        assert final_of(await client.command("AT")) == "OK"
    finally:
        client.close()
