"""structlog set-up: one line per event to stderr (journald-friendly), JSON or console.

Phone numbers are personal data: at info level and above, values of number-like keys are masked
(``+81901****678``) before any renderer sees them; debug level shows them in full for a technician.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

NUMBER_KEYS = frozenset(
    {"to", "from", "from_", "number", "sender", "recipient", "msisdn", "caller", "callee"}
    | {"to_raw", "from_raw"}
)
_DIGITS = re.compile(r"\d")


def mask_number(value: str) -> str:
    """Keep the country/operator prefix and the last three digits: enough to tell numbers apart in a log."""
    digits = [m.start() for m in _DIGITS.finditer(value)]
    if len(digits) <= 6:
        return "*" * len(value)
    hide = set(digits[5:-3])
    return "".join("*" if i in hide else ch for i, ch in enumerate(value))


def _mask_numbers(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    if method == "debug":
        return event
    for key in NUMBER_KEYS & event.keys():
        value = event[key]
        if isinstance(value, str):
            event[key] = mask_number(value)
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
