"""Delivery-report callbacks from HTTP SMS providers (``POST /v1/providers/{name}/reports``).

Pure functions plus ``ProviderReportReceiver``, which the API route calls with the request's headers and raw
body. It authenticates, parses and maps; the route answers 2xx only after the reports are committed (the
provider then retries what we did not acknowledge: Jasmin retries 3 x 30 s until it gets ``ACK/Jasmin``).

Authentication, one of (per provider, ``auth.method``):

* ``shared_secret``: the header ``auth.header`` (default ``X-Provider-Secret``) must equal one of
  ``auth.secrets``.
* ``hmac_sha256`` (the scheme the HTTP provider simulator implements)::

      X-Signature-Timestamp: <Unix time, integer seconds>
      X-Signature: sha256=<hex HMAC-SHA256(key = secret as UTF-8, message = "<timestamp>." + raw body)>

  Header names, the ``sha256=`` prefix and hex/base64 are configurable. The timestamp is part of the signed
  message so a captured request cannot be replayed outside ``auth.tolerance_s`` (default 300 s, as Standard
  Webhooks). A header may carry several signatures and ``auth.secrets`` several secrets, so a secret can be
  rotated without downtime; signatures are separated by spaces, or by commas too when the prefix holds no
  comma (Standard Webhooks' prefix is ``v1,``). Signatures are compared with ``hmac.compare_digest``
  (constant time), always over the raw bytes as received, never a re-serialisation.

Parsing: JSON (an object, a list of objects, or the list at ``items_path``) or an HTML form; the provider's
message id, status and error code are read with JSON paths (``$.id``) or form field names. Statuses map to
ours (delivered / undelivered / failed / pending) through ``status_map``; the default map covers the SMPP
``stat`` words (DELIVRD, UNDELIV, EXPIRED, DELETED, REJECTD, ACCEPTD, ENROUTE, UNKNOWN) and the usual HTTP
vocabularies (Twilio/Plivo ``delivered``, ``undelivered``, ``failed``, ``sent``, ``queued``; Gammu
``DeliveryOK``, ``DeliveryFailed``, ``DeliveryPending``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.sms.http_provider import MISSING, JsonPath, compiled_path

DeliveryStatus = Literal["delivered", "undelivered", "failed", "pending"]

# Keys compared case-insensitively by default. Sources: sms.md §9 (Jasmin message_status, Twilio, Plivo,
# Gammu SQL), SMPP 3.4 Appendix B delivery receipt ``stat`` values.
DEFAULT_STATUS_MAP: dict[str, DeliveryStatus] = {
    "delivered": "delivered",
    "delivrd": "delivered",
    "deliveryok": "delivered",
    "undelivered": "undelivered",
    "undeliv": "undelivered",
    "undeliverable": "undelivered",
    "expired": "undelivered",
    "deleted": "undelivered",
    "deliveryfailed": "undelivered",
    "failed": "failed",
    "rejected": "failed",
    "rejectd": "failed",
    "error": "failed",
    "sendingerror": "failed",
    "queued": "pending",
    "accepted": "pending",
    "acceptd": "pending",
    "scheduled": "pending",
    "sending": "pending",
    "sent": "pending",
    "submitted": "pending",
    "enroute": "pending",
    "buffered": "pending",
    "deliverypending": "pending",
    "pending": "pending",
    "unknown": "pending",
}


class ReportError(ValueError):
    """A report request we refuse; ``http_status`` is what the API route should answer."""

    http_status = 400


class ReportAuthError(ReportError):
    http_status = 401


class ReportFormatError(ReportError):
    http_status = 400


class UnmappedStatus(ReportError):
    http_status = 422


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token


class ReportAuth(_Strict):
    method: Literal["shared_secret", "hmac_sha256"]
    secrets: list[Annotated[SecretStr, Field(min_length=16)]] = Field(min_length=1, max_length=4)
    header: str | None = None  # default X-Provider-Secret (shared_secret) / X-Signature (hmac_sha256)
    timestamp_header: str = "X-Signature-Timestamp"
    signature_prefix: str = "sha256="
    signature_encoding: Literal["hex", "base64"] = "hex"
    tolerance_s: Annotated[float, Field(gt=0, le=3600)] = 300.0

    @field_validator("header", "timestamp_header")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        if v is not None and not _HEADER_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid header name")
        return v

    @property
    def header_name(self) -> str:
        if self.header:
            return self.header
        return "X-Provider-Secret" if self.method == "shared_secret" else "X-Signature"


class ProviderReportsConfig(_Strict):
    auth: ReportAuth
    body_format: Literal["json", "form"] = "json"
    items_path: str | None = None  # JSON: where the list of reports is, e.g. $.results
    id_field: str = "$.id"  # JSON path (json) or field name (form)
    status_field: str = "$.status"
    error_field: str | None = None
    status_map: dict[str, DeliveryStatus] = DEFAULT_STATUS_MAP
    case_sensitive: bool = False
    unmapped: DeliveryStatus | Literal["reject"] = "pending"  # a status missing from status_map
    max_body_bytes: Annotated[int, Field(ge=256, le=16 * 1024 * 1024)] = 256 * 1024

    @model_validator(mode="after")
    def _fields_match_format(self) -> ProviderReportsConfig:
        fields = {
            "id_field": self.id_field,
            "status_field": self.status_field,
            "error_field": self.error_field,
        }
        problems = []
        for key, value in fields.items():
            if value is None:
                continue
            if self.body_format == "json":
                try:
                    JsonPath.parse(value)
                except ValueError as exc:
                    problems.append(f"{key}: {exc}")
                else:
                    if JsonPath.parse(value).op is not None:
                        problems.append(f"{key}: a field path cannot hold a comparison")
            elif not value or value.startswith("$"):
                problems.append(f"{key}: with body_format 'form' give a form field name, not {value!r}")
        if self.items_path is not None:
            if self.body_format != "json":
                problems.append("items_path: only for body_format 'json'")
            else:
                try:
                    JsonPath.parse(self.items_path)
                except ValueError as exc:
                    problems.append(f"items_path: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True)
class ProviderReport:
    provider: str
    provider_id: str
    status: DeliveryStatus
    raw_status: str
    error_code: str | None = None
    mapped: bool = True  # False: raw_status was not in status_map and `unmapped` chose the status

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "provider_id": self.provider_id,
            "status": self.status,
            "raw_status": self.raw_status,
            "error_code": self.error_code,
            "mapped": self.mapped,
        }


# --- authentication --------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes, *, encoding: str = "hex") -> str:
    """The signature of ``body`` at ``timestamp`` (without prefix): HMAC-SHA256 over ``b"<ts>." + body``."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256).digest()
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode("ascii")


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def authenticate(auth: ReportAuth, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise ReportAuthError unless the request carries a valid secret or signature."""
    lowered = _lower_headers(headers)
    presented = lowered.get(auth.header_name.lower())
    if presented is None:
        raise ReportAuthError(f"missing {auth.header_name} header")
    secrets = [s.get_secret_value() for s in auth.secrets]
    if auth.method == "shared_secret":
        given = presented.strip().encode("utf-8")
        # Compare against every secret (no early exit) so timing does not reveal which one is current.
        ok = False
        for secret in secrets:
            ok |= hmac.compare_digest(given, secret.encode("utf-8"))
        if not ok:
            raise ReportAuthError(f"{auth.header_name} does not match")
        return
    raw_ts = lowered.get(auth.timestamp_header.lower())
    if raw_ts is None:
        raise ReportAuthError(f"missing {auth.timestamp_header} header")
    if not raw_ts.strip().isdigit():
        raise ReportAuthError(f"{auth.timestamp_header} must be Unix time in whole seconds")
    timestamp = int(raw_ts.strip())
    if abs(now - timestamp) > auth.tolerance_s:
        raise ReportAuthError(
            f"{auth.timestamp_header} is {now - timestamp:+.0f} s from our clock (tolerance "
            f"{auth.tolerance_s:g} s): replayed request or unsynchronised clock"
        )
    # Several signatures are separated by spaces, or commas unless the prefix has one ("v1,<sig>").
    separators = r"\s+" if "," in auth.signature_prefix else r"[\s,]+"
    candidates = [c for c in re.split(separators, presented.strip()) if c]
    expected = [
        (auth.signature_prefix + sign(secret, timestamp, body, encoding=auth.signature_encoding)).encode()
        for secret in secrets
    ]
    ok = False
    for candidate in candidates:
        for want in expected:
            ok |= hmac.compare_digest(candidate.encode("utf-8", "replace"), want)
    if not ok:
        raise ReportAuthError(f"{auth.header_name} does not match the body")


# --- parsing and mapping ---------------------------------------------------------------------------------
def map_status(config: ProviderReportsConfig, raw: str) -> tuple[DeliveryStatus, bool]:
    """(our status, whether ``raw`` was in the map). Raises UnmappedStatus when ``unmapped`` is 'reject'."""
    if config.case_sensitive:
        found = config.status_map.get(raw)
    else:
        folded = raw.strip().casefold()
        found = next((v for k, v in config.status_map.items() if k.casefold() == folded), None)
    if found is not None:
        return found, True
    if config.unmapped == "reject":
        raise UnmappedStatus(f"status {raw!r} is not in this provider's status_map")
    return config.unmapped, False


def _scalar(value: Any) -> str | None:
    if value is MISSING or value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    return text or None


def _json_items(config: ProviderReportsConfig, body: bytes) -> list[Any]:
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportFormatError(f"body is not valid JSON: {exc}") from None
    if config.items_path is not None:
        document = compiled_path(config.items_path).extract(document)
        if not isinstance(document, list):
            raise ReportFormatError(f"{config.items_path} is not a list in the report body")
        return document
    return document if isinstance(document, list) else [document]


def parse_reports(provider: str, config: ProviderReportsConfig, body: bytes) -> list[ProviderReport]:
    """The reports in ``body``. Raises ReportFormatError naming the field and item that is wrong."""
    if len(body) > config.max_body_bytes:
        raise ReportFormatError(f"body of {len(body)} bytes exceeds max_body_bytes {config.max_body_bytes}")
    if config.body_format == "json":
        items = _json_items(config, body)
        id_path, status_path = compiled_path(config.id_field), compiled_path(config.status_field)
        error_path = compiled_path(config.error_field) if config.error_field else None

        def read(item: Any) -> tuple[str | None, str | None, str | None]:
            return (
                _scalar(id_path.extract(item)),
                _scalar(status_path.extract(item)),
                _scalar(error_path.extract(item)) if error_path else None,
            )
    else:
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise ReportFormatError("form body is not UTF-8") from None
        items = [{k: v[-1] for k, v in form.items()}]

        def read(item: Any) -> tuple[str | None, str | None, str | None]:
            error = _scalar(item.get(config.error_field)) if config.error_field else None
            return _scalar(item.get(config.id_field)), _scalar(item.get(config.status_field)), error

    if not items:
        raise ReportFormatError("the body holds no reports")
    reports = []
    for index, item in enumerate(items):
        where = f"report {index}" if len(items) > 1 else "report"
        provider_id, raw_status, error_code = read(item)
        if provider_id is None:
            raise ReportFormatError(f"{where}: no message id at {config.id_field}")
        if raw_status is None:
            raise ReportFormatError(f"{where}: no status at {config.status_field}")
        status, mapped = map_status(config, raw_status)
        reports.append(ProviderReport(provider, provider_id, status, raw_status, error_code, mapped))
    return reports


class ProviderReportReceiver:
    """Authenticate, parse and map one provider's report callbacks. ``clock`` returns Unix seconds."""

    def __init__(
        self, provider: str, config: ProviderReportsConfig, *, clock: Callable[[], float] = time.time
    ):
        self.provider = provider
        self.config = config
        self._clock = clock

    def handle(self, headers: Mapping[str, str], body: bytes) -> list[ProviderReport]:
        """Raises ReportAuthError (401), ReportFormatError (400) or UnmappedStatus (422)."""
        authenticate(self.config.auth, headers, body, self._clock())
        return parse_reports(self.provider, self.config, body)
