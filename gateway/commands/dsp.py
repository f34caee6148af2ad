"""`hcrm-gateway dsp detect FILE...`: run the line detectors (DTMF, caller ID, call progress) on recordings.

Any WAV/FLAC libsndfile reads is mixed to mono and resampled to 8 kHz, then fed to one line analyser
per file. One JSON object per event on stdout, ``t`` in seconds from the start of the file, ``file``
added when several files are given. An unreadable file prints one line on stderr; the other files are
still processed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from drivers.dsp.audio import AudioError, load_audio
from drivers.dsp.pipeline import CID_MODES, TWIST_FOR_TONES, LineAnalyzer
from drivers.dsp.progress import PLANS

CHUNK = 8000  # samples per feed: streaming, any frame size works


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dsp",
        help="telephone-line signal detectors (DTMF, caller ID, call progress)",
        description="Run the gateway's line detectors on audio files.",
    )
    actions = parser.add_subparsers(dest="dsp_action", metavar="ACTION")
    actions.required = True
    det = actions.add_parser(
        "detect",
        help="print the DTMF digits, caller ID and progress tones found in audio files, as JSON lines",
        description="Detect DTMF digits, caller ID and call-progress tones in WAV/FLAC files.",
    )
    det.add_argument("files", nargs="+", metavar="FILE", help="WAV/FLAC file (any rate, mixed to mono)")
    det.add_argument("--cid", choices=CID_MODES, default="auto", help="caller-ID standard (default: auto)")
    det.add_argument(
        "--tones", choices=sorted(PLANS), default="jp", help="call-progress tone plan (default: jp)"
    )
    det.add_argument(
        "--twist",
        choices=("att", "ntt", "etsi", "cn"),
        help="DTMF twist profile (default: the tone plan's country: "
        + ", ".join(f"{k}→{v}" for k, v in TWIST_FOR_TONES.items())
        + ")",
    )
    det.set_defaults(func=_detect)


def event_json(event, *, file: str | None = None) -> dict:
    """The JSON line of one event: ``t`` and ``type`` first, then the event's own fields."""
    fields = event.to_json()
    obj = {"t": round(float(fields.pop("t")), 3), "type": fields.pop("type")}
    obj.update(fields)
    if file is not None:
        obj["file"] = file
    return obj


def detect_file(path: str, *, cid: str, tones: str, twist: str | None) -> list:
    """Events of one file, in time order. Raises AudioError when the file cannot be read."""
    samples = load_audio(path)
    analyzer = LineAnalyzer(tones=tones, twist=twist, cid=cid)
    events = []
    for start in range(0, samples.size, CHUNK):
        events.extend(analyzer.feed(samples[start : start + CHUNK]))
    if samples.size == 0:
        analyzer.feed(np.zeros(0, dtype=np.float32))
    events.extend(analyzer.flush())
    events.sort(key=lambda e: e.t)
    return events


def _detect(args: argparse.Namespace) -> int:
    several = len(args.files) > 1
    status = 0
    for path in args.files:
        try:
            events = detect_file(path, cid=args.cid, tones=args.tones, twist=args.twist)
        except AudioError as exc:
            sys.stderr.write(f"hcrm-gateway dsp detect: error: {exc}\n")
            status = 1
            continue
        for event in events:
            sys.stdout.write(
                json.dumps(event_json(event, file=path if several else None), ensure_ascii=False)
            )
            sys.stdout.write("\n")
        sys.stdout.flush()
    return status
