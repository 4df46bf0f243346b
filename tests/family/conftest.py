"""One server per backend with the ten demo families loaded through the HTTP ingest path."""
from __future__ import annotations

import pytest

from app.demo.loader import load_demo
from tests.conftest import BACKENDS, LiveServer, make_settings, new_database_url, start_server


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory, key_path, sqlite_template, pg_template):
    url, drop = new_database_url(request.param, tmp_path_factory.mktemp("world"), sqlite_template, pg_template)
    settings = make_settings(url, key_path)
    base, app, server, stop = start_server(settings)
    live = LiveServer(base, settings, app, server)
    load_demo(base, settings)
    yield live
    stop()
    drop()
