#!/usr/bin/env python3
"""A small CRM-side client of hcrm-gateway: screen pops, an SMS with an Idempotency-Key, delivery reports.

Run the gateway (``make run`` prints a token), then:

    python examples/crm_client.py --token <TOKEN>                        # follow events, pop screens
    python examples/crm_client.py --token <TOKEN> --send-to 090-1234-5678 --text "明日10時のご予約です"

It follows WebSocket ``/v1/events`` and keeps the id (``epoch:seq``) of the last event it handled in a state
file, so a restart resumes exactly after it (``?since=``), without losing or repeating events.
Dependencies: the standard library for REST, ``trio-websocket`` (with ``trio``) for the WebSocket.
See docs/integration.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

# Close codes after which reconnecting cannot help (docs/api.md "Close codes").
FATAL_CLOSE_CODES = {4000: "bad query parameter", 4001: "no token", 4003: "invalid token or missing scope"}
FINAL_SMS_EVENTS = ("sms.delivered", "sms.undelivered", "sms.failed")


# ------------------------------------------------------------------------------------------ resume state
def load_since(path: Path) -> str | None:
    """The id of the last event handled, or None on the first run."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def save_since(path: Path, event_id: str) -> None:
    """Write atomically (temp file + rename): a crash never leaves half an id behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(event_id + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ REST
class ApiError(Exception):
    """An application/problem+json answer: switch on ``code``; ``detail`` is for people."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status, self.code = status, problem.get("code", "http_error")
        self.detail = problem.get("detail") or problem.get("title") or ""
        super().__init__(f"{status} {self.code}: {self.detail}")


def send_sms(base: str, token: str, to: str, text: str, *, client_ref: str | None, category: str | None,
             attempts: int = 3) -> dict[str, Any]:
    """POST /v1/messages. The same Idempotency-Key on every retry: a retry after a lost answer never sends
    the SMS twice (the gateway answers with the first message and ``Idempotent-Replayed: true``)."""
    key = str(uuid.uuid4())
    body: dict[str, Any] = {"to": to, "text": text}
    if client_ref:
        body["client_ref"] = client_ref
    if category:
        body["category"] = category
    request = urllib.request.Request(
        base.rstrip("/") + "/v1/messages",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Idempotency-Key": f'"{key}"',  # an RFC 8941 string
        },
    )
    last: Exception | None = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return json.load(reply)
        except urllib.error.HTTPError as exc:
            try:
                problem = json.load(exc)
            except ValueError:
                problem = {"detail": exc.reason}
            error = ApiError(exc.code, problem)
            if exc.code == 409 and error.code == "idempotency_key_in_flight":
                last = error  # the first request is still being processed: ask again
                continue
            raise error from None
        except (urllib.error.URLError, TimeoutError) as exc:
            last = exc  # no answer: retrying with the same key is safe
    raise ConnectionError(f"POST /v1/messages failed after {attempts} attempts: {last}")


# ------------------------------------------------------------------------------------------ events
def describe(event: dict[str, Any]) -> str | None:
    """The line this CRM prints for an event, or None for events it ignores."""
    data, kind = event.get("data", {}), event.get("type")
    if kind == "call.incoming":
        caller = data.get("caller") or {}
        number = caller.get("e164") or caller.get("raw") or {"P": "private", "O": "unavailable"}.get(
            caller.get("reason_absent"), "unknown"
        )
        lookup = data.get("lookup") or {}
        who = "not in CRM"
        if lookup.get("name"):
            who = f"{lookup['name']} (patient {lookup.get('patient_id')})"
        return f"SCREEN POP  line {data.get('line')}  caller {number}  {who}  call {data.get('call_id')}"
    if kind == "call.missed":
        caller = data.get("caller") or {}
        number = caller.get("e164") or caller.get("raw")
        return f"MISSED CALL line {data.get('line')}  caller {number}: call back"
    if kind in FINAL_SMS_EVENTS:
        extra = data.get("reason") or (data.get("error") or {}).get("message") or ""
        ref = data.get("client_ref")
        return f"SMS {data.get('status'):<11} {data.get('id')} to {data.get('to')} ref {ref} {extra}"
    if kind == "sms.received":
        note = " (opt-out)" if data.get("opt_out") else ""
        return f"SMS IN      from {data.get('from')}: {data.get('text')!r}{note}"
    return None


def events_url(base: str, since: str | None, types: str) -> str:
    parts = urllib.parse.urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = urllib.parse.urlencode({k: v for k, v in (("since", since), ("types", types)) if v})
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/v1/events", query, ""))


