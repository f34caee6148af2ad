"""Request and response bodies of the REST API (pydantic v2), also the source of /openapi.json.

Response bodies are produced by the gateway's own ``to_json()`` (the same shape the events carry); the
response models here document them and the e2e tests validate every response against them, so drift between
the gateway and the published schema fails a test instead of a client.

Requests are strict (``extra="forbid"``, no type coercion: ``"report": "yes"`` is an error, not ``True``), so
a CRM integration bug surfaces as a 422 naming the field instead of a message sent with a guessed value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

MAX_CLIENT_REF = 128
MAX_PAGE_LIMIT = 200
DEFAULT_PAGE_LIMIT = 50


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SendMessageRequest(_Request):
    """POST /v1/messages."""

    to: Annotated[
        str,
        Field(
            min_length=1,
            max_length=64,
            description="Recipient: E.164 (+819012345678) or a national number of the default region",
            examples=["+819012345678", "090-1234-5678"],
        ),
    ]
    text: Annotated[str, Field(max_length=20_000, description="Message text (GSM 7-bit or UCS-2 is chosen)")]
    modem: Annotated[str | None, Field(description="Send through this modem; default: any ready modem")] = (
        None
    )
    report: Annotated[
        bool | None, Field(description="Request a delivery report; default: the gateway's sms.report setting")
    ] = None
    send_at: Annotated[
        AwareDatetime | None,
        Field(description="Do not send before this time (RFC 3339 with offset); default: now"),
    ] = None
    client_ref: Annotated[
        str | None,
        Field(max_length=MAX_CLIENT_REF, description="Opaque reference of the CRM, echoed in events"),
    ] = None
    category: Annotated[
        str | None,
        Field(
            max_length=32,
            description="otp, lab_result, appointment, billing, care, education, report (or a configured "
            "one): sets the priority and quiet hours; default: sms.default_category (care)",
        ),
    ] = None
    route: Annotated[
        str | None,
        Field(
            max_length=32,
            description="auto (default), a modem name or an HTTP provider name; 'modem' is an alias",
        ),
    ] = None


class MessagePart(_Response):
    """One SMS segment of a (possibly concatenated) message."""

    seq: Annotated[int, Field(ge=1, description="1-based segment number")]
    status: Annotated[
        str, Field(description="queued, sent, delivery_pending, delivered, undelivered, failed or received")
    ]
    reference: Annotated[int | None, Field(description="TP-MR the network gave this segment (0-255)")] = None
    modem: str | None = None
    sent_at: datetime | None = None
    tp_status: Annotated[int | None, Field(description="Raw TP-Status of the last delivery report")] = None
    cms_error: Annotated[int | None, Field(description="Raw +CMS ERROR code of the last failed send")] = None
    error: str | None = None
    updated_at: datetime | None = None


class MessageError(_Response):
    code: int | None = None
    kind: Annotated[str | None, Field(description="temporary, permanent or config")] = None
    message: str | None = None


class Message(_Response):
    """An SMS and its delivery state. Outgoing messages carry to/to_raw/report/send_at/client_ref/sent_at/
    final_at/error; incoming ones (direction "in") carry from/from_raw/received_at/incomplete."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str
    direction: Annotated[Literal["out", "in"], Field(description="out: sent by the gateway; in: received")]
    status: Annotated[
        str,
        Field(
            description="scheduled, queued, sending, sent, delivered, undelivered, failed, canceled "
            "(outgoing) or received (incoming)",
        ),
    ]
    text: str
    encoding: Annotated[str | None, Field(description="gsm7 or ucs2")] = None
    parts: Annotated[int, Field(ge=1, description="Number of SMS segments")]
    modem: Annotated[str | None, Field(description="The modem that sent (or received) it")] = None
    created_at: datetime
    updated_at: datetime
    part_list: Annotated[list[MessagePart], Field(description="Segments with their own status")]
    to: Annotated[str | None, Field(description="Recipient in E.164")] = None
    to_raw: Annotated[str | None, Field(description="Recipient exactly as the client gave it")] = None
    report: bool | None = None
    send_at: datetime | None = None
    client_ref: str | None = None
    sent_at: datetime | None = None
    final_at: datetime | None = None
    error: MessageError | None = None
    category: Annotated[str | None, Field(description="Outgoing: the message's category")] = None
    route: Annotated[
        str | None, Field(description="Outgoing: the route that sent it, else the one asked for, else auto")
    ] = None
    cost: Annotated[
        float | None,
        Field(description="Outgoing: estimated at submit, the actual route's cost once sent (sms.costs)"),
    ] = None
    provider_id: Annotated[
        str | None, Field(description="Outgoing via an HTTP provider: the provider's message id")
    ] = None
    from_: Annotated[str | None, Field(alias="from", description="Sender in E.164 when derivable")] = None
    from_raw: str | None = None
    received_at: datetime | None = None
    incomplete: bool | None = None


class MessagePage(_Response):
    """GET /v1/messages."""

    items: list[Message]
    next_cursor: Annotated[
        str | None, Field(description="Pass as ?cursor= to get the next page; null on the last page")
    ] = None


class Modem(_Response):
    name: str
    state: Annotated[str, Field(description="initializing, ready, down or absent")]
    signal_dbm: int | None = None
    registration: Annotated[
        str | None, Field(description="home, roaming, searching, denied, unknown ...")
    ] = None
    operator: str | None = None
    queue_depth: Annotated[int, Field(ge=0, description="Messages waiting for this modem")] = 0
    manufacturer: str | None = None
    model: str | None = None
    last_error: str | None = None


class ModemList(_Response):
    items: list[Modem]


class ModemSummary(_Response):
    total: int
    ready: int
    states: dict[str, int]


class Health(_Response):
    status: Literal["ok"]
    epoch: Annotated[str, Field(description="Event journal epoch (changes when the journal is reset)")]
    seq: Annotated[int, Field(description="Sequence number of the latest event")]
    uptime_s: float
    modems: ModemSummary


class ProblemFieldError(_Response):
    field: Annotated[str, Field(description="Dotted path into the request body; empty for the body itself")]
    message: str


class Problem(_Response):
    """RFC 9457 problem details (application/problem+json)."""

    type: Annotated[str, Field(description="urn:hcrm:problem:<code>")]
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: Annotated[str, Field(description="Stable machine-readable error code")]
    request_id: str | None = None
    errors: list[ProblemFieldError] | None = None


class ProviderReportItem(_Response):
    provider_id: str
    status: Annotated[str, Field(description="delivered, undelivered, failed or pending")]
    message_id: Annotated[str | None, Field(description="null: no message with that id (stored for later)")]
    applied: Annotated[bool, Field(description="The message's state changed")]


class ProviderReportAck(_Response):
    """POST /v1/providers/{name}/reports: answered only after the reports are committed."""

    accepted: int
    items: list[ProviderReportItem]
