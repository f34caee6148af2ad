"""Errors raised by the GSM AT core and driver, and the classification of +CMS / +CME error codes.

The classification decides what the SMS dispatcher does with a failed send: retry later (temporary), fail the
message and move on (permanent), or raise a modem alarm because no message can succeed (config).
Sources: 3GPP TS 27.005 §3.2.5 (+CMS ERROR 300-511), TS 24.011 Annex E-2 (RP-cause 0-127), TS 23.040 §9.2.3.22
(TP-FCS 128-255), TS 27.007 §9.2 (+CME ERROR); grouping as recommended in /work/shared/notes/sms.md §4.
"""

from __future__ import annotations

from typing import Literal

SendErrorKind = Literal["temporary", "permanent", "config"]


class AtProtocolError(RuntimeError):
    """The local side broke the AT dialogue rules (e.g. a second command while one is in flight)."""


class ModemUnavailable(RuntimeError):
    """The modem cannot take a command now: not ready, re-initialising, stopped or unplugged."""


class SendError(RuntimeError):
    """A submit (AT+CMGS) failed; `kind` tells the dispatcher whether a retry can succeed."""

    def __init__(self, code: int | None, kind: SendErrorKind, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.kind: SendErrorKind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"SendError(code={self.code!r}, kind={self.kind!r}, message={self.message!r})"


# TS 24.011 Annex E-2 RP-cause values and 27.005 codes that a later attempt can overcome.
_CMS_TEMPORARY = frozenset({27, 38, 41, 42, 47, 314, 331, 332, 500, 512, 513, 514, 515})
# Causes tied to this message or recipient: a retry gives the same answer.
#   1 unassigned number, 8 operator barring, 10 call barred, 21 short message transfer rejected,
#   28 unidentified subscriber, 29 facility rejected, 30 unknown subscriber, 96 invalid mandatory information,
#   144 DCS not supported, 195 invalid SME address, 196 SME barred, 304 invalid PDU mode parameter,
#   305 invalid text mode parameter.
_CMS_PERMANENT = frozenset({1, 8, 10, 21, 28, 29, 30, 96, 144, 195, 196, 304, 305})
# The modem or subscription is misconfigured: every message would fail the same way.
#   50 requested facility not subscribed, 193 no SC subscription, 310-318 SIM missing/locked/failed,
#   322 memory full, 330 SMSC address unknown.
_CMS_CONFIG = frozenset({50, 193, 310, 311, 312, 313, 315, 316, 317, 318, 322, 330})

# TS 27.007 §9.2.1: 10 SIM not inserted, 11 PIN, 12 PUK, 13 SIM failure, 15 SIM wrong, 16 incorrect password,
# 17 PIN2, 18 PUK2. 14 SIM busy, 30 no network service, 31 network timeout, 100 unknown are worth a retry.
_CME_CONFIG = frozenset({10, 11, 12, 13, 15, 16, 17, 18})
_CME_TEMPORARY = frozenset({14, 30, 31, 100, 515})


def classify_cms(code: int | None, *, extra_temporary: frozenset[int] = frozenset()) -> SendErrorKind:
    """Kind of a +CMS ERROR after AT+CMGS. Unknown codes are temporary: the dispatcher bounds the retries."""
    if code is None or code in extra_temporary or code in _CMS_TEMPORARY:
        return "temporary"
    if code in _CMS_PERMANENT:
        return "permanent"
    if code in _CMS_CONFIG:
        return "config"
    return "temporary"


def classify_cme(code: int | None) -> SendErrorKind:
    """Kind of a +CME ERROR seen where a +CMS ERROR was expected (several modems answer CMGS with CME)."""
    if code in _CME_CONFIG:
        return "config"
    return "temporary"
