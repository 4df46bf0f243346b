"""Sync from an upstream FHIR server (`familyview sync`) and the FHIR R4 rest-hook receiver."""
from __future__ import annotations

from typing import Any


def install(app, *, operations: list[dict[str, Any]], extra_resources: list[dict[str, Any]]) -> None:
    from fastapi import Depends

    from app.auth.access import Access
    from app.sync.routes import router

    # the access table's row: no bearer token; the upstream's shared secret (routes._authenticate)
    app.include_router(router, dependencies=[Depends(Access("sync.rest-hook"))])
