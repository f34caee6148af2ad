"""Tokens issued or revoked with the `token` CLI while the API runs: honoured within about a second.

hypercorn on 127.0.0.1:0, httpx over a real socket, the real SmsService on a temporary SQLite file, and
``DbTokenStore.run`` refreshing from the store; the CLI writes through its own sqlite3 connection (in a
worker thread, as a separate process would).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import trio

from api.app import create_app
from api.auth import hash_token
from api.server import serve
from api.services import ApiServices
from api.token_db import DbTokenSettings, DbTokenStore
from gateway.cli import main
from gateway.commands import token as token_cli
from gateway.events import EventBus, utc_now
from gateway.sms.models import SmsSettings
from gateway.sms.service import SmsService
from gateway.store.sqlite import SqliteStore

CONFIG_TOKEN = "config-admin-4c3f2d1e0b9a8f7e6d5c4b3a29180716f5e4d3c2"


@dataclass
class Running:
    url: str
    db_path: Path
    config: str
    tokens: DbTokenStore
    store: SqliteStore


@asynccontextmanager
async def running_api(tmp_path: Path) -> AsyncIterator[Running]:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway:\n  data_dir: {data}\nstore:\n  path: gateway.sqlite3\napi:\n  tokens:\n"
        f"    - name: ops\n      hash: {hash_token(CONFIG_TOKEN)}\n      scopes: [admin]\n"
    )
    db_path = data / "gateway.sqlite3"
    store = await SqliteStore.open(db_path)
    try:
        bus = await EventBus.open(store)
        sms = SmsService(store, bus, {}, settings=SmsSettings(), region="JP")
        tokens = DbTokenStore.from_config(
            [{"name": "ops", "hash": hash_token(CONFIG_TOKEN), "scopes": ["admin"]}], store,
            settings=DbTokenSettings(refresh_interval=0.2, last_used_interval=1.0),
        )
        app = create_app(ApiServices(sms=sms, bus=bus, tokens=tokens))
        async with trio.open_nursery() as nursery:
            await nursery.start(tokens.run)
            url = await nursery.start(functools.partial(serve, app, "127.0.0.1", 0))
            yield Running(url, db_path, str(config), tokens, store)
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


async def cli(*argv: str) -> int:
    return await trio.to_thread.run_sync(main, list(argv))


async def status_of(http: httpx.AsyncClient, token: str) -> int:
    response = await http.get("/v1/messages", headers={"Authorization": f"Bearer {token}"})
    return response.status_code


async def wait_for_status(http: httpx.AsyncClient, token: str, wanted: int, *, within: float) -> float:
    """Seconds until the API answers ``wanted`` for ``token`` (fails after ``within``)."""
    started = trio.current_time()
    with trio.fail_after(within):
        while True:
            if await status_of(http, token) == wanted:
                return trio.current_time() - started
            await trio.sleep(0.05)  # the observer side polls the API; the gateway itself does not


async def test_token_created_after_start_is_accepted_and_revoked_one_refused(tmp_path, capsys):
    async with running_api(tmp_path) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        assert await status_of(http, CONFIG_TOKEN) == 200  # the config file's tokens keep working
        assert await cli("token", "create", "--config", api.config, "--name", "crm",
                         "--scopes", "sms:read") == 0
        # The server's own log lines share this process's stdout; the CLI printed the token last.
        token = capsys.readouterr().out.strip().splitlines()[-1]
        assert await wait_for_status(http, token, 200, within=1.5) < 1.5
        # Scopes are honoured: sms:read does not allow sending.
        response = await http.post("/v1/messages", json={"to": "+819012345678", "text": "x"},
                                   headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403
        assert await cli("token", "revoke", "crm", "--config", api.config) == 0
        assert await wait_for_status(http, token, 401, within=1.5) < 1.5
        assert await status_of(http, CONFIG_TOKEN) == 200


async def test_last_use_is_written_and_listed(tmp_path):
    async with running_api(tmp_path) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        token = await trio.to_thread.run_sync(functools.partial(
            token_cli.issue_token, api.db_path, name="crm", scopes=["sms:read"], expires_days=None,
            actor="cli:test"))
        await wait_for_status(http, token, 200, within=1.5)
        with trio.fail_after(3):  # written by the refresh task once per last_used_interval (1 s here)
            while True:
                [row] = await trio.to_thread.run_sync(token_cli.read_tokens, api.db_path)
                if row.last_used_at is not None:
                    break
                await trio.sleep(0.1)
        assert row.name == "crm" and utc_now() - row.last_used_at < timedelta(seconds=5)


async def test_expired_token_is_refused_and_config_name_wins(tmp_path):
    async with running_api(tmp_path) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        past = utc_now() - timedelta(days=2)
        expired = await trio.to_thread.run_sync(functools.partial(
            token_cli.issue_token, api.db_path, name="old", scopes=["admin"], expires_days=1, actor="t",
            now=past))
        fresh = await trio.to_thread.run_sync(functools.partial(
            token_cli.issue_token, api.db_path, name="new", scopes=["admin"], expires_days=1, actor="t"))
        await wait_for_status(http, fresh, 200, within=1.5)
        assert await status_of(http, expired) == 401
        assert len(api.tokens) == 3  # ops (config) + old + new
