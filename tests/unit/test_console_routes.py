"""The operator console's static files: served without a token, allow-listed, with a strict CSP, and both
routes documented in /openapi.json (build_openapi refuses undocumented routes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import api.app
from api import console_routes
from api.app import create_app
from api.auth import TokenStore
from api.services import ApiServices

CONSOLE = Path(console_routes.__file__).resolve().parent / "console"


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setattr(api.app, "FEATURE_ROUTE_MODULES", ("api.console_routes",))
    return create_app(ApiServices(sms=None, bus=None, tokens=TokenStore()))


async def test_index_is_served_without_a_token_with_security_headers(app):
    response = await app.test_client().get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    body = await response.get_data(as_text=True)
    assert '<script src="/console/app.js" defer></script>' in body
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
        ("/console/i18n/ja.json", "application/json; charset=utf-8"),
    ],
)
async def test_console_files_have_their_types(app, path, content_type):
    response = await app.test_client().get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    name = path.removeprefix("/console/")
    assert await response.get_data() == (CONSOLE / name).read_bytes()


@pytest.mark.parametrize(
    "path", ["/console/nope.js", "/console/../console_routes.py", "/console/%2e%2e/app.py"]
)
async def test_unknown_or_escaping_paths_are_problem_404(app, path):
    response = await app.test_client().get(path)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
    assert (await response.get_json())["code"] == "not_found"


def test_only_files_under_the_console_directory_are_listed(tmp_path):
    (tmp_path / "index.html").write_text("<p>x</p>")
    (tmp_path / ".hidden.js").write_text("x")
    (tmp_path / "notes.unknownsuffix").write_text("x")
    (tmp_path / "i18n").mkdir()
    (tmp_path / "i18n" / "en.json").write_text("{}")
    assert sorted(console_routes.console_files(tmp_path)) == ["i18n/en.json", "index.html"]


async def test_both_routes_are_documented_without_security(app):
    document = await (await app.test_client().get("/openapi.json")).get_json()
    assert document["paths"]["/"]["get"]["security"] == []
    assert document["paths"]["/console/{name}"]["get"]["security"] == []


def test_labels_exist_in_both_languages_for_every_key_the_page_uses():
    en = json.loads((CONSOLE / "i18n" / "en.json").read_text(encoding="utf-8"))
    ja = json.loads((CONSOLE / "i18n" / "ja.json").read_text(encoding="utf-8"))
    assert set(en) == set(ja)
    html = (CONSOLE / "index.html").read_text(encoding="utf-8")
    script = (CONSOLE / "app.js").read_text(encoding="utf-8")
    used = set(re.findall(r'data-i18n(?:-label)?="([a-z_.]+)"', html))
    used |= set(re.findall(r'\bt\("([a-z_.]+)"', script))
    assert used, "the pattern found no label keys"
    assert sorted(used - set(en)) == []


def test_the_page_never_puts_the_token_in_a_url():
    script = (CONSOLE / "app.js").read_text(encoding="utf-8")
    assert "localStorage.setItem(TOKEN_KEY" not in script  # sessionStorage only: this tab
    assert re.search(r"[?&](token|access_token)=", script) is None
    assert 'JSON.stringify({ type: "auth", token: S.token })' in script
