"""Per-model GSM modem quirks, in one table, each entry backed by a public source.

`select_quirks(manufacturer, model)` picks the entry from the +CGMI / +CGMM answers; `quirks_named(name)`
honours an explicit `quirks:` setting in the configuration. Sources are the issue-tracker threads collected in
/work/shared/notes/sms.md §5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class ModemQuirks:
    name: str
    manufacturer_pattern: str  # regex searched (case-insensitive) in the +CGMI answer
    model_pattern: str = ""  # regex searched in the +CGMM answer; empty = any model
    # Extra commands sent after identification, before the SMS set-up.
    init_commands: tuple[str, ...] = ()
    # AT+CNMI <ds>: 1 = reports routed as "+CDS: <len>" + PDU, 2 = stored, "+CDSI: <mem>,<index>".
    status_report_ds: Literal[1, 2] = 2
    # Storage that really holds status reports when +CDSI announces another one (mapping announced -> real).
    report_storage_override: dict[str, str] = field(default_factory=dict)
    # +CMS codes after AT+CMGS that this model uses for transient trouble.
    temporary_send_errors: frozenset[int] = frozenset()
    # Errors (("cme"|"cms", code)) answered to set-up commands while the firmware is still starting.
    startup_busy_errors: frozenset[tuple[str, int]] = frozenset()
    # How long the set-up commands may keep failing with a startup-busy error before init gives up (s).
    startup_grace_seconds: float = 20.0
    # Status reports from this model can be malformed (wrong SCA length, empty +CMGR stat): decode leniently.
    lenient_status_reports: bool = False
    notes: str = ""
    sources: tuple[str, ...] = ()

    def matches(self, manufacturer: str, model: str) -> bool:
        if not re.search(self.manufacturer_pattern, manufacturer, re.IGNORECASE):
            return False
        return not self.model_pattern or re.search(self.model_pattern, model, re.IGNORECASE) is not None


# SIM busy right after power-up or PIN entry: TS 27.007 +CME 14, TS 27.005 +CMS 314, and 515 "please wait,
# init or command processing in progress" (Kannel gw/smsc/smsc_at.c at2_error_string;
# faucamp/python-gsmmodem #10).
_GENERIC_BUSY = frozenset({("cme", 14), ("cms", 314), ("cme", 515), ("cms", 515)})

GENERIC = ModemQuirks(
    name="generic",
    manufacturer_pattern=".*",
    status_report_ds=2,
    startup_busy_errors=_GENERIC_BUSY,
    startup_grace_seconds=20.0,
    notes="TS 27.005 defaults: +CMTI for messages, +CDSI for stored status reports.",
    sources=("3GPP TS 27.005 §3.4.1 (+CNMI)",),
)

QUIRKS: tuple[ModemQuirks, ...] = (
    ModemQuirks(
        name="huawei",
        manufacturer_pattern=r"huawei",
        # ^CURC=0 stops the periodic ^RSSI/^BOOT/^MODE reports that interleave with responses.
        init_commands=("AT^CURC=0",),
        status_report_ds=2,
        temporary_send_errors=frozenset({500}),
        startup_busy_errors=_GENERIC_BUSY,
        notes=(
            "E-series sticks: +CMS ERROR: 500 after AT+CMGS is transient (retry). URCs (+CMTI) are only sent "
            "on the notification interface (often ttyUSB2, not ttyUSB0): configure that port."
        ),
        sources=(
            "linux-mobile-broadband/ModemManager src/plugins/huawei/ (AT^CURC=0)",
            "faucamp/python-gsmmodem #40 (^RSSI/^BOOT/^MODE inside a +CMGR reply)",
            "faucamp/python-gsmmodem #23, #41 (URCs only on the notification port)",
            "gammu/gammu #438, #138, #370 (E1752/E1550 +CMS ERROR: 500 after AT+CMGS)",
        ),
    ),
    ModemQuirks(
        name="zte",
        manufacturer_pattern=r"zte",
        status_report_ds=2,
        startup_busy_errors=_GENERIC_BUSY,
        lenient_status_reports=True,
        notes="Status reports with a wrong SMSC length and '+CMGR: ,,27' (empty stat): decode leniently.",
        sources=("faucamp/python-gsmmodem test fixtures (ZTE status report), issue #8 (AT+CSMP wipes SMSC)",),
    ),
    ModemQuirks(
        name="simcom-sim800",
        manufacturer_pattern=r"simcom",
        model_pattern=r"sim8|sim9",
        status_report_ds=2,
        # +CME ERROR: 100 on probes and +CMS ERROR: 302 until "SMS Ready" after boot.
        startup_busy_errors=_GENERIC_BUSY | {("cme", 100), ("cms", 302)},
        startup_grace_seconds=30.0,
        notes="Needs time after boot before SMS commands work; answers probes with +CME ERROR: 100.",
        sources=(
            "babca/python-gsmmodem #64 (SIM800C +CME ERROR: 100 on probes)",
            "vshymanskyy/TinyGSM #4, #197 (SIM800 freezes; power supply)",
        ),
    ),
    ModemQuirks(
        name="quectel-ec2x",
        manufacturer_pattern=r"quectel",
        model_pattern=r"ec2|eg2|ep06|em06",
        # Reports are stored in "SR" but announced as +CDSI: "SM",<n>: route them with ds=1 (+CDS) instead.
        status_report_ds=1,
        report_storage_override={"SM": "SR"},
        startup_busy_errors=_GENERIC_BUSY,
        notes="Status reports in SR announced as SM; AT+CMGR on SM then returns nothing or an unrelated SMS.",
        sources=(
            "IchthysMaranatha/asterisk-chan-quectel PR #75 (EC25/EG25 +CDSI: \"SM\",0 for an SR report)",
            "gammu/gammu #408, PR #412 (+CDSI: \"SR\",n; F_SMS_NO_SR)",
        ),
    ),
)


def select_quirks(manufacturer: str | None, model: str | None) -> ModemQuirks:
    """First table entry matching the identity answers, else GENERIC."""
    for quirks in QUIRKS:
        if quirks.matches(manufacturer or "", model or ""):
            return quirks
    return GENERIC


def quirks_named(name: str) -> ModemQuirks:
    """Entry for a configured quirks name ("generic", "huawei", ...); ValueError lists the valid names."""
    for quirks in (GENERIC, *QUIRKS):
        if quirks.name == name:
            return quirks
    valid = ", ".join(q.name for q in (GENERIC, *QUIRKS))
    raise ValueError(f"unknown modem quirks {name!r}; use 'auto' or one of: {valid}")
