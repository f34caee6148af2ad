"""Generate docs/configuration.md from the pydantic models of gateway/config.py, so the reference stays true.

    python docs/gen_config_reference.py            # rewrite docs/configuration.md
    python docs/gen_config_reference.py --check    # exit 1 when docs/configuration.md is out of date

Every key of every section is listed with its type (with the model's bounds), its default and its meaning.
The meaning is taken, in this order, from the field's ``Field(description=...)``, the comment at the end of
the field's line, the comment lines right above the field, or else from ``NOTES`` below (for fields whose
models carry no words). A ``NOTES`` entry for a key that no longer exists is an error, so renaming a key
cannot leave a stale explanation behind.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import enum
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.config import Config  # noqa: E402

OUTPUT = ROOT / "docs" / "configuration.md"
LONG_DEFAULT = 100  # characters; longer mapping defaults are summarised by their keys
_BARE_INTRO = re.compile(r"(the )?(config (section|key) )?`[^`]+`( config section)?:?\.?", re.IGNORECASE)

# Meanings of keys whose models say nothing themselves (no description, no comment). Keys are the dotted
# paths used in the generated tables ("[]" for a list item, "<name>" for a mapping value).
NOTES: dict[str, str] = {
    "gateway.site": "the site's name, shown in logs and the operator console",
    "gateway.timezone": "IANA time zone of the site: quiet hours, daily caps and call windows use it",
    "gateway.data_dir": "directory for the SQLite store and other state; relative paths in the config "
    "are resolved against it",
    "api.host": "address the REST/WebSocket API listens on; keep it on loopback behind a reverse proxy",
    "api.port": "TCP port of the API (0: any free port)",
    "api.max_body_bytes": "largest request body; bigger ones are refused with 413 while they stream in",
    "api.ws_queue_size": "events buffered per WebSocket client; a client further behind is closed with 4008",
    "api.ws_ping_interval": "seconds between server pings on the WebSocket",
    "api.tokens": "API tokens configured in the file (hashes only)",
    "api.tokens[].name": "the client's name: shown in logs, scopes its idempotency keys",
    "api.tokens[].scopes": "what the token may do (docs/integration.md lists the scopes)",
    "store.path": "SQLite database file (relative: under gateway.data_dir)",
    "store.synchronous": "SQLite synchronous mode; `full` also survives power loss of the host, slower",
    "events.journal_max_events": "events kept in the journal for resume (since=) and webhooks",
    "events.journal_max_age_days": "events older than this are pruned from the journal",
    "sms.max_parts": "an SMS needing more parts than this is refused (422 too_many_parts)",
    "sms.validity_minutes": "validity period asked of the SMSC (TS 23.040 TP-VP); null: none",
    "sms.send_retries": "temporary send failures retried this many times before a message fails",
    "sms.modem_error_pause_s": "a route that refused a send for a configuration reason rests this long",
    "sms.report_window_hours": "delivery reports are matched to messages sent within this window",
    "sms.reassembly_timeout_s": "an incomplete multipart SMS is delivered as incomplete after this",
    "sms.costs": "default costs used by routing and campaign estimates",
    "sms.costs.modem_part": "cost of one SMS part sent through a modem",
    "sms.costs.provider_message": "cost of one message sent through an HTTP provider",
    "sms.costs.currency": "currency of the costs (text, e.g. CNY, JPY)",
    "sms.cool_off": "a route that fails repeatedly rests and its messages are rerouted",
    "sms.cool_off.failures": "failed sends in a row after which a route cools off (route.cooling_off)",
    "sms.cool_off.seconds": "how long a route rests before it takes work again",
    "sms.http_providers": "HTTP SMS providers used as routes besides the modems",
    "sms.http_providers[].name": "route name, used in `route`, `sms.routes` and report URLs",
    "sms.http_providers[].method": "HTTP method of the send request",
    "sms.http_providers[].url": "send URL; may hold placeholders such as {to} and {text} (not in the host)",
    "sms.http_providers[].headers": "request headers; values may hold placeholders",
    "sms.http_providers[].query": "query parameters; values may hold placeholders",
    "sms.http_providers[].body_format": "how `body` is encoded",
    "sms.http_providers[].body": "request body fields; values may hold placeholders",
    "sms.http_providers[].variables": "extra placeholders with fixed values (API keys, sender ids)",
    "sms.http_providers[].sender": "sender id or number passed as the {sender} placeholder",
    "sms.http_providers[].callback_url": "delivery report URL passed as the {callback_url} placeholder",
    "sms.http_providers[].success": "how a successful send answer is recognised",
    "sms.http_providers[].success.status_codes": "HTTP statuses that mean accepted",
    "sms.http_providers[].provider_id": "where the provider's message id is in the answer (for reports)",
    "sms.http_providers[].concurrency": "requests in flight to this provider at most",
    "sms.http_providers[].rate_limit": "token bucket limiting sends; null: no limit",
    "sms.http_providers[].rate_limit.per_second": "sustained sends per second",
    "sms.http_providers[].rate_limit.burst": "sends allowed at once above the rate",
    "sms.http_providers[].retry": "retries of one send request",
    "sms.http_providers[].retry.backoff_initial_s": "first retry delay",
    "sms.http_providers[].retry.backoff_max_s": "largest retry delay",
    "sms.http_providers[].retry.multiplier": "each delay is the previous one times this",
    "sms.http_providers[].reports": "how the provider's delivery reports are authenticated and read; "
    "null: the provider sends none",
    "sms.http_providers[].reports.auth": "how a report request is authenticated",
    "sms.http_providers[].reports.auth.method": "`shared_secret` (header equals a secret) or `hmac_sha256` "
    "(signature over timestamp and body)",
    "sms.http_providers[].reports.auth.secrets": "accepted secrets (several during a rotation)",
    "sms.http_providers[].reports.auth.timestamp_header": "header with the signature's Unix timestamp",
    "sms.http_providers[].reports.auth.signature_prefix": "text before the signature in the header",
    "sms.http_providers[].reports.auth.signature_encoding": "encoding of the signature",
    "sms.http_providers[].reports.auth.tolerance_s": "signatures older or newer than this are refused",
    "sms.http_providers[].reports.body_format": "encoding of the report body",
    "sms.http_providers[].reports.status_field": "JSON path (json) or field name (form) of the status",
    "sms.http_providers[].reports.error_field": "JSON path or field name of the error code; null: none",
    "sms.http_providers[].reports.status_map": "provider status (lower case) -> delivered, undelivered, "
    "failed or pending",
    "sms.http_providers[].reports.case_sensitive": "compare statuses case-sensitively",
    "sms.http_providers[].reports.max_body_bytes": "largest report body accepted",
    "modems": "GSM modems owned by the gateway",
    "modems[].name": "route name of the modem (API `modem`/`route`, events, metrics)",
    "modems[].baudrate": "serial speed",
    "modems[].pin": "SIM PIN, entered when the SIM asks for it",
    "modems[].smsc": "SMS centre number; null: the one stored on the SIM",
    "modems[].quirks": "vendor quirks profile; `auto` picks it from the modem's model",
    "modems[].command_timeout": "seconds an AT command may take",
    "modems[].send_timeout": "seconds an AT+CMGS send may take",
    "simulators": "simulated devices for demos and tests (never on a production site)",
    "simulators.gsm": "simulated GSM modems on pseudo-terminals",
    "simulators.gsm[].name": "the simulator's name",
    "simulators.gsm[].send_latency": "seconds the simulated network takes to accept an SMS",
    "simulators.gsm[].report_delay": "seconds until the simulated delivery report",
    "simulators.gsm[].operator": "operator name the simulated modem reports",
    "simulators.http_provider": "a simulated HTTP SMS provider; null: none",
    "simulators.http_provider.name": "its name",
    "simulators.http_provider.port": "its TCP port (0: any free port)",
    "simulators.http_provider.latency": "seconds per send request",
    "simulators.http_provider.failure_rate": "fraction of sends answered with an error",
    "simulators.http_provider.report_delay": "seconds until its delivery report",
    "simulators.http_provider.api_key": "API key it expects",
    "simulators.http_provider.report_secret": "secret it signs its delivery reports with",
    "simulators.voice_lines": "simulated analog lines",
    "simulators.voice_lines[].country": "tone plan and caller ID standard of the simulated exchange",
    "logging.level": "lowest level logged",
    "logging.format": "`console` for people, `json` (one object per line) for log collectors",
    "consent": "opt-outs: the registry, STOP keywords and their confirmations",
    "consent.bypass_categories": "categories sent even to numbers that opted out (transactional)",
    "consent.confirmation_category": "category of the keyword confirmation SMS (must bypass opt-outs)",
    "consent.confirm_from_receiving_modem": "send the confirmation from the modem that got the keyword",
    "consent.reconfirm_after_s": "a number that repeats the keyword gets another confirmation only after "
    "this",
    "replies": "correlation of incoming SMS with the messages they answer",
    "replies.window_hours": "an incoming SMS answers the last message sent to its number within this window",
    "verify": "verification codes by SMS (online booking, sign-in)",
    "verify.default": "settings of purposes not listed in `purposes`",
    "verify.default.code_length": "digits in a code",
    "verify.default.template_id": "SMS template of the code; null: `verification_code.<locale>`",
    "verify.default.ttl_s": "seconds a code stays valid",
    "verify.purposes.<name>.template_id": "SMS template of the code; null: `verification_code.<locale>`",
    "verify.purposes.<name>.ttl_s": "seconds a code stays valid",
    "verify.default.max_attempts": "wrong checks after which the verification is `too_many_attempts`",
    "verify.default.resend_cooldown_s": "a resend must wait this long after the previous send",
    "verify.purposes": "per purpose (e.g. `booking`, `login`) settings",
    "verify.purposes.<name>.code_length": "digits in a code",
    "verify.purposes.<name>.max_attempts": "wrong checks after which the verification is "
    "`too_many_attempts`",
    "verify.purposes.<name>.resend_cooldown_s": "a resend must wait this long after the previous send",
    "verify.default_locale": "template locale when the request names none",
    "verify.per_number_hour": "codes per number per hour",
    "verify.per_number_day": "codes per number per day",
    "verify.per_prefix_hour": "codes per number range (the number without its last four digits) per hour",
    "verify.global_hour": "codes per hour for the whole gateway",
    "verify.sweep_interval_s": "how often expired verifications are swept",
    "webhooks": "outbound webhooks (Standard Webhooks signing); absent: webhooks are off",
    "webhooks.retry_delays_s": "delay before retry n (the last value repeats)",
    "webhooks.max_attempts": "attempts per event before it becomes a dead letter",
    "webhooks.disable_after_dead_letters": "dead letters in a row that disable a subscription",
    "webhooks.journal_page": "events read from the journal per page while catching up",
    "webhooks.max_subscriptions": "subscriptions the API accepts",
    "webhooks.max_connections": "HTTP connections to all endpoints at most",
    "webhooks.user_agent": "User-Agent of webhook requests",
    "voice": "analog lines (USB voice boxes and V.253 voice modems)",
    "voice.lines": "the analog lines",
    "voice.lines[].name": "line name used in the API and events",
    "voice.lines[].driver": "`usb_box` (USB voice box) or `v253` (voice modem)",
    "voice.lines[].tones": "call progress tone plan of the exchange",
    "voice.lines[].cid": "caller ID standard to decode; `auto` tries all; null: none",
    "voice.region": "region of national numbers on the lines (E.164 conversion)",
    "voice.recordings_dir": "where call recordings are written",
    "voice.recording_format": "file format of call recordings",
    "voice.record_all": "record every answered call on every line",
    "voice.ring_gap_s": "ringing that stops this long without an answer is a missed call",
    "voice.dialtone_timeout_s": "seconds to wait for dial tone before an outbound attempt fails",
    "voice.no_answer_timeout_s": "seconds an outbound attempt rings before it is `no_answer`",
    "voice.clear_s": "seconds on hook between two outbound attempts (the exchange clears down)",
    "voice.contact_lookup_timeout_s": "call.incoming waits at most this long for the contact lookup",
    "ivr": "the IVR: trees, prompts, voicemail, operator positions",
    "call_campaigns": "outbound call campaigns (follow-up calls, surveys)",
    "campaigns": "SMS campaigns (a template sent to a CSV/JSON list of recipients)",
}


@dataclass
class Row:
    key: str
    type: str
    default: str
    meaning: str


@dataclass
class Section:
    path: str
    intro: str
    rows: list[Row] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- meanings
def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> its trailing comment, or the comment lines right above it, in the class source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    found: dict[str, str] = {}
    class_def = ast.parse(source).body[0]
    assert isinstance(class_def, ast.ClassDef)
    for stmt in class_def.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        end = stmt.end_lineno or stmt.lineno
        trailing = [comments[n] for n in range(stmt.lineno, end + 1) if n in comments and n in code_lines]
        if trailing:
            found[stmt.target.id] = " ".join(trailing)
            continue
        above: list[str] = []
        line = stmt.lineno - 1
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        if above:
            found[stmt.target.id] = " ".join(above)
    return found


def _comments_of(model: type[BaseModel]) -> dict[str, str]:
    out: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__module__.split(".")[0] == "gateway":
            out.update(_field_comments(cls))
    return out


# --------------------------------------------------------------------------------------------- types
def _bounds(metadata: list[Any]) -> list[str]:
    flat: list[Any] = []
    for item in metadata:  # Field(ge=...) inside Annotated keeps its constraints in its own metadata
        flat.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    out = []
    for item in flat:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None and isinstance(item, annotated_types.BaseMetadata):
                whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
                out.append(f"{sign} {int(value):_}" if whole else f"{sign} {value:g}")
        if isinstance(item, annotated_types.MinLen) and item.min_length:
            out.append(f"length ≥ {item.min_length}" if item.min_length > 1 else "not empty")
        if isinstance(item, annotated_types.MaxLen):
            out.append(f"length ≤ {item.max_length}")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            out.append(f"pattern `{pattern}`")
    return out


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        inner = _type_text(args[0])
        bounds = _bounds(list(args[1:]))
        return f"{inner} ({', '.join(bounds)})" if bounds else inner
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a, ensure_ascii=False) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_text(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" \\| null" if type(None) in args else "")
    if origin in (list, tuple, frozenset, set):
        item = args[0] if args else Any
        inner = _type_text(item)
        return "list (items below)" if inner == "section (below)" else f"list of {inner}"
    if origin is dict:
        return f"map of {_type_text(args[0])} → {_type_text(args[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "section (below)"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " \\| ".join(json.dumps(m.value) for m in tp)
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path",
             SecretStr: "secret string", dt.time: "time HH:MM", Any: "any"}
    if tp in names:
        return names[tp]
    name = getattr(tp, "__name__", str(tp))
    return "URL" if "Url" in name else name


def _models_in(tp: Any) -> list[tuple[str, type[BaseModel]]]:
    """Models reachable from an annotation, with the key suffix: "" (the value), "[]" (items), ".<name>"."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [("", tp)]
    if origin is typing.Annotated:
        return _models_in(args[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in args for m in _models_in(a)]
    if origin in (list, tuple, frozenset, set) and args:
        return [("[]" + s, m) for s, m in _models_in(args[0])]
    if origin is dict and len(args) == 2:
        return [(".<name>" + s, m) for s, m in _models_in(args[1])]
    return []


# --------------------------------------------------------------------------------------------- defaults
def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, frozenset | set):
        return sorted(_plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dt.time):
        return value.strftime("%H:%M")
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _default_text(info: FieldInfo) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "**required**"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "see below"
    plain = _plain(value)
    if isinstance(plain, str) and plain == "(section)":
        return "see below"
    text = json.dumps(plain, ensure_ascii=False, separators=(", ", ": "))
    if len(text) > LONG_DEFAULT and isinstance(plain, dict):
        keys = ", ".join(f"`{k}`" for k in list(plain)[:6])
        return f"built-in map of {len(plain)} entries ({keys}{', …' if len(plain) > 6 else ''})"
    return "`" + text.replace("|", "\\|") + "`"


