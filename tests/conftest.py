"""Shared fixtures. Async tests run under trio (pytest-trio, trio_mode = true in pyproject.toml)."""

from __future__ import annotations

import os

import pytest

# Tests never touch a real device or the network: everything runs against simulators on ptys and loopback.
os.environ.setdefault("HCRM_GATEWAY_TESTING", "1")


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return d
