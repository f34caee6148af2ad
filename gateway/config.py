"""The gateway's configuration: one YAML file parsed into pydantic models.

Unknown keys are errors (a misspelt key silently ignored is how a hospital ends up with the wrong modem PIN).
Every problem is reported with the YAML line and column of the offending key or value, all at once, so an
operator fixes the file in one pass: ``hcrm-gateway check-config FILE``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from gateway.ivr.call_campaigns import CallCampaignSettings
from gateway.ivr.service import IvrSettings
from gateway.sms.campaigns import CampaignSettings
from gateway.sms.categories import (
    DEFAULT_CATEGORIES,
    DEFAULT_CATEGORY,
    DEFAULT_QUIET_HOURS,
    CategorySettings,
    QuietWindow,
)
from gateway.sms.consent import ConsentSettings
from gateway.sms.providers import HttpProviderEntry
from gateway.sms.replies import ReplySettings
from gateway.sms.routing import CoolOffSettings, CostSettings, RouteLimits
from gateway.verify import VerificationSettings
from gateway.voice.settings import VoiceSettings
from gateway.webhooks import WebhookSettings

SCOPES = ("sms:send", "sms:read", "events:read", "admin", "calls:write", "calls:read", "recordings:read",
          "ivr:write", "ivr:read")
Scope = Literal[
    "sms:send", "sms:read", "events:read", "admin", "calls:write", "calls:read", "recordings:read",
    "ivr:write", "ivr:read",
]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Strict):
    site: str = "hcrm-gateway"
    timezone: str = "Asia/Tokyo"
    default_region: str = Field("JP", description="ISO 3166 region of numbers without a country code")
    data_dir: Path = Path("/var/lib/hcrm-gateway")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, v: str) -> str:
        if v.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {v!r} (ISO 3166 alpha-2, e.g. JP, CN)")
        return v.upper()


class TokenEntry(_Strict):
    name: Annotated[str, Field(pattern=_NAME)]
    hash: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$", description="sha256:<hex> of the token")]
    scopes: list[Scope] = Field(min_length=1)


class DbTokensSection(_Strict):
    """``api.db_tokens``: how the daemon follows tokens issued and revoked with the ``token`` command."""

    refresh_interval: Annotated[float, Field(ge=0.1, le=60)] = 1.0  # seconds between token-version checks
    last_used_interval: Annotated[float, Field(ge=1, le=3600)] = 60.0  # seconds between last-use writes


class ApiSection(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    ws_queue_size: Annotated[int, Field(ge=10, le=1_000_000)] = 1000
    ws_ping_interval: Annotated[float, Field(gt=0, le=300)] = 20.0
    metrics_public: bool = Field(False, description="serve /metrics without a token")
    tokens: list[TokenEntry] = []
    db_tokens: DbTokensSection = Field(default_factory=lambda: DbTokensSection(),
                                       description="tokens issued with `hcrm-gateway token create`")


class StoreSection(_Strict):
    path: Path = Path("gateway.sqlite3")
    synchronous: Literal["normal", "full"] = "normal"


class EventsSection(_Strict):
    journal_max_events: Annotated[int, Field(ge=100)] = 100_000
    journal_max_age_days: Annotated[float, Field(gt=0)] = 7.0


class SmsSection(_Strict):
    max_parts: Annotated[int, Field(ge=1, le=255)] = 10
    report: bool = Field(True, description="request a delivery report unless the message says otherwise")
    validity_minutes: Annotated[int, Field(ge=5, le=63 * 7 * 24 * 60)] | None = 1440
    send_retries: Annotated[int, Field(ge=0, le=20)] = 3
    retry_backoff_s: list[Annotated[float, Field(ge=0, le=86400)]] = Field(
        [5.0, 30.0, 120.0], min_length=1, description="delay before retry n; the last value repeats")
    modem_error_pause_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    report_window_hours: Annotated[float, Field(gt=0)] = 72.0
    reassembly_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    # --- routing (issue 4); times of day are in gateway.timezone ---
    default_category: str = Field(DEFAULT_CATEGORY, description="category of a message that names none")
    quiet_hours: str = Field(DEFAULT_QUIET_HOURS, description="HH:MM-HH:MM: categories' 'default' window")
    categories: dict[str, CategorySettings] = Field(
        {}, description="added to / replacing the built-in categories (otp, lab_result, appointment, ...)")
    routes: dict[str, RouteLimits] = Field({}, description="per modem / provider: daily_cap, cost")
    costs: CostSettings = CostSettings()
    cool_off: CoolOffSettings = CoolOffSettings()
    provider_overflow: Annotated[int, Field(ge=0)] | None = Field(
        None, description="auto messages waiting per healthy modem above which a provider helps")
    http_providers: list[HttpProviderEntry] = []

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_window(cls, v: str) -> str:
        QuietWindow.parse(v)
        return v

    @model_validator(mode="after")
    def _known_default_category(self) -> SmsSection:
        known = set(DEFAULT_CATEGORIES) | set(self.categories)
        if self.default_category not in known:
            raise ValueError(f"default_category {self.default_category!r} is not a category "
                             f"(known: {', '.join(sorted(known))})")
        for name in self.categories:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
                raise ValueError(f"category name {name!r}: lower-case letters, digits and '_'")
        return self


class ModemEntry(_Strict):
    name: Annotated[str, Field(pattern=_NAME)]
    port: str = Field(description="serial device, preferably /dev/serial/by-id/...")
    baudrate: int = 115200
    pin: Annotated[str, Field(pattern=r"^[0-9]{4,8}$")] | None = None
    smsc: str | None = None
    quirks: str = "auto"
    command_timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    send_timeout: Annotated[float, Field(gt=0, le=300)] = 60.0


class GsmSimulatorEntry(_Strict):
    name: Annotated[str, Field(pattern=_NAME)]
    link: str = Field(description="symlink created for the simulated modem's pty")
    send_latency: Annotated[float, Field(ge=0, le=120)] = 3.0
    report_delay: Annotated[float, Field(ge=0, le=3600)] = 2.0
    operator: str = "NTT DOCOMO"


class HttpProviderSimulatorEntry(_Strict):
    name: Annotated[str, Field(pattern=_NAME)] = "provider"
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    latency: Annotated[float, Field(ge=0, le=60)] = 0.05
    failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    report_delay: Annotated[float, Field(ge=0, le=3600)] = 1.0
    api_key: str = "demo-provider-key"
    report_secret: str = "demo-report-secret"


class VoiceLineSimulatorEntry(_Strict):
    """A simulated analog line (the exchange and a far-end party) behind a simulated box or voice modem."""

    line: Annotated[str, Field(pattern=_NAME)] = Field(description="the voice.lines entry it feeds")
    country: Literal["jp", "cn", "us", "etsi"] = "jp"


class SimulatorsSection(_Strict):
    gsm: list[GsmSimulatorEntry] = []
    http_provider: HttpProviderSimulatorEntry | None = None
    voice_lines: list[VoiceLineSimulatorEntry] = []


class LoggingSection(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class Config(_Strict):
    gateway: GatewaySection = GatewaySection()
    api: ApiSection = ApiSection()
    store: StoreSection = StoreSection()
    events: EventsSection = EventsSection()
    sms: SmsSection = SmsSection()
    modems: list[ModemEntry] = []
    simulators: SimulatorsSection = SimulatorsSection()
    logging: LoggingSection = LoggingSection()
    consent: ConsentSettings = ConsentSettings()
    replies: ReplySettings = ReplySettings()
    verify: VerificationSettings = VerificationSettings()
    webhooks: WebhookSettings | None = Field(None, description="outbound webhooks; absent: off")
    voice: VoiceSettings = VoiceSettings()
    ivr: IvrSettings = IvrSettings()
    call_campaigns: CallCampaignSettings = CallCampaignSettings()
    campaigns: CampaignSettings = CampaignSettings()

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        for what, items in (
            ("modems", self.modems),
            ("api.tokens", self.api.tokens),
            ("sms.http_providers", self.sms.http_providers),
        ):
            seen: set[str] = set()
            for item in items:
                if item.name in seen:
                    raise ValueError(f"{what}: name {item.name!r} is used twice")
                seen.add(item.name)
        modems = {m.name for m in self.modems} | {g.name for g in self.simulators.gsm}
        providers = {p.name for p in self.sms.http_providers}
        both = sorted({m.name for m in self.modems} & providers)
        if both:
            raise ValueError(f"sms.http_providers: {', '.join(both)} is also a modem name")
        unknown = sorted(set(self.sms.routes) - modems - providers)
        if unknown:
            raise ValueError(f"sms.routes: {', '.join(unknown)} is neither a modem nor an HTTP provider")
        return self

    def resolve(self, path: Path | str) -> Path:
        """A path from the config, relative to ``gateway.data_dir`` unless absolute."""
        p = Path(path)
        return p if p.is_absolute() else self.gateway.data_dir / p


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int  # 1-based
    column: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ConfigError(Exception):
    """The file cannot be used; ``problems`` lists every reason with its position."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def _position(tree: Any, loc: tuple[Any, ...], *, at_key: bool = False) -> tuple[int, int]:
    """Walk the ruamel tree along a pydantic error location; return the deepest (line, column), 0-based.

    Scalars point at their value, mappings and sequences (and unknown keys, ``at_key``) at their key."""
    line, col = 0, 0
    node = tree
    for i, key in enumerate(loc):
        if isinstance(node, CommentedMap) and key in node:
            last = i == len(loc) - 1
            nested = isinstance(node[key], (CommentedMap, CommentedSeq))
            line, col = node.lc.key(key) if nested or (last and at_key) else node.lc.value(key)
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            line, col = node.lc.item(key)
            node = node[key]
        elif isinstance(node, CommentedMap) and isinstance(key, str):
            # An extra key pydantic reports under its parent, or a missing one: point at the parent map.
            if hasattr(node, "lc") and node.lc.line is not None:
                line, col = node.lc.line, node.lc.col
            break
        else:
            break
    return line, col


