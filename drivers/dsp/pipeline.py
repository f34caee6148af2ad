"""All line detectors on one channel (``LineAnalyzer``) or on C lockstep channels (``LineAnalyzerBank``).

Per tick each bank does one matrix product for all channels: DTMF (102-sample blocks), call progress
(20 ms hops), and caller ID (FSK gated per channel by level; DTMF caller ID is fed the digits the DTMF
bank already found, so DTMF is detected once). Events carry ``t`` on the analyser's own sample clock.
"""

from __future__ import annotations

import numpy as np

from drivers.dsp.dtmf import DtmfBank, DtmfParams
from drivers.dsp.events import CallerId, DtmfDigit, Tone
from drivers.dsp.goertzel import SAMPLE_RATE, channel_rows
from drivers.dsp.progress import ProgressBank, ProgressParams

try:  # caller ID is built alongside; the analyser runs without it until it exists
    from drivers.dsp.callerid import CallerIdDetectorBank
except ModuleNotFoundError as exc:  # pragma: no cover - only while drivers/dsp/callerid.py is missing
    if exc.name != "drivers.dsp.callerid":
        raise
    CallerIdDetectorBank = None

Event = DtmfDigit | CallerId | Tone
_FSK_BURST_MAX_S = 1.5  # seizure + marks + the longest MDMF message at 1200 bit/s
CID_MODES = ("auto", "bell202", "v23", "ntt", "dtmf")

# Default DTMF twist profile for each tone plan's country.
TWIST_FOR_TONES = {"jp": "ntt", "cn": "cn", "us": "att", "etsi": "etsi"}


def caller_id_available() -> bool:
    return CallerIdDetectorBank is not None


