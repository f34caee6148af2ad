"""`hcrm-gateway token create|list|revoke` through main([...]): stdout, stderr, exit codes, the store rows."""

from __future__ import annotations

import json
import sqlite3

import pytest

from api.auth import hash_token
from gateway.cli import main


def write_config(tmp_path, *, config_token: str | None = None) -> str:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    text = f"gateway:\n  data_dir: {data}\nstore:\n  path: gateway.sqlite3\n"
    if config_token:
        text += (f"api:\n  tokens:\n    - name: {config_token}\n      hash: {hash_token('x' * 43)}\n"
                 "      scopes: [admin]\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return str(path)


def rows(tmp_path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(tmp_path / "data" / "gateway.sqlite3")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def create(capsys, config: str, *extra: str) -> tuple[int, str, str]:
    status = main(["token", "create", "--config", config, *extra])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_create_prints_only_the_token_and_stores_only_its_hash(tmp_path, capsys):
    config = write_config(tmp_path)
    status, out, err = create(capsys, config, "--name", "crm", "--scopes", "sms:send, sms:read")
    assert status == 0
    token = out.strip()
    assert out == token + "\n" and len(token) == 43  # 256 bits, URL-safe base64
    assert "only time it is shown" in err and token not in err
    [(name, digest, scopes, expires)] = rows(tmp_path,
                                             "SELECT name, hash, scopes, expires_at FROM api_tokens")
    assert (name, digest, json.loads(scopes), expires) == ("crm", hash_token(token), ["sms:read", "sms:send"],
                                                           None)
    dump = str(rows(tmp_path, "SELECT * FROM api_tokens")) + str(rows(tmp_path, "SELECT * FROM audit"))
    assert token not in dump
    [(action, subject, actor)] = rows(tmp_path, "SELECT action, subject, actor FROM audit")
    assert (action, subject) == ("token.created", "crm") and actor.startswith("cli:")
    assert rows(tmp_path, "SELECT value FROM meta WHERE key = 'api_tokens_version'") == [("1",)]


def test_two_tokens_differ_and_list_shows_them_without_secrets(tmp_path, capsys):
    config = write_config(tmp_path)
    _, first, _ = create(capsys, config, "--name", "crm", "--scopes", "sms:send")
    _, second, _ = create(capsys, config, "--name", "ops", "--scopes", "admin", "--expires", "30")
    assert first != second
    assert main(["token", "list", "--config", config]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SCOPES", "CREATED", "LAST", "USED", "EXPIRES", "STATUS"]
    assert lines[1].split()[:2] == ["crm", "sms:send"] and lines[1].split()[-1] == "active"
    assert "never" in lines[1] and lines[2].startswith("ops")
    assert "sha256" not in out and first.strip() not in out and second.strip() not in out
    assert main(["token", "list", "--config", config, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listed] == ["crm", "ops"]
    assert listed[1]["expires_at"] is not None and listed[0]["expires_at"] is None
    assert all("hash" not in t for t in listed)


def test_revoke_then_name_can_be_issued_again(tmp_path, capsys):
    config = write_config(tmp_path)
    create(capsys, config, "--name", "crm", "--scopes", "sms:send")
    assert main(["token", "revoke", "crm", "--config", config]) == 0
    assert "revoked" in capsys.readouterr().err
    assert main(["token", "list", "--config", config, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["token", "list", "--config", config, "--all", "--json"]) == 0
    assert [t["status"] for t in json.loads(capsys.readouterr().out)] == ["revoked"]
    assert main(["token", "revoke", "crm", "--config", config]) == 1
    assert "no active token named 'crm'" in capsys.readouterr().err
    status, _, _ = create(capsys, config, "--name", "crm", "--scopes", "sms:read")
    assert status == 0
    assert [a for (a,) in rows(tmp_path, "SELECT action FROM audit ORDER BY id")] == [
        "token.created", "token.revoked", "token.created"]
    assert rows(tmp_path, "SELECT value FROM meta WHERE key = 'api_tokens_version'") == [("3",)]


def test_unknown_scope_is_a_usage_error(tmp_path, capsys):
    config = write_config(tmp_path)
    status, out, err = create(capsys, config, "--name", "crm", "--scopes", "sms:send,sms:sned")
    assert status == 2 and out == ""
    assert "usage error: unknown scope(s) sms:sned; known: admin" in err
    assert not (tmp_path / "data" / "gateway.sqlite3").exists()  # nothing written


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "bad name", "--scopes", "admin"], "--name 'bad name'"),
    (["--name", "crm", "--scopes", ","], "at least one scope"),
    (["--name", "crm", "--scopes", "admin", "--expires", "0"], "--expires must be a whole number"),
    (["--name", "crm", "--scopes", "admin", "--expires", "soon"], "--expires must be a whole number"),
])
def test_bad_arguments_are_usage_errors(tmp_path, capsys, args, message):
    status, out, err = create(capsys, write_config(tmp_path), *args)
    assert (status, out) == (2, "") and message in err


def test_missing_required_option_exits_2_from_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["token", "create", "--config", write_config(tmp_path), "--scopes", "admin"])
    assert info.value.code == 2
    assert "--name" in capsys.readouterr().err


def test_duplicate_name_and_config_name_are_refused(tmp_path, capsys):
    config = write_config(tmp_path, config_token="ops")
    assert create(capsys, config, "--name", "crm", "--scopes", "admin")[0] == 0
    status, out, err = create(capsys, config, "--name", "crm", "--scopes", "admin")
    assert (status, out) == (1, "") and "a token named 'crm' already exists" in err
    status, out, err = create(capsys, config, "--name", "ops", "--scopes", "admin")
    assert (status, out) == (1, "") and "the config file already defines a token named 'ops'" in err
    assert main(["token", "revoke", "ops", "--config", config]) == 1
    assert "defined in the config file" in capsys.readouterr().err


def test_missing_config_and_missing_store_are_reported(tmp_path, capsys):
    assert main(["token", "list", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["token", "list", "--config", write_config(tmp_path)]) == 1
    assert "no store at" in capsys.readouterr().err
