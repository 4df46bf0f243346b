"""Fixtures of the sync tests: the upstream is a second familyview on another port, over HTTP."""
from __future__ import annotations

import pytest

from tests.sync.sync_support import upstream_server


@pytest.fixture
def upstream(backend, tmp_path, sqlite_template, pg_template, key_path):
    with upstream_server(backend, tmp_path, sqlite_template, pg_template, key_path) as up:
        yield up