class LineAnalyzerBank:
    """DTMF + caller ID + call progress for ``channels`` lines: ``feed((C, n)) -> [(channel, event)]``."""

    def __init__(
        self,
        channels: int,
        *,
        tones: str = "jp",
        twist: str | None = None,
        cid: str | None = "auto",
        dtmf_params: DtmfParams | None = None,
        progress_params: ProgressParams | None = None,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        if channels < 1:
            raise ValueError(f"a line analyser needs at least one channel, got {channels}")
        if cid is not None and cid not in CID_MODES:
            raise ValueError(f"unknown caller-ID mode {cid!r}; expected one of {', '.join(CID_MODES)}")
        self.channels = channels
        twist = twist or TWIST_FOR_TONES.get(tones, "att")
        self.dtmf = DtmfBank(
            channels, dtmf_params or DtmfParams.for_site(twist, tones=tones), sample_rate=sample_rate
        )
        self.progress = ProgressBank(channels, tones, progress_params, sample_rate=sample_rate)
        self.callerid = None
        if cid is not None and CallerIdDetectorBank is not None:
            # Unmarked DTMF caller ID ("<number>#", DK/NL) would turn any keyed "15#" into a caller ID:
            # accept it only when the site asks for DTMF caller ID explicitly.
            self.callerid = CallerIdDetectorBank(
                channels, cid, sample_rate, dtmf=False, dtmf_allow_unmarked=(cid == "dtmf")
            )
        self._uses_dtmf_cid = cid in ("auto", "dtmf")

    def feed(self, samples: np.ndarray) -> list[tuple[int, Event]]:
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != self.channels:
            raise ValueError(f"expected samples of shape ({self.channels}, n), got {x.shape}")
        out: list[tuple[int, Event]] = []
        digits = self.dtmf.feed(x)
        out.extend(digits)
        fsk_ended: dict[int, float] = {}
        if self.callerid is not None:
            for ch, event in self.callerid.feed(x):
                out.append((ch, event))
                if event.standard != "dtmf":
                    fsk_ended[ch] = event.t
            out.extend(self._digits_to_cid(digits))
        for ch, tone in self.progress.feed(x):
            if tone.name == "voice" and self._during_fsk(ch, tone.t, fsk_ended):
                continue
            out.append((ch, tone))
        return out

    # -- re-use of a channel for another line -------------------------------------------------------
    def quiet_channels(self) -> np.ndarray:
        """Per channel (bool): nothing in progress that :meth:`reset_channels` would lose: quiet for DTMF
        (no digit sounding, no candidate), call progress (no tone sounding or starting, no confirmation
        pending) and caller ID (no FSK receivers open, no carrier, no gate run, no partial DTMF caller ID).
        See each bank's ``quiet_channels``."""
        quiet = self.dtmf.quiet_channels() & self.progress.quiet_channels()
        if self.callerid is not None:
            quiet &= self.callerid.quiet_channels()
        return quiet

    def reset_channels(self, channels: np.ndarray | list[int]) -> None:
        """Give ``channels`` (indices or a bool mask) to new lines that join the running bank now.

        Each becomes a freshly constructed bank's channel started at the current clock, its line taken as
        silent before: analysis blocks and windows that straddle the reset see zeros there. Its events
        carry ``t`` on the bank's clock: a line joining at sample K gets a fresh ``LineAnalyzer``'s events
        shifted by K / 8000 s, exactly when the block phases coincide (K a multiple of 8160 = lcm of the
        102-sample DTMF block, the 160-sample progress hop and the 80-sample FSK gate block), the frames
        after the reset are the analyser's, and the line starts with a progress window of silence but is
        not silent from its start until a silence event (the windows straddling the reset add to that
        run; see ``ProgressBank.reset_channels``); otherwise within a DTMF block and a progress hop. The
        other channels are untouched.

        ``ValueError`` for a channel out of range, or one whose FSK receivers are open (nothing is reset
        then): reset channels that :meth:`quiet_channels` reports quiet.
        """
        rows = channel_rows(channels, self.channels)
        if self.callerid is not None:
            self.callerid.reset_channels(rows)  # first: it refuses channels with open receivers
        self.dtmf.reset_channels(rows)
        self.progress.reset_channels(rows)

    def _during_fsk(self, ch: int, t: float, fsk_ended: dict[int, float]) -> bool:
        """An FSK caller-ID burst is broadband in a 40 ms window: it must not count as the far end speaking.
        Either the carrier is still on (real-time frames), or a burst ended in this same feed shortly
        after the voice onset (long frames, as when reading a file)."""
        if self.callerid is None:
            return False
        if self.callerid.detector(ch).busy:
            return True
        end = fsk_ended.get(ch)
        return end is not None and end - _FSK_BURST_MAX_S <= t <= end

    def flush(self) -> list[tuple[int, Event]]:
        """End of input: digits still sounding and caller-ID bytes still held back."""
        digits = self.dtmf.flush()
        out: list[tuple[int, Event]] = list(digits)
        if self.callerid is not None:
            for ch in range(self.channels):
                out.extend((ch, ev) for ev in self.callerid.detector(ch).flush())
            out.extend(self._digits_to_cid(digits))
        return out

    def _digits_to_cid(self, digits: list[tuple[int, DtmfDigit]]) -> list[tuple[int, CallerId]]:
        if not self._uses_dtmf_cid:
            return []
        out = []
        for ch, digit in digits:
            event = self.callerid.feed_digit(ch, digit)
            if event is not None:
                out.append((ch, event))
        return out


class LineAnalyzer:
    """One line: ``LineAnalyzer(tones="jp").feed(samples) -> [event]`` sorted by ``t``."""

    def __init__(self, **options) -> None:
        self._bank = LineAnalyzerBank(1, **options)

    def feed(self, samples: np.ndarray) -> list[Event]:
        x = np.asarray(samples, dtype=np.float32).reshape(1, -1)
        return sorted((ev for _, ev in self._bank.feed(x)), key=lambda e: e.t)

    def flush(self) -> list[Event]:
        return sorted((ev for _, ev in self._bank.flush()), key=lambda e: e.t)
