"""The operator console in a real browser against the real demo: log-in and overview, language toggle,
screen pop on a simulated incoming call, sending an SMS, editing and publishing the IVR with one invalid
attempt (error shown at its line), and a network drop with resume from the last event."""

from __future__ import annotations

import json
import re
import subprocess
import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS, DroppingProxy, log_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A small valid tree (prompt files from ivr_prompts/, which the demo uses) and a copy with one bad value.
TREE = """\
# Console test tree
version: 1
entry: welcome
timezone: Asia/Tokyo
languages: [ja, en]
default_language: ja
nodes:
  welcome:
    type: menu
    greeting: "{lang}/main_menu"
    options: {"1": hours}
    first_digit_timeout: 5
    on_failure: goodbye
  hours: {type: play, prompts: ["{lang}/hours"], next: goodbye}
  goodbye: {type: hangup, prompt: "{lang}/goodbye"}
"""
BAD_LINE = "    tries: many"
BROKEN_TREE = TREE.replace("    on_failure: goodbye\n", f"    on_failure: goodbye\n{BAD_LINE}\n")
BROKEN_LINE_NUMBER = BROKEN_TREE.splitlines().index(BAD_LINE) + 1
SENT_OR_DELIVERED = re.compile(r"^(sent|delivered)$")


def test_login_overview_and_language_toggle(page, demo):
    page.goto(demo.url + "/")
    page.get_by_label("API token").fill("not-the-token-at-all")
    page.get_by_role("button", name="Connect").click()
    expect(page.get_by_role("alert")).to_contain_text("refused this token")

    log_in(page, demo.url, demo.token)
    modems = page.locator("#modems-table tbody tr")
    expect(modems).to_have_count(2)
    expect(page.locator('#modems-table tr[data-modem="gsm0"]')).to_contain_text("ready")
    expect(page.locator('#modems-table tr[data-modem="gsm0"]')).to_contain_text("dBm")
    expect(page.locator("#lines-table tbody tr")).to_have_count(2)  # the demo's line1 and line2
    expect(page.locator("#view-sms")).to_be_hidden()  # one view at a time

    page.get_by_role("button", name="Switch the labels to Japanese").click()
    expect(page.locator("html")).to_have_attribute("lang", "ja")
    expect(page.get_by_role("navigation", name="画面")).to_contain_text("回線と通話")
    expect(page.get_by_role("heading", name="GSM モデム")).to_be_visible()
    page.get_by_role("button", name="表示を英語に切り替える").click()
    expect(page.get_by_role("heading", name="GSM modems")).to_be_visible()
    # The token stays in this tab's sessionStorage, never in localStorage.
    assert page.evaluate("sessionStorage.getItem('hcrm.console.token')") == demo.token
    assert page.evaluate("Object.keys(localStorage)") == ["hcrm.console.lang"]


