"""Config parsing: unknown keys and bad values are errors with their YAML line and column."""

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, load_config, parse_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["demo.yaml", "hardware.yaml"])
def test_shipped_examples_are_valid(name):
    config = load_config(EXAMPLES / name)
    assert config.modems, "every example names at least one modem"


def test_empty_file_gives_defaults():
    config = parse_config("")
    assert config.gateway.default_region == "JP"
    assert config.gateway.timezone == "Asia/Tokyo"
    assert config.sms.max_parts == 10


def test_every_problem_is_reported_with_line_and_column():
    text = (
        "gateway:\n"
        "  timezone: Mars/Olympus\n"  # line 2, value at column 13
        "api:\n"
        "  port: 99999\n"  # line 4
        "  colour: blue\n"  # line 5: unknown key
        "modems:\n"
        "  - name: gsm0\n"
        "    port: /dev/ttyUSB0\n"
        "    pin: 12ab\n"  # line 9
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.yaml")
    problems = {(p.line, p.message.split(":")[0]) for p in info.value.problems}
    messages = [str(p) for p in info.value.problems]
    assert len(info.value.problems) == 4, messages
    assert any(p.line == 2 and p.column == 13 and "Mars/Olympus" in p.message for p in info.value.problems)
    assert (4, "api.port") in problems
    assert any(
        (p.line, p.column) == (5, 3) and "unknown key" in p.message and "colour" in p.message
        for p in info.value.problems
    )
    assert (9, "modems.0.pin") in problems
    assert all(m.startswith("site.yaml:") for m in messages)


def test_yaml_syntax_error_has_position():
    with pytest.raises(ConfigError) as info:
        parse_config("api:\n  port: [1, 2\n", "bad.yaml")
    (problem,) = info.value.problems
    assert problem.file == "bad.yaml" and problem.line >= 2 and "YAML syntax" in problem.message


def test_duplicate_modem_names_rejected():
    text = "modems:\n  - {name: a, port: /dev/x}\n  - {name: a, port: /dev/y}\n"
    with pytest.raises(ConfigError, match="used twice"):
        parse_config(text)


def test_check_config_cli(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("modems:\n  - name: gsm0\n    port: /dev/ttyUSB0\n")
    assert main(["check-config", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("sms:\n  max_parts: 0\n  speed: fast\n")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and f"{bad}:3:" in err and "unknown key 'sms.speed'" in err
    assert "Traceback" not in err
    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 1
