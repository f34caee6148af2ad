"""`hcrm-gateway ivr validate|schema|graph`: output format and exit codes (0 valid, 1 problems, 2 usage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from gateway.cli import main
from gateway.ivr.schema import SCHEMA_FILE

REPO = Path(__file__).resolve().parents[2]

VALID = "entry: hi\nnodes:\n  hi: {type: play, prompts: [hello], next: bye}\n  bye: {type: hangup}\n"


@pytest.fixture
def tree_dir(tmp_path: Path) -> Path:
    soundfile.write(str(tmp_path / "hello.wav"), 0.1 * np.ones(800), 8000)
    (tmp_path / "ok.yaml").write_text(VALID, encoding="utf-8")
    (tmp_path / "orphan.yaml").write_text(VALID + "  spare: {type: hangup}\n", encoding="utf-8")
    (tmp_path / "bad.yaml").write_text(VALID.replace("next: bye", "next: by") + "  x: {type: nope}\n")
    (tmp_path / "broken.yaml").write_text("entry: hi\nnodes:\n  hi: [\n", encoding="utf-8")
    return tmp_path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_valid_tree_exits_0(tree_dir: Path, capsys) -> None:
    code, out, _ = run(["ivr", "validate", str(tree_dir / "ok.yaml")], capsys)
    assert code == 0
    assert out == f"{tree_dir / 'ok.yaml'}: ok (2 nodes, 0 error(s), 0 warning(s))\n"


def test_problems_one_per_line_with_position_exit_1(tree_dir: Path, capsys) -> None:
    path = str(tree_dir / "bad.yaml")
    code, out, _ = run(["ivr", "validate", path], capsys)
    lines = out.splitlines()
    assert code == 1
    assert lines[0] == f"{path}:3:44: next: target 'by' is not a node (did you mean 'bye'?)"
    assert lines[1].startswith(f"{path}:5:13: unknown node type 'nope'")
    assert lines[-1] == f"{path}: invalid: 2 error(s), 0 warning(s)"


def test_yaml_syntax_error_exit_1(tree_dir: Path, capsys) -> None:
    code, out, _ = run(["ivr", "validate", str(tree_dir / "broken.yaml")], capsys)
    assert code == 1 and out.startswith(f"{tree_dir / 'broken.yaml'}:4:1: YAML syntax:")


def test_warnings_pass_unless_strict(tree_dir: Path, capsys) -> None:
    path = str(tree_dir / "orphan.yaml")
    code, out, _ = run(["ivr", "validate", path], capsys)
    assert code == 0 and f"{path}:5:3: warning: node 'spare' is unreachable" in out
    code, out, _ = run(["ivr", "validate", "--strict", path], capsys)
    assert code == 1 and out.splitlines()[-1] == f"{path}: invalid: 0 error(s), 1 warning(s)"


def test_json_output(tree_dir: Path, capsys) -> None:
    code, out, _ = run(["ivr", "validate", "--json", str(tree_dir / "bad.yaml")], capsys)
    report = json.loads(out)
    assert code == 1 and report["valid"] is False and report["errors"] == 2
    assert report["problems"][0] == {
        "file": str(tree_dir / "bad.yaml"),
        "line": 3,
        "column": 44,
        "severity": "error",
        "message": "next: target 'by' is not a node (did you mean 'bye'?)",
    }
    code, out, _ = run(["ivr", "validate", "--json", str(tree_dir / "ok.yaml")], capsys)
    assert code == 0 and json.loads(out)["valid"] is True


def test_prompts_dir_option(tree_dir: Path, tmp_path_factory, capsys) -> None:
    elsewhere = tmp_path_factory.mktemp("other")
    (elsewhere / "t.yaml").write_text(VALID, encoding="utf-8")
    code, out, _ = run(["ivr", "validate", str(elsewhere / "t.yaml")], capsys)
    assert code == 1 and "prompt 'hello': no such file" in out
    code, _, _ = run(["ivr", "validate", "--prompts", str(tree_dir), str(elsewhere / "t.yaml")], capsys)
    assert code == 0


def test_usage_errors_exit_2(tree_dir: Path, capsys) -> None:
    code, _, err = run(["ivr", "validate", str(tree_dir / "missing.yaml")], capsys)
    assert code == 2 and "missing.yaml: no such file" in err
    argv = ["ivr", "validate", "--prompts", str(tree_dir / "nodir"), str(tree_dir / "ok.yaml")]
    code, _, err = run(argv, capsys)
    assert code == 2 and "no such directory" in err
    for argv in (["ivr", "validate"], ["ivr"], ["ivr", "validate", "--bogus", "x"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def test_schema_command_prints_the_committed_schema(capsys) -> None:
    code, out, _ = run(["ivr", "schema"], capsys)
    assert code == 0 and out == SCHEMA_FILE.read_text(encoding="utf-8")
    (node_schema,) = json.loads(out)["properties"]["nodes"]["patternProperties"].values()
    assert node_schema["discriminator"]["propertyName"] == "type" and len(node_schema["oneOf"]) == 12


def test_graph_command(tree_dir: Path, capsys) -> None:
    code, out, _ = run(["ivr", "graph", str(tree_dir / "ok.yaml")], capsys)
    graph = json.loads(out)
    assert code == 0 and graph["entry"] == "hi"
    assert graph["edges"] == [{"source": "hi", "target": "bye", "label": "next"}]
    code, _, err = run(["ivr", "graph", str(tree_dir / "bad.yaml")], capsys)
    assert code == 1 and "target 'by' is not a node" in err


def test_contract_command_from_the_repo_root() -> None:
    """What the contract checker runs: the installed entry point, from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "ivr", "validate", "ivr_prompts/hospital.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ivr_prompts/hospital.yaml: ok (26 nodes, 0 error(s), 0 warning(s))")