def test_screen_pop_on_a_simulated_incoming_call(page, demo):
    log_in(page, demo.url, demo.token)
    region = page.locator("#screen-pops")
    expect(region).to_have_attribute("aria-live", "assertive")
    result = subprocess.run(
        demo.command("sim", "call", "--url", demo.url, "--token", demo.token, "--line", "1",
                     "--from", "0312345678", "--answer-after", "4"),
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    card = region.locator(".pop")
    expect(card).to_have_count(1)
    expect(card).to_contain_text("312345678")  # +81312345678 (E.164) or 0312345678 as the line gave it
    expect(card).to_contain_text("line1")
    expect(card).not_to_contain_text("null")
    page.screenshot(path=str(_artifact("console-screen-pop-ringing.png")))
    # The demo's lines answer into the IVR after two rings: the card follows the call, and the live-calls
    # table lists it with its actions.
    expect(card.locator(".state")).to_have_text("answered", timeout=20_000)
    call_id = card.get_attribute("data-call")
    row = page.locator(f'#calls-table tr[data-call="{call_id}"]')
    expect(row).to_be_visible()
    expect(row.get_by_role("button", name="Hang up")).to_be_visible()
    expect(row.get_by_role("button", name="Bridge")).to_be_visible()
    card.get_by_role("button", name="Dismiss: ").click()
    expect(card).to_have_count(0)


def test_send_an_sms_and_follow_its_status(page, demo):
    log_in(page, demo.url, demo.token)
    page.get_by_role("button", name="SMS").click()
    page.get_by_label("To (E.164 or national number)").fill("090-1234-5678")
    page.get_by_label("Text").fill("コンソールからのテスト送信")
    page.get_by_role("button", name="Send", exact=True).click()
    status = page.locator("#sms-result")
    expect(status).to_contain_text("Queued as ")
    message_id = status.inner_text().rsplit(" ", 1)[-1]
    row = page.locator(f'#messages-table tr[data-message="{message_id}"]')
    expect(row).to_contain_text("+819012345678")
    expect(row).to_contain_text("コンソールからのテスト送信")
    # Status follows the sms.* events: queued -> sending -> sent (-> delivered with the report).
    expect(row.locator(".badge")).to_have_text(SENT_OR_DELIVERED, timeout=20_000)

    page.get_by_label("To (E.164 or national number)").fill("12")
    page.get_by_label("Text").fill("x")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(status).to_have_class("error")
    expect(status).to_contain_text("phone number")



def test_ivr_edit_invalid_then_publish(page, demo):
    log_in(page, demo.url, demo.token)
    page.get_by_role("button", name="IVR", exact=True).click()
    editor = page.get_by_label("Draft (YAML)")
    expect(editor).not_to_have_value("")  # the demo's published tree (or its draft)

    editor.fill(BROKEN_TREE)
    page.get_by_role("button", name="Publish").click()
    expect(page.locator("#ivr-message")).to_contain_text("fix the errors")
    problem = page.locator(f'#ivr-problems li[data-line="{BROKEN_LINE_NUMBER}"]')
    expect(problem).to_contain_text(f"Line {BROKEN_LINE_NUMBER}, column")
    expect(problem).to_contain_text("tries")
    expect(page.locator(f'#ivr-gutter span[data-line="{BROKEN_LINE_NUMBER}"]')).to_have_class("err")
    problem.get_by_role("button").click()  # jumps the caret to the bad line
    caret_line = page.evaluate(
        "() => { const a = document.querySelector('#ivr-yaml');"
        " return a.value.slice(0, a.selectionStart).split('\\n').length; }"
    )
    assert caret_line == BROKEN_LINE_NUMBER
    page.screenshot(path=str(_artifact("console-ivr-invalid.png")))
    published_before = _current_revision(demo)

    editor.fill(TREE)
    page.get_by_role("button", name="Publish").click()
    expect(page.locator("#ivr-message")).to_contain_text("is published")
    expect(page.locator("#ivr-problems li")).to_have_count(0)
    current = _current_revision(demo)
    assert current != published_before
    expect(page.locator(f'#ivr-revisions tr[data-revision="{current}"]')).to_contain_text("current")
    body = httpx.get(demo.url + "/v1/ivr", headers=demo.auth(), timeout=5).json()
    assert body["yaml"] == TREE  # byte for byte what the editor held


def test_ivr_tree_is_drawn(page, demo):
    """Needs ``GET /v1/ivr/graph?revision=current|draft`` (tree_graph JSON) or a ``graph`` field."""
    httpx.put(demo.url + "/v1/ivr/draft", content=TREE.encode(),
              headers={**demo.auth(), "Content-Type": "text/yaml"}, timeout=5).raise_for_status()
    httpx.post(demo.url + "/v1/ivr/publish", headers=demo.auth(), timeout=5).raise_for_status()
    log_in(page, demo.url, demo.token)
    page.get_by_role("button", name="IVR", exact=True).click()
    graph = page.get_by_role("img", name="IVR tree: 3 nodes")
    expect(graph).to_be_visible()
    for node in ("welcome", "hours", "goodbye"):
        expect(graph.locator(f'g[data-node="{node}"]')).to_have_count(1)
    expect(graph.locator('g.node.entry[data-node="welcome"]')).to_have_count(1)
    expect(graph.locator('g.edge[data-source="welcome"][data-target="hours"]')).to_have_count(1)


def test_event_stream_resumes_after_a_network_drop(page, demo):
    proxy = DroppingProxy(int(demo.url.rsplit(":", 1)[1]))
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    try:
        log_in(page, proxy.url, demo.token)
        page.get_by_role("button", name="Events").click()
        assert len(sockets) == 1 and "since=" not in sockets[0]

        proxy.drop()
        expect(page.locator("#conn-status")).to_contain_text("retrying", timeout=10_000)
        # Sent while the browser is cut off: its events must reach the page through the journal replay.
        sent = httpx.post(demo.url + "/v1/messages", headers=demo.auth(), timeout=5,
                          json={"to": "+819011112222", "text": "sent during the drop"})
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["id"]
        time.sleep(1.0)
        proxy.restore()

        expect(page.locator("#conn-status")).to_contain_text("live again", timeout=20_000)
        assert any("since=" in url for url in sockets[1:]), sockets
        queued = page.locator('#events-table tr:has(code:text-is("sms.queued"))', has_text=message_id)
        expect(queued).to_have_count(1)
        ids = page.eval_on_selector_all("#events-table tbody tr", "rows => rows.map(r => r.dataset.event)")
        assert len(ids) == len(set(ids)), "an event was shown twice"
        seqs = [int(i.rsplit(":", 1)[1]) for i in ids]
        assert seqs == sorted(seqs, reverse=True), "events out of order"

        # Type filter: hiding SMS hides the row, showing it again brings it back.
        page.get_by_role("checkbox", name="SMS").uncheck()
        expect(queued).to_be_hidden()
        page.get_by_role("checkbox", name="SMS").check()
        expect(queued).to_be_visible()
        detail = json.loads(queued.locator("td.data").inner_text())
        assert detail["id"] == message_id or detail.get("message_id") == message_id
    finally:
        proxy.close()


def _current_revision(demo) -> int | None:
    body = httpx.get(demo.url + "/v1/ivr/revisions", headers=demo.auth(), timeout=5).json()
    return body["current"]


def _artifact(name: str):
    return ARTIFACTS / name