# --------------------------------------------------------------------------------------------- walk
def _sections(model: type[BaseModel], path: str, seen: set[str]) -> Iterator[Section]:
    own_doc = model.__doc__ if model.__doc__ != BaseModel.__doc__ else None
    doc = inspect.cleandoc(own_doc) if own_doc else ""
    intro = " ".join(doc.split("\n\n")[0].split()).replace("``", "`")
    if _BARE_INTRO.fullmatch(intro):  # "Config section `consent`." says nothing the heading does not
        intro = ""
    section = Section(path, intro)
    nested: list[tuple[str, type[BaseModel]]] = []
    comments = _comments_of(model)
    for name, info in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        meaning = info.description or NOTES.get(key) or comments.get(name) or ""
        meaning = re.sub(r"\bNone\b", "null", meaning.replace("``", "`"))
        seen.add(key)
        type_text = _type_text(info.annotation)
        bounds = _bounds(list(info.metadata))
        if bounds:
            type_text += f" ({', '.join(bounds)})"
        section.rows.append(Row(name, type_text, _default_text(info), meaning))
        for suffix, sub in _models_in(info.annotation):
            nested.append((key + suffix, sub))
    yield section
    for sub_path, sub in nested:
        yield from _sections(sub, sub_path, seen)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") if "\\|" not in text else " ".join(text.split())


