"""What the API needs from the rest of the gateway (``ApiServices``) and how it behaves (``ApiSettings``).

The composition root (``gateway/daemon.py``) builds both and hands them to ``api.app.create_app``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry
from quart import current_app, g

from api.metrics import ApiMetrics

if TYPE_CHECKING:  # api.auth imports this module for api_state()
    from api.auth import TokenStore


@dataclass
class ApiServices:
    """Gateway objects the routes talk to.

    ``sms`` is a ``gateway.sms.service.SmsService`` and ``bus`` a ``gateway.events.EventBus`` (typed loosely
    so that tests can hand in fakes). ``started_at`` is a ``time.time()`` wall-clock value (/health uptime).
    ``registry`` receives the API's Prometheus metrics; give the daemon's registry to expose its metrics too.
    """

    sms: Any
    bus: Any
    tokens: TokenStore
    started_at: float = field(default_factory=time.time)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # SMS platform services (issue 4); None where the deployment does not run them (routes answer 404).
    templates: Any = None  # gateway.sms.template_store.TemplateStore
    verifications: Any = None  # gateway.verify.VerificationService
    webhooks: Any = None  # gateway.webhooks.WebhookService
    consent: Any = None  # gateway.sms.consent.ConsentService (opt-out registry)
    provider_reports: Any = None  # gateway.sms.providers.ProviderReportIntake (DLR callbacks)
    # Voice lines and IVR (issues 5 and 6).
    voice: Any = None  # gateway.voice.service.VoiceService
    ivr: Any = None  # gateway.ivr.service.IvrService (tree revisions, sessions)
    queues: Any = None  # gateway.ivr.queue.QueueManager (operator positions)
    call_campaigns: Any = None  # gateway.ivr.call_campaigns.CallCampaignService
    campaigns: Any = None  # gateway.sms.campaigns.CampaignService (SMS campaigns)


@dataclass
class ApiSettings:
    max_body_bytes: int = 1024 * 1024
    # Per-client event queue; the bus sizes its Subscription queues (EventBus(client_queue_size=...)).
    ws_queue_size: int = 1000
    # Application-level {"type":"ping"} frame interval: 20-25 s is common practice (see docs/api.md).
    ws_ping_interval: float = 20.0
    # A client without an Authorization header must send {"type":"auth","token":...} within this time.
    ws_auth_timeout: float = 5.0
    # A slow client whose queue overflowed gets this long to take the frames already written, then is cut.
    ws_close_timeout: float = 5.0
    cors_origins: list[str] = field(default_factory=list)
    # /metrics without a token (loopback scrapers); default: admin scope required.
    metrics_public: bool = False
    # hypercorn: how long open connections get to finish after the shutdown trigger fired.
    graceful_timeout: float = 2.0
    # TCP_USER_TIMEOUT of accepted connections: a peer that leaves sent data unacknowledged (or its window
    # closed) this long is disconnected by the kernel; see api/server.py. None: the OS default (minutes).
    tcp_user_timeout: float | None = 5.0


@dataclass
class ApiState:
    """Per-app state, stored in ``app.extensions``; reach it from a handler with ``api_state()``."""

    services: ApiServices
    settings: ApiSettings
    metrics: ApiMetrics
    # Set when the server begins shutting down: open WebSockets close with 1001 at once.
    shutting_down: trio.Event = field(default_factory=trio.Event)
    # (principal name, Idempotency-Key) of POSTs being processed right now, for the draft's 409.
    idempotency_in_flight: set[tuple[str, str]] = field(default_factory=set)


STATE_KEY = "hcrm_api"


def api_state(app: Any = None) -> ApiState:
    return (app or current_app).extensions[STATE_KEY]


def request_id() -> str:
    """The id of the current request or WebSocket (also in the X-Request-Id header and the logs)."""
    return g.get("request_id", "-")
