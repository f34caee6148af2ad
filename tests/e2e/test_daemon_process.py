"""The real `hcrm-gateway demo` process: starts, serves, and stops cleanly on SIGTERM within 5 s."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

TOKEN = "process-test-token-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body else None
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, json.loads(r.read())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_demo_serves_then_exits_zero_within_five_seconds_of_a_signal(tmp_path, signum):
    port = free_port()
    log = open(tmp_path / "daemon.log", "w+")  # a file, not a pipe: nobody reads it while the daemon runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--port", str(port), "--token", TOKEN,
         "--data", str(tmp_path), "--latency", "1.0"],
        stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        banner = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in banner and TOKEN in banner
        deadline = time.monotonic() + 20
        while True:  # the modems finish their AT initialisation
            status, body = request("GET", f"http://127.0.0.1:{port}/v1/modems")
            if all(m["state"] == "ready" for m in body["items"]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [m["state"] for m in body["items"]] == ["ready", "ready"]
        status, message = request("POST", f"http://127.0.0.1:{port}/v1/messages",
                                  {"to": "090-1234-5678", "text": "stop while sending"})
        assert status == 202
        time.sleep(0.3)  # the send is in flight (1 s simulated latency) when the signal arrives
        started = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.seek(0)
    stderr = log.read()
    log.close()
    assert "Traceback" not in stderr and "shutting down" in stderr
    # The message in flight was finished, not abandoned: its TP-MR is on disk.
    import sqlite3

    with sqlite3.connect(tmp_path / "gateway.sqlite3") as db:
        status_row = db.execute("SELECT status FROM messages WHERE id = ?", (message["id"],)).fetchone()
    assert status_row == ("sent",)


def test_sighup_reloads_the_ivr_tree_file_and_a_broken_file_changes_nothing(tmp_path):
    import hashlib
    import shutil
    from pathlib import Path

    prompts = Path(__file__).resolve().parents[2] / "ivr_prompts"
    tree = tmp_path / "tree.yaml"
    shutil.copy(prompts / "hospital.yaml", tree)
    port = free_port()
    digest = "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway: {{data_dir: '{tmp_path / 'data'}'}}\n"
        f"api: {{port: {port}, tokens: [{{name: t, hash: '{digest}', scopes: [admin]}}]}}\n"
        f"ivr: {{prompts_dir: '{prompts}', tree_file: '{tree}', recordings_dir: voicemail}}\n"
    )
    log = open(tmp_path / "daemon.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, first = request("GET", base + "/v1/ivr")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "daemon did not start"
                time.sleep(0.2)
        assert status == 200 and first["source"] == "file"

        tree.write_text(tree.read_text().replace("entry: welcome", "entry: welcome  # reloaded"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while request("GET", base + "/v1/ivr")[1]["revision"] == first["revision"]:
            assert time.monotonic() < deadline, "SIGHUP did not publish the edited file"
            time.sleep(0.1)
        reloaded = request("GET", base + "/v1/ivr")[1]
        assert "# reloaded" in reloaded["yaml"]

        tree.write_text("entry: nowhere\nnodes: {}\n")  # broken: the entry does not exist
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert request("GET", base + "/v1/ivr")[1]["revision"] == reloaded["revision"]
        assert proc.poll() is None, "a broken file must not stop the daemon"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.seek(0)
    text = log.read()
    log.close()
    assert "Traceback" not in text