def render() -> str:
    """The whole docs/configuration.md text."""
    seen: set[str] = set()
    sections = list(_sections(Config, "", seen))
    stale = sorted(set(NOTES) - seen)
    if stale:
        raise SystemExit(f"gen_config_reference.py: NOTES for keys that no longer exist: {', '.join(stale)}")
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by docs/gen_config_reference.py from the pydantic models; do not edit by hand. -->",
        "",
        "One YAML file (`hcrm-gateway run --config FILE`); check it with `hcrm-gateway check-config FILE`,",
        "which names every problem with its line and column. Unknown keys are errors. Every key is optional",
        "unless its default says **required**. `[]` stands for an item of a list, `<name>` for a key of a",
        "mapping. Durations are seconds unless the key says otherwise; times of day are in",
        "`gateway.timezone`. A complete annotated example is `examples/full.yaml`.",
        "",
        "Top-level sections: " + ", ".join(f"`{r.key}`" for r in sections[0].rows) + ".",
    ]
    for section in sections[1:]:
        level = "##" if "." not in section.path and "[" not in section.path else "###"
        out += ["", f"{level} `{section.path}`", ""]
        intro = section.intro or NOTES.get(section.path, "")
        if intro:
            out += [intro[0].upper() + intro[1:] + ("" if intro.endswith(".") else "."), ""]
        out += ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]
        for row in section.rows:
            out.append(f"| `{row.key}` | {_cell(row.type)} | {row.default} | {_cell(row.meaning)} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/configuration.md from the config models.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run python docs/gen_config_reference.py",
                  file=sys.stderr)
            return 1
        print(f"{OUTPUT.relative_to(ROOT)} is up to date")
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
