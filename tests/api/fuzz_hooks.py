"""Schemathesis hooks for tests/api/test_api_fuzz.py and `make fuzz`: each generated case is sent
with the bearer token of the next role in turn (FAMILYVIEW_FUZZ_TOKENS, a JSON object role ->
token), so every operation is exercised as every kind of requester."""
from __future__ import annotations

import itertools
import json
import os
import threading

import schemathesis

_TOKENS = json.loads(os.environ.get("FAMILYVIEW_FUZZ_TOKENS", "{}"))
_turn = itertools.cycle(sorted(_TOKENS.items()))
_lock = threading.Lock()


@schemathesis.auth(refresh_interval=None)
class EveryRole:
    def get(self, case, ctx):
        with _lock:
            return next(_turn)[1] if _TOKENS else None

    def set(self, case, data, ctx):
        if data:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
