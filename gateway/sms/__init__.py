"""SMS domain: models, the service the API calls, the dispatcher that drives the modems, reassembly.

Import the service and dispatcher from their modules (``gateway.sms.service``, ``gateway.sms.dispatcher``);
this package only re-exports the plain models so that importing it stays cheap and cycle-free.
"""

from gateway.sms.models import (
    Conflict,
    IdempotencyConflict,
    InvalidRequest,
    Message,
    MessagePart,
    MessageStatus,
    ModemView,
    NotFound,
    SmsSettings,
    SubmitRequest,
    SubmitResult,
)

__all__ = [
    "Conflict",
    "IdempotencyConflict",
    "InvalidRequest",
    "Message",
    "MessagePart",
    "MessageStatus",
    "ModemView",
    "NotFound",
    "SmsSettings",
    "SubmitRequest",
    "SubmitResult",
]
