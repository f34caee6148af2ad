"""A follow-up call campaign over two simulated lines (UsbVoiceBox + simulated box + PstnLine each), driven
over HTTP: one patient is busy and then answers and completes the survey by key presses, one never answers
(retried once). Results come back as JSON and CSV with the survey answers."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import pytest
import trio

from drivers.voice.usbbox import UsbVoiceBox
from gateway.ivr.call_campaigns import CallCampaignService
from gateway.ivr.service import IvrService, IvrSettings
from gateway.voice.devices import UsbBoxLine
from gateway.voice.service import VoiceService
from gateway.voice.settings import LineSettings, VoiceSettings
from simulators.pstn_line import Keys, Pause, PstnLine
from simulators.usb_box import make_box
from tests.e2e.test_api_http import running_api

PROMPTS = Path(__file__).resolve().parents[2] / "ivr_prompts"
BACKOFF = (0.01, 0.02, 0.05)

TREE = """\
version: 1
entry: followup
timezone: Asia/Tokyo
languages: [en]
default_language: en
nodes:
  followup:
    type: survey
    survey: discharge-followup
    revision: 1
    questions:
      - id: better
        text: Are you feeling better? Yes, 1. No, 2.
        prompt: "{lang}/survey_q1"
        keys: {"1": "yes", "2": "no"}
      - id: rating
        text: Rate us from 1 to 5.
        prompt: "{lang}/survey_q2"
        range: {min: 1, max: 5}
    timeout: 8
    tries: 2
    next: bye
  bye: {type: hangup, prompt: "{lang}/goodbye"}