async def follow_events(base: str, token: str, state_file: Path, types: str) -> int:
    """Follow the stream until a close that reconnecting cannot fix, resuming after each reconnect."""
    import trio
    import trio_websocket

    delay = 1.0
    while True:
        since = load_since(state_file)
        url = events_url(base, since, types)
        try:
            async with trio_websocket.open_websocket_url(
                url, extra_headers=[(b"Authorization", f"Bearer {token}".encode())]
            ) as ws:
                while True:
                    # The server pings every 20 s: ~2 intervals of silence means the link is dead.
                    with trio.fail_after(45):
                        frame = json.loads(await ws.get_message())
                    delay = 1.0
                    kind = frame.get("type")
                    if kind == "hello":
                        print(f"connected: epoch {frame['epoch']} latest seq {frame['seq']}"
                              + (f", resuming after {since}" if since else ""), flush=True)
                    elif kind == "resync_required":
                        # The journal cannot replay from our id: reload what we show from REST
                        # (GET /v1/messages, /v1/calls ...) and continue with the live events.
                        print(f"resync required ({frame['reason']}): reload state over REST", flush=True)
                        save_since(state_file, f"{frame['epoch']}:{frame['seq']}")
                    elif kind in ("ping", "pong"):
                        continue
                    elif kind == "error":
                        print(f"server error: {frame.get('code')}: {frame.get('detail')}", file=sys.stderr)
                    elif "id" in frame:
                        line = describe(frame)
                        if line:
                            print(line, flush=True)
                        save_since(state_file, frame["id"])  # after handling: at-least-once processing
        except trio_websocket.ConnectionClosed as exc:
            code = exc.reason.code if exc.reason else None
            if code in FATAL_CLOSE_CODES:
                print(f"closed {code} ({FATAL_CLOSE_CODES[code]}): {exc.reason.reason}", file=sys.stderr)
                return 2
            print(f"connection closed ({code}); reconnecting in {delay:g} s", file=sys.stderr)
        except trio_websocket.ConnectionRejected as exc:
            print(f"upgrade refused with HTTP {exc.status_code}", file=sys.stderr)
            return 2
        except (OSError, trio_websocket.HandshakeError, trio.TooSlowError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            print(f"connection failed ({reason}); reconnecting in {delay:g} s", file=sys.stderr)
        await trio.sleep(delay)
        delay = min(delay * 2, 30.0)


# ------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crm_client.py",
        description="Example CRM client for hcrm-gateway: screen pops from call.incoming, SMS with an "
        "Idempotency-Key, delivery reports; resumes the event stream from a state file.",
    )
    p.add_argument("--url", default=os.environ.get("HCRM_URL", "http://127.0.0.1:8080"),
                   help="gateway base URL (default $HCRM_URL or http://127.0.0.1:8080)")
    p.add_argument("--token", default=os.environ.get("HCRM_TOKEN"),
                   help="API token with sms:send and events:read (default $HCRM_TOKEN)")
    p.add_argument("--state-file", type=Path, default=Path("crm_client.state"),
                   help="where the id of the last handled event is kept (default crm_client.state)")
    p.add_argument("--types", default="call.incoming,call.missed,sms.delivered,sms.undelivered,sms.failed,"
                   "sms.received", help="event types to follow (exact or prefix.*)")
    p.add_argument("--send-to", metavar="NUMBER", help="send one SMS to this number before following events")
    p.add_argument("--text", default="ご予約を承りました。", help="text of that SMS")
    p.add_argument("--client-ref", help="your reference, echoed in the message's events")
    p.add_argument("--category", help="message category (otp, appointment, care, ...)")
    p.add_argument("--no-follow", action="store_true", help="send the SMS and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.token:
        print("crm_client.py: give --token or set HCRM_TOKEN (`make run` prints one)", file=sys.stderr)
        return 2
    if args.send_to:
        try:
            message = send_sms(args.url, args.token, args.send_to, args.text,
                               client_ref=args.client_ref, category=args.category)
        except ApiError as exc:
            print(f"SMS refused: {exc}", file=sys.stderr)
            return 1
        except ConnectionError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(f"SMS {message['status']}: {message['id']} to {message['to']} ({message['parts']} part(s))",
              flush=True)
    if args.no_follow:
        return 0
    import trio

    try:
        return trio.run(follow_events, args.url, args.token, args.state_file, args.types)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
