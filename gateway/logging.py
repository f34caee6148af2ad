"""structlog set-up: one line per event to stderr (journald-friendly), JSON or console.

Phone numbers are personal data: at info level and above, values of number-like keys are masked
(``+81901****678``, :func:`gateway.numbers.mask`) before any renderer sees them, so call sites log the number
itself under one of ``NUMBER_KEYS``; debug level shows them in full for a technician.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from gateway.numbers import mask

NUMBER_KEYS = frozenset(
    {"to", "from", "from_", "number", "sender", "recipient", "msisdn", "caller", "callee"}
    | {"to_raw", "from_raw"}
)


def _mask_numbers(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    if method == "debug":
        return event
    for key in NUMBER_KEYS & event.keys():
        value = event[key]
        if isinstance(value, str):
            event[key] = mask(value)
    return event


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    numeric = getattr(logging, level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_numbers,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
