"""The demo gateway: the real daemon wired to simulated devices (composition root).

``hcrm-gateway demo`` (what ``make run`` starts) runs every real code path against simulators, so a
newcomer sees the whole gateway from one command:

- two GSM modems (``gsm0``, ``gsm1``) on pseudo-terminals, driven over AT by the real modem driver;
- an HTTP SMS provider on loopback, offered as the route ``provider``;
- two analog lines on the Japanese network: ``line1`` behind a simulated USB voice box (the real pyusb
  driver over a simulated backend), ``line2`` behind a simulated V.253 voice modem on a pty; both answer
  after two rings into the example hospital IVR (``ivr_prompts/hospital.yaml``);
- demo-only endpoints (``/v1/demo/...``, present only here) through which ``hcrm-gateway sim call`` places a
  call from the simulated network, so the screen-pop event can be watched arriving.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, current_app, request

from api.auth import SCOPE_CALLS_WRITE, requires_scope
from api.openapi import Operation
from api.problems import ApiProblem
from gateway.config import Config

DEMO_MODEMS = ("gsm0", "gsm1")
REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPTS = REPO_ROOT / "ivr_prompts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_config(data_dir: Path, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                latency: float = 3.0) -> tuple[Config, str]:
    """The demo Config (devices under ``data_dir/dev``, store in ``data_dir``) and the API token."""
    data_dir = Path(data_dir).resolve()
    token = token or secrets.token_urlsafe(24)
    digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    dev = data_dir / "dev"
    provider_port = _free_port()
    report_secret = secrets.token_hex(16)
    raw: dict[str, Any] = {
        "gateway": {"site": "hcrm-gateway demo", "data_dir": str(data_dir)},
        "api": {
            "host": host,
            "port": port,
            "tokens": [{"name": "demo", "hash": digest, "scopes": ["admin"]}],
        },
        "simulators": {
            "gsm": [
                {"name": f"sim-{name}", "link": str(dev / name), "send_latency": latency, "report_delay": 2.0}
                for name in DEMO_MODEMS
            ],
            "http_provider": {"name": "provider", "port": provider_port, "latency": 0.05,
                              "report_delay": 1.0, "report_secret": report_secret},
            "voice_lines": [{"line": "line1", "country": "jp"}, {"line": "line2", "country": "jp"}],
        },
        "modems": [{"name": name, "port": str(dev / name)} for name in DEMO_MODEMS],
        "sms": {
            "http_providers": [{
                "name": "provider",
                "url": f"http://127.0.0.1:{provider_port}/sms",
                "headers": {"X-Api-Key": "demo-provider-key"},
                "body": {"to": "{to}", "text": "{text}", "reference": "{message_id}"},
                "success": {"json_path": '$.result.status == "ok"'},
                "provider_id": {"json_path": "$.result.id"},
                "reports": {"auth": {"method": "hmac_sha256", "secrets": [report_secret]}},
            }],
        },
        "verify": {"hospital": "デモ病院"},
        "voice": {
            "lines": [
                {"name": "line1", "driver": "usb_box", "serial": "HCRM-0001", "auto_answer_rings": 2,
                 "headset_position": "headset-1"},
                {"name": "line2", "driver": "v253", "port": str(dev / "voice0"), "auto_answer_rings": 2,
                 "headset_position": "headset-2"},
            ],
            "prompts_dir": str(PROMPTS),
            "recordings_dir": "recordings",
        },
        "ivr": {
            "prompts_dir": str(PROMPTS),
            "recordings_dir": "voicemail",
            "tree_file": str(PROMPTS / "hospital.yaml"),
            "positions": ["headset-1", "headset-2", "headset-3"],
        },
    }
    return Config.model_validate(raw), token


# ---------------------------------------------------------------------------------------- demo routes
class SimulatedCall(BaseModel):
    """``POST /v1/demo/calls``: a call from the simulated network into one of the demo's lines."""

    model_config = ConfigDict(extra="forbid")

    line: str = Field(description="line name (line1: USB box, line2: V.253 modem) or its number 1/2")
    from_: str | None = Field(None, alias="from", description="caller's number; null: no number")
    name: str | None = None
    standard: Literal["bell202", "v23_etsi", "v23_ntt", "dtmf", "none"] | None = None
    private: bool = False
    press: list[str] = Field([], description="keys the caller presses once answered, in order")
    answer_after: int = Field(8, ge=1, le=20, description="rings the caller waits before hanging up")


class DemoRoutes:
    """Routes that exist only in the demo (never in a real deployment): drive the simulated network."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.blueprint = Blueprint("demo", __name__)
        self.blueprint.add_url_rule("/v1/demo/calls", view_func=self._place_call, methods=["POST"])
        self.OPENAPI_OPERATIONS = (
            Operation("/v1/demo/calls", "post", "demoPlaceCall", "Demo only: place a simulated incoming call",
                      SCOPE_CALLS_WRITE, {202: (None, "The simulated network starts ringing the line")},
                      problems=(401, 403, 404, 422), request=SimulatedCall),
        )

    @requires_scope(SCOPE_CALLS_WRITE)
    async def _place_call(self) -> Any:
        try:
            body = SimulatedCall.model_validate_json(await request.get_data())
        except ValueError as exc:
            raise ApiProblem("validation_error", str(exc).splitlines()[0]) from None
        devices = self.gateway.devices
        line = f"line{body.line}" if body.line.isdigit() else body.line
        if line in devices.lines and line not in devices.voice_modems:
            from simulators.pstn_line import Caller, HangUp, Keys, Pause, Say

            presentation = "private" if body.private else "allowed"
            standard = None if body.standard in (None, "none") else body.standard
            caller = Caller(number=None if body.private else body.from_, name=body.name,
                            presentation=presentation, cid=standard)
            script = [Say(1.5)]
            for key in body.press:
                script += [Keys(key), Pause(2.0)]
            script += [Pause(3.0), HangUp()]
            devices.lines[line].incoming_call(caller, script=script, max_rings=body.answer_after)
        elif line in devices.voice_modems:
            modem = devices.voice_modems[line]
            number = "P" if body.private else (body.from_ or "O")
            cid = {"date": "1127", "time": "1405", "number": number, "name": body.name or ""}
            # The simulated modem rings (its own caller-ID text) and types the keys after the answer.
            current_app.nursery.start_soon(_ring_modem, modem, cid, body.press, body.answer_after)
        else:
            raise ApiProblem("not_found", f"no simulated line {body.line!r} (try line1 or line2)")
        return {"line": line, "status": "ringing"}, 202


async def _ring_modem(modem: Any, cid: dict, keys: list[str], rings: int) -> None:
    import trio

    await modem.ring(cid, rings=min(rings, 2), interval=1.0)
    await trio.sleep(2.0)
    for key in keys:
        for digit in key:
            modem.press(digit)
        await trio.sleep(1.0)
    await trio.sleep(5.0)
    modem.line_event("b")  # the caller hangs up: the exchange's busy tone reaches the modem
