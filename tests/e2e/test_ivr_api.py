"""IVR revisions over HTTP (hypercorn on a real socket): draft, validate, publish, rollback, agents/queues, a
broken tree rejected with its line, and a publish during a live call that keeps the call on its revision."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from gateway.events import EventBus
from gateway.ivr.queue import QueueManager
from gateway.ivr.runtime import SurveyAnswer
from gateway.ivr.service import IvrService, IvrSettings
from tests.e2e.test_api_http import running_api
from tests.unit.ivr_fakes import EventRecorder, FakeCall

PROMPTS = Path(__file__).resolve().parents[2] / "ivr_prompts"
YAML = "text/yaml; charset=utf-8"

TREE_V1 = """\
# Patient line, version 1 (this comment must survive the round trip)
version: 1
entry: menu
timezone: Asia/Tokyo
languages: [ja, en]
default_language: ja
nodes:
  menu:
    type: menu
    greeting: "{lang}/main_menu"   # long greeting
    options: {"1": info}
    first_digit_timeout: 5
    on_failure: bye
  info: {type: play, prompts: ["{lang}/hours"], next: bye}
  bye: {type: hangup, prompt: "{lang}/goodbye"}
"""
TREE_V2 = TREE_V1.replace('prompts: ["{lang}/hours"]', 'prompts: ["{lang}/access"]').replace(
    "version 1 (", "version 2 ("
)
BROKEN = TREE_V1.replace("    on_failure: bye\n", "    on_failure: bye\n    tries: many\n")


async def with_ivr(api, tmp_path):
    settings = IvrSettings(
        prompts_dir=PROMPTS, recordings_dir=tmp_path / "vm", positions=["headset-1", "headset-2"]
    )
    queues = QueueManager(settings.positions, publish=api.bus.publish)
    service = IvrService(api.store, publish=api.bus.publish, settings=settings, queues=queues)
    await service.start()
    api.services.ivr = service
    api.services.queues = queues
    return service


async def put_and_publish(client, api, text: str) -> dict:
    r = await client.put("/v1/ivr/draft", content=text.encode(), headers={**api.auth(), "Content-Type": YAML})
    assert r.status_code == 200, r.text
    assert r.json()["valid"] is True
    r = await client.post("/v1/ivr/publish", headers=api.auth())
    assert r.status_code == 200, r.text
    return r.json()


async def journal_types(bus: EventBus, store) -> list[tuple[str, dict]]:
    events = await store.read_events(0, 1000)
    return [(e.type, e.data) for e in events]


async def test_draft_validate_publish_list_and_rollback(tmp_path):
    async with running_api(tmp_path) as api, httpx.AsyncClient(base_url=api.url) as client:
        service = await with_ivr(api, tmp_path)
        r = await client.get("/v1/ivr", headers=api.auth())
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"

        r = await client.put(
            "/v1/ivr/draft", content=TREE_V1.encode(), headers={**api.auth(), "Content-Type": YAML}
        )
        assert r.status_code == 200
        assert r.json()["revision"]["revision"] == 1 and r.json()["revision"]["published"] is False
        r = await client.get("/v1/ivr/draft", headers=api.auth())
        assert r.json()["yaml"] == TREE_V1  # byte for byte, comments included
        r = await client.post("/v1/ivr/draft/validate", headers=api.auth())
        assert r.status_code == 200 and r.json() == {"revision": 1, "valid": True, "problems": []}

        r = await client.post("/v1/ivr/publish", headers=api.auth())
        assert r.status_code == 200
        body = r.json()
        assert body["revision"] == 1 and body["published_by"] == "ops" and body["current"] is True
        assert "# long greeting" in (await client.get("/v1/ivr", headers=api.auth())).json()["yaml"]

        # second publish without a new draft: 404
        r = await client.post("/v1/ivr/publish", headers=api.auth())
        assert r.status_code == 404 and r.json()["code"] == "not_found"

        await put_and_publish(client, api, TREE_V2)
        r = await client.get("/v1/ivr/revisions", headers=api.auth())
        listing = r.json()
        assert listing["current"] == 2
        assert [(i["revision"], i["published"], i["current"]) for i in listing["items"]] == [
            (2, True, True),
            (1, True, False),
        ]

        r = await client.post("/v1/ivr/revisions/1/rollback", headers=api.auth())
        assert r.status_code == 200 and r.json()["revision"] == 1 and r.json()["yaml"] == TREE_V1
        assert service.current is not None and service.current.revision == 1
        r = await client.post("/v1/ivr/revisions/9/rollback", headers=api.auth())
        assert r.status_code == 404

        published = [d for t, d in await journal_types(api.bus, api.store) if t == "ivr.published"]
        assert [(d["revision"], d["action"], d["previous"]) for d in published] == [
            (1, "publish", None),
            (2, "publish", 1),
            (1, "rollback", 2),
        ]
        trail = await service.audit_trail()
        assert [a["action"] for a in trail][:3] == ["rolled_back", "published", "draft_saved"]
        assert all(a["actor"] == "ops" for a in trail)


async def test_broken_yaml_is_rejected_with_its_line(tmp_path):
    async with running_api(tmp_path) as api, httpx.AsyncClient(base_url=api.url) as client:
        await with_ivr(api, tmp_path)
        await put_and_publish(client, api, TREE_V1)

        r = await client.put(
            "/v1/ivr/draft", content=BROKEN.encode(), headers={**api.auth(), "Content-Type": YAML}
        )
        assert r.status_code == 200 and r.json()["valid"] is False
        bad_line = BROKEN.splitlines().index("    tries: many") + 1
        assert [(p["line"], p["column"]) for p in r.json()["problems"]] == [(bad_line, 12)]

        r = await client.post("/v1/ivr/draft/validate", headers=api.auth())
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["code"] == "invalid_ivr_tree"
        (error,) = problem["errors"]
        assert error["line"] == bad_line and error["severity"] == "error" and "tries" in error["message"]

        r = await client.post("/v1/ivr/publish", headers=api.auth())
        assert r.status_code == 422 and r.json()["errors"][0]["line"] == bad_line
        assert (await client.get("/v1/ivr", headers=api.auth())).json()["revision"] == 1

        # a YAML syntax error, and the wrong media type
        syntax = TREE_V1.replace("entry: menu", "entry: [menu")
        r = await client.put(
            "/v1/ivr/draft", content=syntax.encode(), headers={**api.auth(), "Content-Type": YAML}
        )
        assert r.json()["valid"] is False and r.json()["problems"][0]["message"].startswith("YAML syntax")
        r = await client.put("/v1/ivr/draft", json={"entry": "menu"}, headers=api.auth())
        assert r.status_code == 415
        r = await client.put(
            "/v1/ivr/draft", content=TREE_V1.encode(), headers={**api.auth("reader"), "Content-Type": YAML}
        )
        assert r.status_code == 403


async def test_publish_during_a_live_call_keeps_its_revision(tmp_path):
    async with running_api(tmp_path) as api, httpx.AsyncClient(base_url=api.url) as client:
        service = await with_ivr(api, tmp_path)
        events = EventRecorder()
        service.session_services.publish = events.publish
        await put_and_publish(client, api, TREE_V1)
        t0 = trio.current_time()
        live = FakeCall(id="live", presses=[(t0 + 1.0, "1")], prompt_seconds=0.05)
        outcomes: dict[str, str] = {}

        async def run(call, name):
            outcomes[name] = await service.start_session(call)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, live, "live")
            await trio.sleep(0.2)  # the live call is in the menu of revision 1
            body = await put_and_publish(client, api, TREE_V2)
            assert body["revision"] == 2
            fresh = FakeCall(id="fresh", presses=[(trio.current_time() + 0.1, "1")], prompt_seconds=0.05)
            nursery.start_soon(run, fresh, "fresh")
        assert outcomes == {"live": "hangup", "fresh": "hangup"}
        assert live.played == ["ja/main_menu", "ja/hours", "ja/goodbye"]  # revision 1
        assert fresh.played == ["ja/main_menu", "ja/access", "ja/goodbye"]  # revision 2
        entered = {d["call_id"]: d["revision"] for t, d in events.events if t == "ivr.entered"}
        assert entered == {"live": 1, "fresh": 2}


async def test_file_reload_publishes_good_files_and_ignores_broken_ones(tmp_path):
    async with running_api(tmp_path) as api:
        tree_file = tmp_path / "tree.yaml"
        tree_file.write_text(TREE_V1, encoding="utf-8")
        settings = IvrSettings(prompts_dir=PROMPTS, recordings_dir=tmp_path / "vm", tree_file=tree_file)
        service = IvrService(api.store, publish=api.bus.publish, settings=settings)
        await service.start()
        assert service.current is not None and service.current.revision == 1
        assert await service.reload_from_file(tree_file) is True  # unchanged: no new revision
        tree_file.write_text(BROKEN, encoding="utf-8")
        assert await service.reload_from_file(tree_file) is False
        assert await service.reload_from_file(tmp_path / "missing.yaml") is False
        assert service.current.revision == 1
        tree_file.write_text(TREE_V2, encoding="utf-8")
        assert await service.reload_from_file(tree_file) is True
        assert service.current.revision == 2 and "access" in service.current.yaml
        actions = [a["action"] for a in await service.audit_trail()]
        assert actions == ["file_loaded", "file_rejected", "file_rejected", "file_loaded"]
        # a restart takes the current revision from the database
        again = IvrService(
            api.store, publish=api.bus.publish, settings=settings.model_copy(update={"tree_file": None})
        )
        await again.start()
        assert again.current is not None and again.current.revision == 2


async def test_agents_ready_away_and_queues(tmp_path):
    async with running_api(tmp_path) as api, httpx.AsyncClient(base_url=api.url) as client:
        await with_ivr(api, tmp_path)
        r = await client.post("/v1/agents/headset-1/ready", headers=api.auth())
        assert r.status_code == 200
        assert r.json() == {"id": "headset-1", "state": "ready", "call_id": None, "away_after_call": False}
        r = await client.post("/v1/agents/headset-9/ready", headers=api.auth())
        assert r.status_code == 404 and "headset-1, headset-2" in r.json()["detail"]
        r = await client.get("/v1/queues", headers=api.auth())
        assert r.json() == {
            "positions": [
                {"id": "headset-1", "state": "ready", "call_id": None},
                {"id": "headset-2", "state": "away", "call_id": None},
            ],
            "queues": [],
        }
        r = await client.post("/v1/agents/headset-1/away", headers=api.auth())
        assert r.json()["state"] == "away"
        r = await client.get("/v1/queues", headers=api.auth("reader"))
        assert r.status_code == 403
        spec = (await client.get("/openapi.json")).json()
        assert {"/v1/ivr", "/v1/ivr/draft", "/v1/agents/{agent_id}/ready", "/v1/queues"} <= set(spec["paths"])


async def test_survey_answers_are_stored_with_their_event(tmp_path):
    async with running_api(tmp_path) as api:
        service = await with_ivr(api, tmp_path)
        common = dict(
            call_id="c1",
            survey="followup",
            survey_revision=2,
            tree_revision=5,
            language="ja",
            answered_at="2026-11-27T01:00:00.000Z",
        )
        await service.save_answer(
            SurveyAnswer(
                question_id="pain", question_text="痛みはありますか。", answer="no", sensitive=False, **common
            )
        )
        await service.save_answer(
            SurveyAnswer(question_id="pin", question_text="暗証番号", answer="4321", sensitive=True, **common)
        )
        rows = await service.answers_for_call("c1")
        assert [(r["question"], r["text"], r["answer"], r["tree_revision"]) for r in rows] == [
            ("pain", "痛みはありますか。", "no", 5),
            ("pin", "暗証番号", "4321", 5),
        ]
        answered = [d for t, d in await journal_types(api.bus, api.store) if t == "survey.answered"]
        assert [d["answer"] for d in answered] == ["no", "***"]
        assert answered[0]["survey_revision"] == 2 and answered[0]["text"] == "痛みはありますか。"
