"""Sync from an upstream FHIR server (`familyview sync`) and the FHIR R4 rest-hook receiver."""
from __future__ import annotations

from typing import Any


def install(app, *, operations: list[dict[str, Any]], extra_resources: list[dict[str, Any]]) -> None:
    from app.sync.routes import router

    app.include_router(router)
