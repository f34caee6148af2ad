"""The demo gateway: the real daemon wired to simulated devices (composition root).

Later issues add their simulated devices here (voice lines, HTTP SMS provider), so a newcomer sees the
whole gateway from one command: ``make run``.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from gateway.config import Config

DEMO_MODEMS = ("gsm0", "gsm1")


def demo_config(data_dir: Path, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                latency: float = 3.0) -> tuple[Config, str]:
    """A Config for two simulated GSM modems on ptys under ``data_dir/dev``; returns it with the API token."""
    data_dir = Path(data_dir).resolve()
    token = token or secrets.token_urlsafe(24)
    digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    dev = data_dir / "dev"
    raw = {
        "gateway": {"site": "hcrm-gateway demo", "data_dir": str(data_dir)},
        "api": {
            "host": host,
            "port": port,
            "tokens": [{"name": "demo", "hash": digest, "scopes": ["admin"]}],
        },
        "simulators": {
            "gsm": [
                {"name": f"sim-{name}", "link": str(dev / name), "send_latency": latency, "report_delay": 2.0}
                for name in DEMO_MODEMS
            ]
        },
        "modems": [{"name": name, "port": str(dev / name)} for name in DEMO_MODEMS],
    }
    return Config.model_validate(raw), token
