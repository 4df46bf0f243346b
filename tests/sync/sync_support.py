"""A second familyview instance started as the upstream FHIR server (its own database, its own
port, real HTTP), and helpers to run a sync from it into the instance under test."""
from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Iterator

import httpx

from app.sync.client import UpstreamClient
from app.sync.command import build_syncer
from app.sync.engine import Syncer
from tests.conftest import FHIR_JSON, LiveServer, make_settings, new_database_url, start_server


class _Slow:
    """ASGI wrapper: delays GET searches of the upstream, so a test can kill a sync midway."""

    def __init__(self, app, delay: float):
        self.app, self.delay, self.state = app, delay, app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].count("/") == 2:
            await asyncio.sleep(self.delay)
        await self.app(scope, receive, send)


@contextlib.contextmanager
def upstream_server(backend: str, tmp_path, sqlite_template, pg_template, key_path, *, slow: float = 0.0, **overrides) -> Iterator[LiveServer]:
    """A second familyview, as the upstream, on another port with its own database."""
    from app.main import create_app

    url, drop = new_database_url(backend, tmp_path, sqlite_template, pg_template)
    settings = make_settings(url, key_path, **overrides)
    app = create_app(settings)
    served = _Slow(app, slow) if slow else app
    base, _, server, stop = start_server(settings, app=served)
    try:
        yield LiveServer(base, settings, app, server)
    finally:
        stop()
        drop()


def post_bundle(client: httpx.Client, bundle: dict[str, Any]) -> dict[str, Any]:
    r = client.post("", content=json.dumps(bundle), headers=FHIR_JSON)
    assert r.status_code == 200, r.text[:2000]
    return r.json()


def syncer_for(live: LiveServer, upstream_fhir: str, token: str | None, org: str, service: str, **kw) -> Syncer:
    client = kw.pop("client", None) or UpstreamClient(upstream_fhir, live.settings, bearer_token=token, transport=kw.pop("transport", None), sleep=kw.pop("sleep", lambda s: None))
    return build_syncer(live.settings, upstream_fhir, org, service, app=live.app, client=client, **kw)


def search_all(client: httpx.Client, res_type: str, **params) -> list[dict[str, Any]]:
    out, url, p = [], res_type, {"_count": "200", **params}
    while url:
        r = client.get(url, params=p)
        assert r.status_code == 200, r.text[:500]
        b = r.json()
        out += [e["resource"] for e in b.get("entry", [])]
        url = next((link["url"] for link in b.get("link", []) if link["relation"] == "next"), None)
        p = None
    return out


def history_len(client: httpx.Client, res_type: str, res_id: str) -> int:
    r = client.get(f"{res_type}/{res_id}/_history")
    assert r.status_code == 200, r.text[:500]
    return r.json()["total"]