def _message(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key {loc!r}"
    if kind == "missing":
        return f"{loc}: required key is missing"
    msg = re.sub(r"^Value error, ", "", err["msg"])
    if "input" in err and kind not in ("model_type",) and not isinstance(err["input"], (dict, list)):
        got = f" (got {err['input']!r})" if repr(err["input"]) not in msg else ""
        return f"{loc}: {msg}{got}"
    return f"{loc}: {msg}" if loc else msg


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Parse YAML text into a Config or raise ConfigError naming every problem with its line and column."""
    yaml = YAML(typ="rt")
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = ConfigProblem(filename, line, col, f"YAML syntax: {exc.problem or exc}")
        raise ConfigError([problem]) from None
    if tree is None:
        tree = CommentedMap()
    if not isinstance(tree, CommentedMap):
        raise ConfigError([ConfigProblem(filename, 1, 1, "the top level must be a mapping of sections")])
    try:
        return Config.model_validate(_plain(tree))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            line, col = _position(tree, tuple(err["loc"]), at_key=err["type"] == "extra_forbidden")
            problems.append(ConfigProblem(filename, line + 1, col + 1, _message(err)))
        raise ConfigError(problems) from None


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(p), 1, 1, f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(str(p), 1, 1, f"not UTF-8 text: {exc.reason}")]) from None
    return parse_config(text, str(p))
