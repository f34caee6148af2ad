"""Voice settings (config key ``voice``): pydantic, unknown keys refused."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl


class LineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,32}$")
    driver: Literal["usb_box", "v253"]
    port: str | None = None  # v253: serial port, e.g. /dev/serial/by-id/usb-...-if00
    serial: str | None = None  # usb_box: the box's USB serial number (None: the first box found)
    tones: Literal["jp", "cn", "us", "etsi"] = "jp"
    cid: Literal["auto", "bell202", "v23", "ntt", "dtmf"] | None = "auto"
    auto_answer_rings: int | None = Field(default=None, ge=1, le=20)  # None: only the API answers
    headset_position: str | None = None  # the operator position wired to this box's headset port
    record: bool = False  # record every answered call on this line


class VoiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lines: list[LineSettings] = Field(default_factory=list)
    region: str = "JP"
    prompts_dir: Path = Path("ivr_prompts")  # playbacks from the API must be files under this directory
    recordings_dir: Path = Path("recordings")
    recording_format: Literal["FLAC", "WAV"] = "FLAC"
    record_all: bool = False
    ring_gap_s: float = Field(default=6.5, gt=0)
    dialtone_timeout_s: float = Field(default=3.0, gt=0)
    no_answer_timeout_s: float = Field(default=30.0, gt=0)
    clear_s: float = Field(default=1.0, ge=0.6)
    # A connected call whose far end sends nothing louder than about -45 dBFS for this long is hung up
    # with cause ``silence`` (a caller who left without the exchange clearing down); None: never.
    silence_hangup_s: float | None = Field(default=60.0, gt=0)
    contact_lookup_url: HttpUrl | None = None  # GET ?number=<e164>&line=<line> -> {name, patient_id}
    contact_lookup_timeout_s: float = Field(default=0.3, gt=0, le=5)
    recent_calls: int = Field(default=200, ge=1)  # ended calls kept in memory for GET /v1/calls/{id}
