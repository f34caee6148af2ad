"""The JSON Schema of the IVR YAML format, for editors (YAML language server, VS Code, JetBrains).

Generated from the pydantic models; the committed copy is ``ivr_prompts/ivr.schema.json`` (a unit test keeps
it equal to the generated one). Regenerate with ``hcrm-gateway ivr schema > ivr_prompts/ivr.schema.json``.
The schema checks shapes only; cross references (targets, prompt files, cycles) need ``hcrm-gateway ivr
validate``.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway.ivr.model import IvrTree

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "ivr_prompts" / "ivr.schema.json"


def ivr_json_schema() -> dict:
    schema = IvrTree.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hcrm-gateway IVR call-flow tree",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def ivr_json_schema_text() -> str:
    """The schema as committed: 2-space indent, UTF-8, trailing newline."""
    return json.dumps(ivr_json_schema(), indent=2, ensure_ascii=False) + "\n"
