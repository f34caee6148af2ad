"""The operator console: ``/`` and ``/console/<file>`` serve the static single page (api/console/).

The page holds no data: it is HTML, CSS, JavaScript and label files, so it is served without authentication.
Everything it shows comes from the public REST and WebSocket API with the token the supervisor pastes in
(kept in the tab's sessionStorage, sent as ``Authorization: Bearer`` and, on the WebSocket, in the first
message). Only the files found in api/console/ at start-up are served (an allow-list, so no path from the
URL ever reaches the file system), each with a strict Content-Security-Policy: scripts and styles from this
origin only, no inline script, no framing.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from quart import Blueprint
from quart_trio.wrappers import TrioResponse

from api import openapi
from api.problems import ApiProblem

blueprint = Blueprint("console", __name__)

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
_SUFFIX_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".svg": "image/svg+xml",
}
# connect-src 'self' covers same-origin ws:/wss: in CSP Level 3 (w3.org/TR/CSP3 §6.7.2.8 "self" matching).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def console_files(root: Path = CONSOLE_DIR) -> dict[str, tuple[bytes, str]]:
    """Relative POSIX path -> (content, content type) of every servable file under ``root``."""
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        content_type = _SUFFIX_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        if content_type is None:
            continue
        files[path.relative_to(root).as_posix()] = (path.read_bytes(), content_type)
    return files


# Read once: the files are part of the installed package and small (tens of kB).
_FILES = console_files()


def _serve(name: str) -> TrioResponse:
    found = _FILES.get(name)
    if found is None:
        raise ApiProblem("not_found", f"the console has no file {name!r}")
    content, content_type = found
    response = TrioResponse(content, status=200, content_type=content_type)
    response.headers.update(SECURITY_HEADERS)
    # The page is small; no-cache keeps a browser from running an old app.js against a newer API.
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.get("/")
async def console_index() -> Any:
    return _serve("index.html")


@blueprint.get("/console/<path:name>")
async def console_file(name: str) -> Any:
    return _serve(name)


OPENAPI_OPERATIONS: tuple[openapi.Operation, ...] = (
    openapi.Operation(
        "/",
        "get",
        "consoleIndex",
        "The operator console (HTML page; holds no data)",
        None,
        {200: (None, "text/html: the single-page console")},
        problems=(404,),
        description="Static page; it asks for a token and then uses only the public API.",
    ),
    openapi.Operation(
        "/console/{name}",
        "get",
        "consoleFile",
        "A static file of the operator console (script, style sheet, labels)",
        None,
        {200: (None, "The file")},
        problems=(404,),
        parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
    ),
)
