"""Outbound soft dialling: one attempt per number, judged from what the line says after the digits.

:class:`ProgressJudge` is pure (signals in, a verdict out). :func:`dial_attempt` drives one attempt on a
device: seize, wait for dial tone (a line without it is not dialled: ``no_dialtone``), dial, then judge:

* busy / reorder tone → ``busy`` / ``congestion`` (ITU-T E.180 tones as each country plays them);
* polarity reversal → answered, confidence 0.99 (answer supervision, where the line gives it);
* voice after ringback was heard → answered, 0.85; voice with no ringback before it → answered, 0.6
  (ringback may have been missed; a recorded announcement looks the same);
* loop break → ``failed``; nothing decisive within ``timeout_s`` → ``no_answer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
import trio

from gateway.numbers import DEFAULT_REGION
from gateway.voice.devices import DeviceUnavailable, LineDevice


@dataclass(frozen=True)
class Verdict:
    result: str  # answered | busy | congestion | failed | no_answer | no_dialtone
    answered_by: str | None = None  # polarity | voice
    confidence: float | None = None


class ProgressJudge:
    def __init__(self) -> None:
        self.ringback_heard = False

    def feed(self, signal: str) -> Verdict | None:
        if signal == "ringback":
            self.ringback_heard = True
            return None
        if signal == "busy":
            return Verdict("busy")
        if signal == "reorder":
            return Verdict("congestion")
        if signal == "polarity_reversal":
            return Verdict("answered", "polarity", 0.99)
        if signal == "voice":
            return Verdict("answered", "voice", 0.85 if self.ringback_heard else 0.6)
        if signal == "loop_break":
            return Verdict("failed")
        return None


def dial_string(number: str, region: str = DEFAULT_REGION) -> str:
    """Digits to dial from this line for ``number`` (E.164 or as the user typed it)."""
    text = number.strip()
    if text.startswith("+"):
        try:
            parsed = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException as exc:
            raise ValueError(f"{number!r} is not a phone number: {exc}") from None
        if phonenumbers.region_code_for_number(parsed) == region.upper():
            text = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
        else:
            text = phonenumbers.format_out_of_country_calling_number(parsed, region.upper())
    digits = "".join(ch for ch in text if ch in "0123456789*#")
    if not digits:
        raise ValueError(f"{number!r} has no digits to dial")
    return digits


@dataclass(frozen=True)
class DialTimings:
    dialtone_timeout_s: float = 3.0
    clear_s: float = 1.0  # on hook this long between attempts (an exchange needs > 0.5 s to clear down)


async def dial_attempt(
    device: LineDevice,
    digits: str,
    signals: trio.MemoryReceiveChannel[str],
    *,
    timeout_s: float,
    timings: DialTimings,
    on_dialling,
    on_ringing,
) -> Verdict:
    """One attempt, the line already seized by the caller of this function. ``on_dialling()`` is called
    before the digits go out and ``on_ringing()`` (async) at the first ringback."""
    with trio.move_on_after(timings.dialtone_timeout_s) as wait:
        async for signal in signals:
            if signal == "dialtone":
                break
    if wait.cancelled_caught:
        return Verdict("no_dialtone")
    on_dialling()
    try:
        await device.dial(digits)
    except DeviceUnavailable:
        return Verdict("failed")
    judge = ProgressJudge()
    with trio.move_on_after(timeout_s):
        async for signal in signals:
            was_ringing = judge.ringback_heard
            verdict = judge.feed(signal)
            if judge.ringback_heard and not was_ringing:
                await on_ringing()
            if verdict is not None:
                return verdict
    return Verdict("no_answer")
