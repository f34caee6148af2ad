"""The documentation stays true to the code: the AsyncAPI event list, the generated config reference, the
example client and the full example config."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from gateway.config import load_config
from gateway.events import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _asyncapi() -> dict:
    return YAML(typ="safe").load((DOCS / "asyncapi.yaml").read_text(encoding="utf-8"))


def _event_messages(doc: dict) -> dict[str, dict]:
    """Event type -> its message (messages whose payload is an envelope with a ``type`` const)."""
    out = {}
    for message in doc["components"]["messages"].values():
        parts = message["payload"].get("allOf", [])
        if parts and parts[0] == {"$ref": "#/components/schemas/EventEnvelope"}:
            out[parts[1]["properties"]["type"]["const"]] = message
    return out


def _resolve(doc: dict, ref: str) -> object:
    assert ref.startswith("#/"), ref
    node: object = doc
    for key in ref[2:].split("/"):
        assert isinstance(node, dict) and key in node, f"dangling $ref {ref}"
        node = node[key]
    return node


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_asyncapi_lists_every_event_type_and_no_other():
    doc = _asyncapi()
    assert doc["asyncapi"].startswith("3.")
    assert set(_event_messages(doc)) == set(EVENT_TYPES)


def test_asyncapi_channel_binding_and_frames():
    doc = _asyncapi()
    channel = doc["channels"]["events"]
    assert channel["address"] == "/v1/events"
    ws = channel["bindings"]["ws"]
    assert set(ws["query"]["properties"]) == {"since", "types"}
    assert "Authorization" in ws["headers"]["properties"]
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert {"hello", "ping", "pong", "resync_required", "error", "auth"} <= names
    sent = [_resolve(doc, r["$ref"]) for r in doc["operations"]["sendClientFrames"]["messages"]]
    assert {m["$ref"].rsplit("/", 1)[1] for m in sent} == {"Auth", "ClientPing"}


def test_asyncapi_refs_resolve_and_examples_match_their_schema():
    doc = _asyncapi()
    for ref in _refs(doc):
        _resolve(doc, ref)
    for event_type, message in _event_messages(doc).items():
        data_schema = message["payload"]["allOf"][1]["properties"]["data"]
        schemas = [_resolve(doc, s["$ref"]) for s in data_schema.get("oneOf", [data_schema])]
        for example in message["examples"]:
            payload = example["payload"]
            assert payload["type"] == event_type
            assert payload["id"] == f"{payload['epoch']}:{payload['seq']}"
            # Each example's data satisfies one of the schemas: required fields present, no unknown ones.
            assert any(
                set(s.get("required", [])) <= set(payload["data"]) <= set(s["properties"]) for s in schemas
            ), f"{event_type}: example data does not match its schema"


def test_events_md_has_a_row_for_every_event_type():
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    missing = sorted(t for t in EVENT_TYPES if f"| `{t}` |" not in text)
    assert missing == []


def test_configuration_md_is_the_generators_output():
    generator = runpy.run_path(str(DOCS / "gen_config_reference.py"))
    expected = generator["render"]()
    actual = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/configuration.md is stale: run python docs/gen_config_reference.py"


def test_configuration_md_covers_every_top_level_section():
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    from gateway.config import Config

    for name in Config.model_fields:
        assert f"`{name}`" in text


def test_example_client_compiles_and_has_help():
    source = (ROOT / "examples" / "crm_client.py").read_text(encoding="utf-8")
    compile(source, "examples/crm_client.py", "exec")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "crm_client.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "--send-to" in result.stdout and "--state-file" in result.stdout


def test_example_client_without_token_says_how_to_get_one(monkeypatch):
    client = runpy.run_path(str(ROOT / "examples" / "crm_client.py"))
    monkeypatch.delenv("HCRM_TOKEN", raising=False)
    assert client["main"](["--token", "", "--no-follow"]) == 2


def test_example_client_resume_state_round_trip(tmp_path):
    client = runpy.run_path(str(ROOT / "examples" / "crm_client.py"))
    state = tmp_path / "state"
    assert client["load_since"](state) is None
    client["save_since"](state, "3f2a9c0d:42")
    assert client["load_since"](state) == "3f2a9c0d:42"
    url = client["events_url"]("https://gw.example/base", "3f2a9c0d:42", "call.incoming,sms.*")
    assert url == "wss://gw.example/base/v1/events?since=3f2a9c0d%3A42&types=call.incoming%2Csms.%2A"


def test_example_client_screen_pop_line():
    client = runpy.run_path(str(ROOT / "examples" / "crm_client.py"))
    line = client["describe"](
        {
            "type": "call.incoming",
            "data": {
                "call_id": "call_1",
                "line": "line1",
                "caller": {"raw": "0312345678", "e164": "+81312345678"},
                "lookup": {"name": "山田 花子", "patient_id": "P-1"},
            },
        }
    )
    assert "+81312345678" in line and "山田 花子" in line and "call_1" in line
    assert client["describe"]({"type": "ivr.node", "data": {}}) is None


def test_full_example_config_passes_check_config():
    config = load_config(ROOT / "examples" / "full.yaml")
    # "every section": each top-level key of the config model is present in the file.
    tree = YAML(typ="safe").load((ROOT / "examples" / "full.yaml").read_text(encoding="utf-8"))
    assert set(tree) == set(type(config).model_fields)
    assert config.webhooks is not None


@pytest.mark.parametrize("path", ["examples/full.yaml"])
def test_full_example_config_via_the_cli(path):
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(ROOT / path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert ": ok (" in result.stdout