"""

BUSY_THEN_ANSWERS = "0311111111"
NEVER_ANSWERS = "0322222222"


class PlanByNumber:
    """Stands in for a PstnLine's next-call plan (``expect_outgoing``). The simulated exchange reads the
    plan's fields only once the digits are in, so each field answers for the number just dialled on this
    line: the test does not depend on which of the two lines the scheduler picked for a patient."""

    def __init__(self, box, plans: dict[str, list[dict]]):
        self.box, self.plans = box, plans
        self._taken: dict[int, dict] = {}

    def _plan(self) -> dict:
        index = len(self.box.dialled)
        if index not in self._taken:
            self._taken[index] = self.plans[self.box.dialled[-1]].pop(0)
        return self._taken[index]

    @property
    def outcome(self) -> str:
        return self._plan()["outcome"]

    @property
    def answer_after_rings(self) -> int:
        return self._plan().get("answer_after_rings", 1)

    @property
    def script(self) -> tuple:
        return tuple(self._plan().get("script", ()))

    @property
    def polarity_reversal(self) -> bool | None:
        return None


@pytest.mark.slow  # about 15-25 s of line and retry time
async def test_campaign_over_two_lines_busy_no_answer_answered_with_survey(tmp_path):
    # Plans shared by both lines: the first call to a number meets the first plan, and so on.
    plans = {
        BUSY_THEN_ANSWERS: [
            {"outcome": "busy"},
            {"outcome": "answer", "script": [Pause(0.5), Keys("1"), Pause(2.0), Keys("4#"), Pause(30.0)]},
        ],
        NEVER_ANSWERS: [{"outcome": "no_answer"}, {"outcome": "no_answer"}],
    }
    names = ("line1", "line2")
    async with running_api(tmp_path) as api:
        backends, devices = {}, {}
        for i, name in enumerate(names):
            line = PstnLine("jp", polarity_reversal_on_answer=True)
            backend = make_box(line, serial=f"HCRM-000{i + 1}")
            line._outgoing = PlanByNumber(backend.box, plans)  # see PlanByNumber
            box = UsbVoiceBox(name, backend=backend, tones="jp", reconnect_backoff=BACKOFF, audio_queue=500)
            backends[name], devices[name] = backend, UsbBoxLine(box)
        voice_settings = VoiceSettings(
            lines=[LineSettings(name=n, driver="usb_box") for n in names],
            prompts_dir=PROMPTS,
            recordings_dir=tmp_path / "rec",
            dialtone_timeout_s=5.0,
            no_answer_timeout_s=4.0,
            clear_s=0.6,
        )
        ivr = IvrService(
            api.store,
            publish=api.bus.publish,
            settings=IvrSettings(prompts_dir=PROMPTS, recordings_dir=tmp_path / "vm"),
        )
        await ivr.start()
        _, problems = await ivr.put_draft(TREE, "test")
        assert [p for p in problems if p.severity == "error"] == []
        await ivr.publish("test")
        voice = VoiceService(api.store, api.bus, devices, voice_settings, on_answer=ivr.start_session)
        campaigns = CallCampaignService(api.store, voice, bus=api.bus, ivr=ivr)
        api.services.voice, api.services.ivr = voice, ivr
        api.services.call_campaigns = campaigns
        sub = api.bus.subscribe()
        async with trio.open_nursery() as nursery, httpx.AsyncClient(base_url=api.url) as client:
            await nursery.start(voice.run)
            idle: set[str] = set()
            with trio.fail_after(20):
                async for event in sub:
                    if event.type == "line.state_changed" and event.data["new"] == "idle":
                        idle.add(event.data["line"])
                        if idle == set(names):
                            break
            await nursery.start(campaigns.run)

            body = {
                "name": "discharge follow-up, ward 3",
                "entry": "followup",
                "recipients": [
                    {"numbers": [BUSY_THEN_ANSWERS], "vars": {"patient_id": "P-001"}},
                    {"numbers": [NEVER_ANSWERS], "vars": {"patient_id": "P-002"}},
                ],
                "lines": list(names),
                "window": {
                    "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                    "start": "00:00",
                    "end": "23:59",
                    "timezone": "Asia/Tokyo",
                },
                "max_concurrent": 2,
                "retry": {
                    "busy": {"attempts": 2, "interval_s": 1},
                    "no_answer": {"attempts": 2, "interval_s": 1},
                    "failed": {"attempts": 1, "interval_s": 1},
                },
                "ring_timeout_s": 3.0,
            }
            r = await client.post("/v1/call-campaigns", json={**body, "lines": ["line9"]}, headers=api.auth())
            assert r.status_code == 422 and r.json()["code"] == "invalid_request"
            assert r.json()["errors"][0]["field"] == "lines.0"
            r = await client.post("/v1/call-campaigns", json=body, headers=api.auth())
            assert r.status_code == 201, r.text
            created = r.json()
            cid = created["id"]
            assert r.headers["Location"] == f"/v1/call-campaigns/{cid}"
            assert created["state"] == "running" and created["progress"]["total"] == 2

            progress = []
            with trio.fail_after(90):
                async for event in sub:
                    if event.type == "campaign.progress" and event.data["campaign_id"] == cid:
                        progress.append(event.data)
                        if event.data["state"] == "completed":
                            break
            r = await client.get(f"/v1/call-campaigns/{cid}/results", headers=api.auth())
            assert r.status_code == 200
            results = r.json()["items"]
            r = await client.get(f"/v1/call-campaigns/{cid}/results?format=csv", headers=api.auth())
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
            table = list(csv.DictReader(io.StringIO(r.text)))
            r = await client.post(f"/v1/call-campaigns/{cid}/pause", headers=api.auth())
            assert r.status_code == 409 and r.json()["code"] == "conflict"
            r = await client.get(f"/v1/call-campaigns/{cid}/results", headers=api.auth("reader"))
            assert r.status_code == 403
            nursery.cancel_scope.cancel()

    busy_then_answered, never = results
    assert busy_then_answered["outcome"] == "answered" and busy_then_answered["attempts"] == 2
    assert busy_then_answered["attempts_by_outcome"]["busy"] == 1
    assert busy_then_answered["answered_by"] == "polarity"
    assert [(a["question"], a["answer"]) for a in busy_then_answered["answers"]] == [
        ("better", "yes"),
        ("rating", "4"),
    ]
    assert busy_then_answered["answers"][0]["text"] == "Are you feeling better? Yes, 1. No, 2."
    assert never["outcome"] == "no_answer" and never["attempts"] == 2 and never["answers"] == []
    assert never["last_cause"] == "no_answer"
    assert progress[-1]["answered"] == 1 and progress[-1]["no_answer"] == 1

    assert [row["outcome"] for row in table] == ["answered", "no_answer"]
    assert table[0]["var:patient_id"] == "P-001"
    assert table[0]["discharge-followup.better"] == "yes" and table[0]["discharge-followup.rating"] == "4"
    assert table[1]["discharge-followup.better"] == ""

    dialled = sorted(d for backend in backends.values() for d in backend.box.dialled)
    assert dialled == sorted([BUSY_THEN_ANSWERS] * 2 + [NEVER_ANSWERS] * 2)
    assert all(backends[name].box.dialled for name in names)  # both lines carried campaign calls
